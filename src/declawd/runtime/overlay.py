"""Host-side mounts for a sandbox: the overlay root filesystem and the envd socket tmpfs.

Invariant: template layers are only ever lower (read-only) layers; the sandbox writes to
its own upper dir. Every mount made here is undone by `unmount`, which is idempotent and
falls back to a lazy detach so a busy mount never blocks a teardown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
MS_BIND = 0x1000
CLONE_FS = 0x200

# mount(2) copies its data argument into one page; stay clearly below it.
_MOUNT_DATA_LIMIT = 3800
_SHORT_LINK_PARENT = Path("/run/declawd-ovl")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
UMOUNT_NOFOLLOW = 0x8

# The mount API of Linux 5.2+ (fsopen/fsconfig/fsmount/move_mount). Its syscall numbers
# are the same on x86_64 and aarch64 (numbers from 424 on are shared by the architectures).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4  # the target path's symlinks are not followed (no T_SYMLINKS)
# mount(2) flags and the mount attributes fsmount takes for them.
_MOUNT_ATTRS = {MS_NOSUID: 0x2, MS_NODEV: 0x4, MS_NOEXEC: 0x8}

# statx(2): whether a path is the root of a mount, without reading the mount table (which
# has four lines per sandbox: 2000 lines to parse per call with 500 sandboxes alive).
AT_FDCWD = -100
STATX_TYPE = 0x1
STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256
_STATX_ATTRIBUTES = 8  # offsets in struct statx (linux/stat.h)
_STATX_ATTRIBUTES_MASK = 56
_statx: Any = getattr(_libc, "statx", None)  # None: a libc without it (glibc < 2.28)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]


class MountError(OSError):
    """A mount or unmount failed; carries the target path."""


def _mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount {fstype} on {target}: {os.strerror(err)}", str(target))


def _overlay_data(lowers: list[str], upper: Path, work: Path) -> str:
    # overlayfs wants the topmost lower layer first; ours come lowest first.
    return f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}"


def _own_cwd() -> None:
    """Give the calling (dedicated) thread a working directory of its own."""
    if _libc.unshare(CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS) for the overlay mount thread: {os.strerror(err)}")


_mounter_lock = threading.Lock()
_mounter: ThreadPoolExecutor | None = None


def _in_dir(directory: Path, fn: Callable[[], None]) -> None:
    """Run fn with `directory` as the working directory, on the one thread that has a cwd
    of its own (unshare(CLONE_FS)): the process's cwd, which every other thread shares,
    never moves."""
    global _mounter
    with _mounter_lock:
        if _mounter is None:
            _mounter = ThreadPoolExecutor(1, "overlay-mount", initializer=_own_cwd)
        pool = _mounter

    def call() -> None:
        os.chdir(directory)
        try:
            fn()
        finally:
            os.chdir("/")

    pool.submit(call).result()


def mount_overlay(lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount overlayfs(lowers, upper) on target; `lowers` are ordered lowest first.

    The layers, the upper and the work dir are named by one-letter symlinks in a private
    directory made for this one mount, and the mount is made from inside that directory
    with relative names (Docker's overlay2 shortens its `lowerdir` with `l/` links the
    same way). The kernel resolves the links at mount time and keeps the dentries, so the
    links go at once; what it keeps is the option string, printed in every line of
    /proc/*/mountinfo for this mount, and the kernel's formatting of that file is paid per
    byte: each runc start reads the host's mountinfo four times, so a ~600-byte line per
    sandbox (a 4-layer template's absolute paths) made every create slower on a node with
    many sandboxes. Host paths also stay out of the sandbox's own view of its root mount.
    """
    resolved_target = target.resolve()
    _with_short_names(
        lowers,
        upper,
        work,
        lambda lower, u, w: _mount(
            "overlay", resolved_target, "overlay", 0, _overlay_data(lower, Path(u), Path(w))
        ),
    )


