import io
import tarfile

import pytest

from declawd.errors import InvalidInput, TooLarge
from declawd.templates import context
from declawd.templates.context import context_has, store_context


def _tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            elif kind == "lnk":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tar.addfile(info)
            elif kind == "dev":
                info.type = tarfile.CHRTYPE
                tar.addfile(info)
    return buf.getvalue()


def test_valid_context_is_extracted_and_content_addressed(tmp_path):
    body = _tar(
        [("app", "dir", b""), ("app/main.py", "file", b"print(1)"), ("app/link", "sym", "main.py")]
    )
    cid = store_context(tmp_path, body)
    assert cid.startswith("ctx-") and len(cid) == 68
    assert (tmp_path / cid / "files" / "app" / "main.py").read_bytes() == b"print(1)"
    assert store_context(tmp_path, body) == cid
    assert context_has(tmp_path, cid, "app/main.py")
    assert not context_has(tmp_path, cid, "app/missing.py")


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ([("/etc/passwd", "file", b"x")], "absolute path"),
        ([("../evil", "file", b"x")], "leaves the context"),
        ([("a/../../evil", "file", b"x")], "leaves the context"),
        ([("link", "sym", "/etc")], "symlink"),
        ([("d/link", "sym", "../../etc")], "symlink"),
        ([("hard", "lnk", "/etc/shadow")], "hard link"),
        ([("dev", "dev", b"")], "not a regular file"),
    ],
)
def test_escaping_or_special_members_are_refused_and_nothing_is_left(tmp_path, entries, needle):
    with pytest.raises(InvalidInput) as exc:
        store_context(tmp_path, _tar(entries))
    assert exc.value.field == "context"
    assert needle in exc.value.reason
    assert [p.name for p in tmp_path.iterdir()] == []


def test_garbage_is_a_400(tmp_path):
    with pytest.raises(InvalidInput, match="context"):
        store_context(tmp_path, b"not a tarball")
    with pytest.raises(InvalidInput) as exc:
        store_context(tmp_path, b"")
    assert exc.value.message == "context: empty body (expected a tar.gz archive)"


def test_oversized_upload_or_tree_is_too_large(tmp_path, monkeypatch):
    body = _tar([("a", "file", b"x" * 100), ("b", "file", b"y" * 100)])
    monkeypatch.setattr(context, "MAX_EXTRACTED_BYTES", 150)
    with pytest.raises(TooLarge, match="^context: more than 0 MiB extracted$"):
        store_context(tmp_path, body)
    monkeypatch.setattr(context, "MAX_MEMBERS", 1)
    with pytest.raises(TooLarge, match="^context: more than 1 entries$"):
        store_context(tmp_path, body)
    monkeypatch.setattr(context, "MAX_UPLOAD_BYTES", len(body) - 1)
    with pytest.raises(TooLarge, match="^context: larger than 0 MiB$"):
        store_context(tmp_path, body)
    assert [p.name for p in tmp_path.iterdir()] == []
