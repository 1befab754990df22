"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package, a temp dir.

`PgServer.start()` runs `initdb` into a fresh directory under /tmp (as the `postgres` user
when we are root: the server refuses to run as root), then `postgres` listening on a unix
socket in that directory only (no TCP unless `listen` names an address: then also there, trusting
`trust_net`), fsync off. The server is started through
`setpriv --pdeathsig SIGQUIT`, so it shuts down even if the test process is killed;
`stop()` shuts it down and removes the directory. `create_database()` hands out a fresh
database (C collation, as the store's SQLite ordering) and `drop_database()` drops it with
whatever connections are left.

Missing binaries are an error, never a skip: `make system` installs them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_ROOT = Path("/usr/lib/postgresql")
MISSING = (
    "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin:"
    " run `make system` (it installs the `postgresql` package)"
)
SUPERUSER = "postgres"
START_TIMEOUT_S = 30.0


def find_bindir() -> Path:
    """The newest installed server's bin directory; raises RuntimeError saying what to run."""
    candidates = sorted(
        (d / "bin" for d in PG_ROOT.glob("*") if (d / "bin" / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates or shutil.which("setpriv") is None:
        raise RuntimeError(MISSING if not candidates else "setpriv not found: run `make system`")
    return candidates[-1]


class PgServer:
    def __init__(self, listen: str = "", port: int = 5432, trust_net: str = "") -> None:
        """`listen`, `port`, `trust_net`: also serve TCP on `listen:port`, to clients from
        `trust_net` without a password (the cluster test's private bridge)."""
        self.bindir = find_bindir()
        self.listen, self.port, self.trust_net = listen, port, trust_net
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "sock"

    def url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, dbname: str) -> str:
        """`dbname` over TCP at `listen:port` (needs `listen`)."""
        assert self.listen, "PgServer(listen=...) serves no TCP"
        return f"postgresql://{SUPERUSER}@{self.listen}:{self.port}/{dbname}"

    def _as_owner(self) -> list[str]:
        """setpriv's arguments that run a command as the server's owner (and stop it when we
        die): the `postgres` user when we are root, ourselves otherwise."""
        cmd = ["setpriv", "--pdeathsig", "SIGQUIT"]
        if os.geteuid() == 0:
            cmd += ["--reuid", SUPERUSER, "--regid", SUPERUSER, "--clear-groups"]
        return cmd

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="declawd-pg-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        assert self.root is not None
        data, log = self.root / "data", self.root / "server.log"
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise RuntimeError(f"no `{SUPERUSER}` user: run `make system`") from None
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [
                *self._as_owner(),
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        if self.trust_net:
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.trust_net} trust\n")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    *self._as_owner(),
                    str(self.bindir / "postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={self.listen}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not start:\n{log.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.05)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url("postgres"), autocommit=True)

    def create_database(self) -> str:
        name = "t_" + secrets.token_hex(6)
        with self.admin() as c:
            c.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Shut the server down (fast, then immediate, then kill) and remove its directory."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait_s in (
                (signal.SIGINT, 10.0),
                (signal.SIGQUIT, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait_s)
                    break
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