def overlay_detached(lowers: list[Path], upper: Path, work: Path) -> int:
    """The overlay `mount_overlay` makes, mounted nowhere yet: an fd on its root (fsopen,
    fsconfig, fsmount) for `attach_detached` or `declawd-launchns`, with the same short
    option names. Held by that fd alone until attached. Raises MountError (ENOSYS on a
    kernel without the new mount API)."""
    made: list[int] = []

    def create(lower: list[str], u: str, w: str) -> None:
        fs = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
        try:
            pairs = (
                ("source", "overlay"),
                ("lowerdir", ":".join(reversed(lower))),
                ("upperdir", u),
            )
            for key, value in pairs:
                _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, b"workdir", w.encode(), 0)
            _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0)
            made.append(_syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, 0))
        except MountError as exc:
            raise MountError(exc.errno, f"overlay (detached): {exc.strerror}") from None
        finally:
            os.close(fs)

    _with_short_names(lowers, upper, work, create)
    return made[0]


def _with_short_names(
    lowers: list[Path], upper: Path, work: Path, mount: Callable[[list[str], str, str], None]
) -> None:
    """Call `mount(lower names, upper name, work name)` from inside a private directory of
    one-letter links to the layers (see `mount_overlay`), removed afterwards."""
    if not lowers:
        raise ValueError("lowers: an overlay needs at least one lower layer")
    _SHORT_LINK_PARENT.mkdir(mode=0o700, parents=True, exist_ok=True)
    linkdir = Path(tempfile.mkdtemp(prefix="", dir=_SHORT_LINK_PARENT))
    try:
        short = []
        for i, layer in enumerate(lowers):
            name = format(i, "x")
            (linkdir / name).symlink_to(layer.resolve())
            short.append(name)
        (linkdir / "u").symlink_to(upper.resolve())
        (linkdir / "w").symlink_to(work.resolve())
        if len(_overlay_data(short, Path("u"), Path("w"))) >= _MOUNT_DATA_LIMIT:
            raise ValueError(f"lowers: {len(lowers)} layers are too many for one overlay mount")
        _in_dir(linkdir, lambda: mount(short, "u", "w"))
    finally:
        shutil.rmtree(linkdir, ignore_errors=True)


def mount_tmpfs(target: Path, size_bytes: int, mode: int = 0o700) -> None:
    """Mount a size-limited tmpfs on target (a no-op when one is already mounted there)."""
    if is_mounted(target):
        return
    _mount(
        "tmpfs",
        target,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        f"size={size_bytes},mode={mode:o}",
    )


def mount_device(device: str, target: Path, fstype: str, flags: int, data: str) -> None:
    """Mount the block device `device` (a filesystem of type `fstype`) on target."""
    _mount(device, target, fstype, flags, data)


def _syscall(number: int, *args: int | bytes | None) -> int:
    def arg(a: int | bytes | None) -> ctypes.c_long | bytes | None:
        return ctypes.c_long(a) if isinstance(a, int) else a

    rc = int(_libc.syscall(ctypes.c_long(number), *(arg(a) for a in args)))
    if rc < 0:
        err = ctypes.get_errno()
        raise MountError(err, os.strerror(err))
    return rc


def mount_detached(device: str, fstype: str, flags: int, data: str) -> int:
    """Mount the block device `device` nowhere yet: returns an fd on the new mount's root,
    for `attach_detached` (fsopen, fsconfig, fsmount). Until attached, the mount is held by
    that fd alone: closing it unmounts it, so a process that dies leaves none behind.

    `data` holds comma-separated options, each `key` or `key=value`. Raises MountError (an
    OSError; ENOSYS on a kernel without this API).
    """
    attrs = 0
    for flag, attr in _MOUNT_ATTRS.items():
        if flags & flag:
            attrs |= attr
    if flags & ~sum(_MOUNT_ATTRS):
        raise ValueError(f"flags: {flags & ~sum(_MOUNT_ATTRS):#x} has no mount attribute")
    fs = _syscall(_SYS_FSOPEN, fstype.encode(), _FSOPEN_CLOEXEC)
    try:
        _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, b"source", device.encode(), 0)
        for option in filter(None, data.split(",")):
            key, eq, value = option.partition("=")
            if eq:
                _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            else:
                _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FLAG, key.encode(), None, 0)
        _syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0)
        return _syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, attrs)
    except MountError as exc:
        raise MountError(exc.errno, f"mount {fstype} from {device}: {exc.strerror}") from None
    finally:
        os.close(fs)


