"""A real PostgreSQL server for tests (and benchmarks): `initdb` into a temporary directory,
`pg_ctl` on a free 127.0.0.1 port, a fresh database per test.

Fixtures (imported by tests/conftest.py, so every test directory has them):

- `pg_server` (session): one server for the whole test session, stopped at its end;
- `pg_url` (function): `postgresql://...` of a database of its own, made for the test and
  dropped after it, so tests never see each other's tables.

They never skip: a machine without the PostgreSQL binaries fails the test that needs
them, saying what to install (`.ci/run` installs them). Binaries are found on PATH, else
in /usr/lib/postgresql/*/bin (Debian's layout), newest version first. PostgreSQL refuses
to run as root, so as root the server runs as `nobody`, in a directory of its own that
`nobody` owns. `python bench/pg_drivers.py` starts its server with the same `PgServer`.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

#: The account the server runs as when the tests run as root.
UNPRIVILEGED_USER: Final = "nobody"
#: Seconds `pg_ctl` waits for the server to start or stop.
PG_CTL_TIMEOUT: Final = 60
#: Settings for a test server: nothing here needs to survive a power cut.
TEST_SETTINGS: Final = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

_databases = itertools.count(1)

#: The watchdog (see PgServer._watch): argv is pg_ctl, the data dir, the root dir, uid, gid.
_WATCHDOG: Final = """
import os, shutil, subprocess, sys
pg_ctl, data, root, uid, gid = sys.argv[1:6]
sys.stdin.buffer.read()
if os.path.exists(os.path.join(data, "postmaster.pid")):
    user = {"user": int(uid), "group": int(gid), "extra_groups": []} if int(uid) >= 0 else {}
    stop = [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]
    subprocess.run(stop, capture_output=True, cwd=root, **user)
shutil.rmtree(root, ignore_errors=True)
"""


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def find_bin_dir() -> Path:
    """The directory holding `initdb`, `pg_ctl` and `postgres`."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return Path(candidates[0]).parent
    raise PostgresMissing(
        "PostgreSQL is not installed: no initdb on PATH nor in /usr/lib/postgresql/*/bin"
        " (apt-get install -y postgresql; .ci/run does it)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL server in a temporary directory; `start()`, then `url(db)`, `stop()`."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.settings = dict(TEST_SETTINGS if settings is None else settings)
        self.bin_dir = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="tracklog-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.superuser = "postgres"
        self._run_as: dict[str, Any] = {}
        self._watchdog: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam(UNPRIVILEGED_USER)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def _run(self, *args: str) -> None:
        """A server binary, as the unprivileged user when we are root; its output on failure."""
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C", "HOME": str(self.root)},
            timeout=PG_CTL_TIMEOUT + 30,
            check=False,
            **self._run_as,
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}{tail}"
            )

    def start(self) -> PgServer:
        self._run(
            "initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        for attempt in range(3):  # a free port can be taken between finding and binding it
            self.port = free_port()
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                    "-t", str(PG_CTL_TIMEOUT), "-o",
                    f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {options}",
                    "start",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self._watch()
        return self

    def _watch(self) -> None:
        """A watchdog process that stops the server and deletes its directory once this
        process is gone, however it ends (a `timeout`'s SIGTERM, a SIGKILL: no teardown
        runs then). It waits for the end of a pipe only this process holds."""
        uid, gid = self._run_as.get("user", -1), self._run_as.get("group", -1)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.bin_dir / "pg_ctl"), str(self.data), str(self.root),
             str(uid), str(gid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed with this process's group
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def admin(self, *statements: str) -> None:
        """Statements run outside a transaction on the `postgres` database (CREATE DATABASE...)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]  # statements of our own

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{os.getpid()}_{next(_databases)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def restart(self) -> None:
        """Restart the server on its port (`pg_ctl restart -m fast`: every connection is cut)."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-m", "fast", "-w",
            "-t", str(PG_CTL_TIMEOUT), "restart",
        )  # fmt: skip

    def pause(self) -> None:
        """Stop the server, keeping its data (`resume()` starts it again on its port)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(PG_CTL_TIMEOUT), "stop")

    def resume(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
            "-t", str(PG_CTL_TIMEOUT), "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {options}",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is kept) and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if self._watchdog is not None:
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.close()  # it finds nothing left to do, and ends
                self._watchdog.wait(PG_CTL_TIMEOUT)
                self._watchdog = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session. Fails (never skips) without PostgreSQL."""
    try:
        server = PgServer()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of an empty database of this test's own, dropped afterwards."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)
