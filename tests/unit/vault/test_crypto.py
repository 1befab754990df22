"""The node master key and AES-GCM sealing of secret values."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from pathlib import Path

import pytest

from declawd.errors import Internal
from declawd.vault.crypto import FORMAT_V1, KEY_BYTES, NONCE_BYTES, MasterKey, SecretValue
from tests.unit.vault.conftest import VALUE


def test_round_trip_under_the_same_id(key_path: Path) -> None:
    key = MasterKey.load_or_create(key_path)
    blob = key.encrypt(SecretValue(VALUE), "vsec-000000000001")
    assert blob[:1] == FORMAT_V1
    assert VALUE.encode() not in blob
    assert key.decrypt(blob, "vsec-000000000001").reveal() == VALUE


def test_each_encryption_takes_a_fresh_nonce(key_path: Path) -> None:
    key = MasterKey.load_or_create(key_path)
    a = key.encrypt(SecretValue(VALUE), "vsec-1")
    b = key.encrypt(SecretValue(VALUE), "vsec-1")
    assert a[1 : 1 + NONCE_BYTES] != b[1 : 1 + NONCE_BYTES]
    assert a != b


def test_a_ciphertext_moved_to_another_id_does_not_decrypt(key_path: Path) -> None:
    key = MasterKey.load_or_create(key_path)
    blob = key.encrypt(SecretValue(VALUE), "vsec-aaaaaaaaaaaa")
    with pytest.raises(Internal) as info:
        key.decrypt(blob, "vsec-bbbbbbbbbbbb")
    assert info.value.message == (
        "vault secret vsec-bbbbbbbbbbbb: cannot decrypt (wrong master key or corrupt row)"
    )
    assert VALUE not in str(info.value)


def test_another_master_key_does_not_decrypt(tmp_path: Path) -> None:
    blob = MasterKey.load_or_create(tmp_path / "a.key").encrypt(SecretValue(VALUE), "vsec-1")
    other = MasterKey.load_or_create(tmp_path / "b.key")
    with pytest.raises(Internal, match=r"^vault secret vsec-1: cannot decrypt"):
        other.decrypt(blob, "vsec-1")


@pytest.mark.parametrize("damage", ["flip", "truncate", "format"])
def test_a_corrupt_row_is_an_internal_error_naming_the_id(key_path: Path, damage: str) -> None:
    key = MasterKey.load_or_create(key_path)
    blob = bytearray(key.encrypt(SecretValue(VALUE), "vsec-1"))
    if damage == "flip":
        blob[-1] ^= 0x01
    elif damage == "truncate":
        blob = blob[:20]
    else:
        blob[0] = 0x02
    with pytest.raises(Internal) as info:
        key.decrypt(bytes(blob), "vsec-1")
    assert info.value.message.startswith("vault secret vsec-1: ")
    assert VALUE not in info.value.message


def test_the_key_file_is_created_0600_with_32_random_bytes(key_path: Path) -> None:
    MasterKey.load_or_create(key_path)
    st = key_path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == KEY_BYTES
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert [p.name for p in key_path.parent.iterdir()] == ["vault.key"]  # no temp file left


def test_the_key_survives_a_restart(key_path: Path) -> None:
    blob = MasterKey.load_or_create(key_path).encrypt(SecretValue(VALUE), "vsec-1")
    raw = key_path.read_bytes()
    again = MasterKey.load_or_create(key_path)
    assert key_path.read_bytes() == raw
    assert again.decrypt(blob, "vsec-1").reveal() == VALUE


def test_concurrent_first_use_agrees_on_one_key(key_path: Path) -> None:
    keys: list[MasterKey] = []
    barrier = threading.Barrier(8)

    def first_use() -> None:
        barrier.wait()
        keys.append(MasterKey.load_or_create(key_path))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blob = keys[0].encrypt(SecretValue(VALUE), "vsec-1")
    assert all(k.decrypt(blob, "vsec-1").reveal() == VALUE for k in keys)
    assert [p.name for p in key_path.parent.iterdir()] == ["vault.key"]


def test_a_key_readable_by_others_is_refused(key_path: Path) -> None:
    MasterKey.load_or_create(key_path)
    os.chmod(key_path, 0o644)
    with pytest.raises(Internal) as info:
        MasterKey.load(key_path)
    assert info.value.message == (
        f"vault master key {key_path}: mode 0644 lets others read it; it must be 0600"
    )


def test_a_key_of_the_wrong_size_is_refused(key_path: Path) -> None:
    key_path.parent.mkdir(parents=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(Internal, match=r"expected 32 bytes, found 5$"):
        MasterKey.load_or_create(key_path)


def test_a_missing_key_is_an_internal_error_for_a_reader(key_path: Path) -> None:
    with pytest.raises(Internal, match=r"^vault master key .*vault.key: missing$"):
        MasterKey.load(key_path)
    assert not key_path.exists()  # load never creates


def test_a_secret_value_hides_itself() -> None:
    v = SecretValue(VALUE)
    assert repr(v) == "SecretValue(***)"
    assert str(v) == "SecretValue(***)"
    assert f"{v}" == "SecretValue(***)"
    assert VALUE not in repr([v, {"v": v}])
    with pytest.raises(TypeError):
        pickle.dumps(v)
    assert v.reveal() == VALUE


def test_a_master_key_repr_names_only_its_path(key_path: Path) -> None:
    key = MasterKey.load_or_create(key_path)
    assert repr(key) == f"MasterKey({key_path})"