def attach_detached(mount_fd: int, target: Path) -> None:
    """Attach the mount `mount_detached` made at `target` (move_mount; a symlink at
    `target` is not followed). The caller still closes `mount_fd`."""
    try:
        _syscall(
            _SYS_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH
        )
    except MountError as exc:
        raise MountError(
            exc.errno, f"attach a mount on {target}: {exc.strerror}", str(target)
        ) from None


def unmount(target: Path) -> None:
    """Unmount target; idempotent (not mounted / missing is fine), lazy when busy.

    No look at the mount table: umount2 itself says when nothing is mounted there any
    more (EINVAL). A symlink at `target` is never followed (a build step or a sandbox may
    have planted one pointing at a host mount).
    """
    path = str(target).encode()
    while True:
        if _libc.umount2(path, UMOUNT_NOFOLLOW) == 0:
            continue  # stacked mounts: loop until none is left
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return
        if err == errno.EBUSY and _libc.umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
            continue
        err = ctypes.get_errno()
        raise MountError(err, f"umount {target}: {os.strerror(err)}", str(target))


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field) >= i + 4:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> set[str]:
    """Every mount point in this process's mount namespace.

    mountinfo has four lines per sandbox, and this runs several times per create and kill:
    only a field with an escape goes through the (character by character) `_unescape`.
    """
    with open("/proc/self/mountinfo") as f:
        fields = (line.split(" ", 5)[4] for line in f)
        return {_unescape(p) if "\\" in p else p for p in fields}


def top_mount_id(target: Path) -> int | None:
    """The id of the topmost mount exactly at `target` (symlinks resolved), or None."""
    point = os.path.realpath(target)
    at: dict[int, int] = {}  # mount id -> parent id, of the mounts at `point`
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ", 5)
            if (_unescape(fields[4]) if "\\" in fields[4] else fields[4]) == point:
                at[int(fields[0])] = int(fields[1])
    tops = [m for m in at if m not in at.values()]  # stacked: the one nothing is on
    return max(tops) if tops else None


def mounted_below(target: Path) -> bool:
    """Whether any mount point lies strictly below `target`."""
    prefix = os.path.realpath(target).rstrip("/") + "/"
    return any(p.startswith(prefix) for p in mount_points())


def bind_onto_itself(target: Path) -> int:
    """Bind-mount directory `target` onto itself (on top of whatever is there, so this mount
    is ours to remove); returns the new mount's id."""
    _mount(str(target), target, "", MS_BIND, "")
    mount_id = top_mount_id(target)
    if mount_id is None:  # cannot be: the mount just succeeded
        raise MountError(errno.ENOENT, f"bind {target} onto itself: not in the table", str(target))
    return mount_id


def unmount_if_idle(target: Path) -> bool:
    """Remove the topmost mount at `target` unless something is mounted below it or it is
    in use (EBUSY); never lazy. True if it went."""
    if _libc.umount2(str(target).encode(), UMOUNT_NOFOLLOW) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EBUSY, errno.EINVAL, errno.ENOENT):
        return False
    raise MountError(err, f"umount {target}: {os.strerror(err)}", str(target))


def is_mounted(target: Path) -> bool:
    """Whether something is mounted exactly at `target` (symlinks followed, as before)."""
    answer = _mount_root(target)
    if answer is not None:
        return answer
    try:
        resolved = os.path.realpath(target)
    except OSError:
        return False
    return resolved in mount_points()


def _mount_root(target: Path) -> bool | None:
    """statx's STATX_ATTR_MOUNT_ROOT for `target`; None when this kernel or libc cannot say
    (then the mount table decides)."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(AT_FDCWD, os.fsencode(target), 0, STATX_TYPE, buf) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
            return False
        return None
    supported = int.from_bytes(
        buf.raw[_STATX_ATTRIBUTES_MASK : _STATX_ATTRIBUTES_MASK + 8], "little"
    )
    if not supported & STATX_ATTR_MOUNT_ROOT:
        return None
    attributes = int.from_bytes(buf.raw[_STATX_ATTRIBUTES : _STATX_ATTRIBUTES + 8], "little")
    return bool(attributes & STATX_ATTR_MOUNT_ROOT)
