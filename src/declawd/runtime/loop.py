"""Loop block devices by syscall: attach a file with autoclear, find and detach by backing file.

`attach` takes a free device from /dev/loop-control and binds the file to it in one
`LOOP_CONFIGURE` ioctl (what losetup does, without a process). The device is attached with
`LO_FLAGS_AUTOCLEAR`, so the kernel detaches it when its last user goes: the fd `attach`
returns, then the filesystem mounted from it. Invariant: a caller that closes the fd without
mounting leaves no device behind; `detach_all(file)` is idempotent.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
from pathlib import Path

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
LOOP_MAJOR = 7
LOOP_CONTROL = Path("/dev/loop-control")
SYS_BLOCK = Path("/sys/block")
# GET_FREE and CONFIGURE are two calls: a concurrent attach may take the device in between.
_ATTACH_ATTEMPTS = 64


class LoopInfo64(ctypes.Structure):
    """struct loop_info64 (linux/loop.h)."""

    _fields_ = (
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    )


class LoopConfig(ctypes.Structure):
    """struct loop_config (linux/loop.h, kernel 5.8+)."""

    _fields_ = (
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    )


class LoopError(OSError):
    """Attaching or detaching a loop device failed; carries the backing file."""


def config_for(fd: int, backing: Path, flags: int = LO_FLAGS_AUTOCLEAR) -> LoopConfig:
    """The LOOP_CONFIGURE argument binding `fd` (the open `backing` file) with `flags`."""
    cfg = LoopConfig(fd=fd)
    cfg.info.lo_flags = flags
    name = os.fsencode(backing)[: LO_NAME_SIZE - 1]  # for display only; the kernel keeps fd
    ctypes.memmove(cfg.info.lo_file_name, name, len(name))
    return cfg


def _device_fd(number: int) -> int:
    dev = Path(f"/dev/loop{number}")
    try:
        return os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        # /dev without devtmpfs (a container): the kernel made the device, not its node.
        with contextlib.suppress(FileExistsError):
            os.mknod(dev, 0o600 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, number))
        return os.open(dev, os.O_RDWR | os.O_CLOEXEC)


def attach(backing: Path) -> tuple[str, int]:
    """Bind `backing` to a free loop device with autoclear: (device path, open fd on it).

    The device lives while the fd is open or a mount uses it; close the fd once mounted
    (or on failure: closing it then detaches the device).
    """
    file_fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
    try:
        cfg = config_for(file_fd, backing)
        ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_ATTACH_ATTEMPTS):
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev_fd = _device_fd(number)
                try:
                    fcntl.ioctl(dev_fd, LOOP_CONFIGURE, cfg)
                except OSError as exc:
                    os.close(dev_fd)
                    if exc.errno == errno.EBUSY:
                        continue  # taken by a concurrent attach since GET_FREE
                    raise LoopError(
                        exc.errno, f"attach {backing} to /dev/loop{number}: {exc.strerror}"
                    ) from exc
                return f"/dev/loop{number}", dev_fd
        finally:
            os.close(ctl)
    except LoopError:
        raise
    except OSError as exc:
        raise LoopError(exc.errno, f"attach {backing}: {exc.strerror}", str(backing)) from exc
    finally:
        os.close(file_fd)
    raise LoopError(errno.EBUSY, f"attach {backing}: no free loop device after {_ATTACH_ATTEMPTS}")


def devices_of(backing: Path, sys_block: Path = SYS_BLOCK) -> list[str]:
    """Loop devices whose backing file is `backing` (sysfs; empty when none is)."""
    want = os.fsencode(os.path.realpath(backing))
    found = []
    for entry in sys_block.glob("loop*/loop/backing_file"):
        try:
            name = entry.read_bytes().rstrip(b"\n")
        except OSError:
            continue  # detached while we looked
        # A deleted backing file reads "<path> (deleted)": still ours, still attached.
        if name == want or name == want + b" (deleted)":
            found.append(f"/dev/{entry.parent.parent.name}")
    return sorted(found)


def detach(device: str) -> bool:
    """Detach `device`; False if it had no backing file any more (autoclear beat us)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise LoopError(exc.errno, f"detach {device}: {exc.strerror}", device) from exc
    finally:
        os.close(fd)
    return True


def backed_by(device: str, backing: Path, sys_block: Path = SYS_BLOCK) -> bool:
    """Whether loop `device` (/dev/loopN) is attached to `backing` (one sysfs read)."""
    want = os.fsencode(os.path.realpath(backing))
    try:
        name = (sys_block / Path(device).name / "loop" / "backing_file").read_bytes()
    except OSError:
        return False  # not attached (no loop/ dir) or no such device
    name = name.rstrip(b"\n")
    return name == want or name == want + b" (deleted)"


def detach_all(backing: Path, known: str | None = None) -> None:
    """Detach every loop device still backed by `backing` (idempotent).

    `known`: the device `backing` was attached to, when recorded: then only it is checked
    (one read instead of a walk over every loop device on the host; the walk costs ~1 ms
    per 100 devices). A device that refuses (EBUSY: still mounted or open) and is still
    attached afterwards raises; one that autoclear detached meanwhile is fine.
    """
    if known is not None:
        if backed_by(known, backing):
            try:
                detach(known)
            except LoopError:
                if backed_by(known, backing):
                    raise
        return
    for dev in devices_of(backing):
        try:
            detach(dev)
        except LoopError:
            if dev in devices_of(backing):
                raise
