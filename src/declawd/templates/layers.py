"""The layer cache on disk: `<templates_path>/layers/<key>/{fs,layer.json}`.

A layer is committed by renaming a finished temp dir (same filesystem) into place, so a
layer dir either exists complete or not at all. Invariant: nothing under `layers/` is ever
modified after its rename; temp dirs carry their builder's pid so a crashed build's debris
is swept (after unmounting whatever is still mounted in it) by the next builder. A layer is
either built here or fetched from the blob store (`distribute.py`); its `layer.json` says
which (`origin`), so a cluster's nodes can tell a layer built once from one built twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from declawd.runtime import dir_size, is_mounted, unmount

ORIGINS = ("built", "fetched")


@dataclass(frozen=True)
class LayerInfo:
    key: str
    parent: str
    label: str
    size_bytes: int
    build_seconds: float
    created_at: float
    # "built" on this host, or "fetched" from the blob store (then in `fetch_seconds`).
    origin: str = "built"
    fetch_seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerInfo:
        """From a `layer.json` (or a published layer's json); fields added later default."""
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


class LayerCache:
    def __init__(self, templates_path: Path) -> None:
        self.root = templates_path
        self.layers_dir = templates_path / "layers"
        self.tmp_dir = templates_path / "tmp"

    def dir(self, key: str) -> Path:
        return self.layers_dir / key

    def fs(self, key: str) -> Path:
        return self.layers_dir / key / "fs"

    def exists(self, key: str) -> bool:
        return (self.layers_dir / key / "layer.json").is_file()

    def info(self, key: str) -> LayerInfo | None:
        try:
            data = json.loads((self.layers_dir / key / "layer.json").read_text())
            return LayerInfo.from_dict(data)
        except (OSError, ValueError, TypeError):
            return None

    def layer_keys(self) -> list[str]:
        if not self.layers_dir.is_dir():
            return []
        return sorted(p.name for p in self.layers_dir.iterdir() if self.exists(p.name))

    @contextlib.contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A fresh temp dir for building `key`; removed (mounts first) unless committed."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        try:
            yield tmp
        finally:
            remove_tree(tmp)

    def commit(
        self,
        tmp: Path,
        key: str,
        parent: str,
        label: str,
        seconds: float,
        *,
        origin: str = "built",
        fetch_seconds: float = 0.0,
    ) -> LayerInfo:
        """Move `tmp/fs` into the cache as layer `key`; a concurrent identical build (or
        fetch) wins. `seconds` is the layer's build time wherever it was built."""
        if origin not in ORIGINS:
            raise ValueError(f"origin: {origin!r} is not one of {ORIGINS}")
        fs = tmp / "fs"
        os.chmod(fs, 0o755)
        info = LayerInfo(
            key,
            parent,
            label,
            dir_size(fs),
            round(seconds, 3),
            time.time(),
            origin,
            round(fetch_seconds, 3),
        )
        final = tmp / "layer"
        final.mkdir()
        fs.rename(final / "fs")
        (final / "layer.json").write_text(json.dumps(info.__dict__, indent=1))
        try:
            final.rename(self.dir(key))
        except OSError:
            if not self.exists(key):
                raise
            return self.info(key) or info  # someone else committed the same layer first
        return info

    def sweep_stale(self) -> list[Path]:
        """Remove temp dirs whose builder process is gone (crash debris)."""
        removed: list[Path] = []
        if not self.tmp_dir.is_dir():
            return removed
        for tmp in self.tmp_dir.iterdir():
            parts = tmp.name.split("-")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
            if pid > 0 and _alive(pid):
                continue
            remove_tree(tmp)
            removed.append(tmp)
        return removed

    def remove(self, key: str) -> None:
        """Delete layer `key` (rename first so a half-deleted layer never looks valid)."""
        src = self.dir(key)
        if not src.exists():
            return
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        doomed = self.tmp_dir / f"gc{key[:14]}-0-{secrets.token_hex(4)}"
        src.rename(doomed)
        remove_tree(doomed)

    def usage(self) -> dict[str, Any]:
        infos = [i for i in (self.info(k) for k in self.layer_keys()) if i is not None]
        return {
            "templates_path": str(self.root),
            "layers": len(infos),
            "layers_bytes": sum(i.size_bytes for i in infos),
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: Path) -> None:
    """Unmount anything mounted at or below `path`, then delete it; idempotent."""
    if not path.exists():
        return
    for name in ("rootfs", "merged"):
        if is_mounted(path / name):
            unmount(path / name)
    if is_mounted(path):
        unmount(path)
    # never follow symlinks out of a tree that build steps wrote (rmtree does not)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        shutil.rmtree(path)  # surface the error instead of silently keeping debris
