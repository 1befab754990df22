"""SandboxHost.envd_listening: what the create path waits on before it calls envd ready."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from declawd.config import Settings
from declawd.node.sandbox import SandboxHost

SID = "sbx-000000000001"


def test_envd_listening_only_once_something_listens() -> None:
    # A short state dir: a unix socket path is at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="dcw-") as tmp:
        host = SandboxHost(Settings(state_dir=Path(tmp), instance="unit"))
        path = host.resources(SID).envd_socket
        assert host.envd_listening(SID) is False  # no directory, no socket (ENOENT)
        path.parent.mkdir(parents=True)
        path.touch()
        assert host.envd_listening(SID) is False  # a plain file (ECONNREFUSED)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            assert host.envd_listening(SID) is False  # bound, not listening yet
            server.listen(1)
            assert host.envd_listening(SID) is True
            assert host.envd_listening(SID) is True  # the backlog is full: still up
