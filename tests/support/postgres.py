"""A private, throwaway PostgreSQL cluster for integration tests.

Each ``PostgresServer`` owns its data directory, port and socket directory, so tests
never depend on (or disturb) a system-wide PostgreSQL. Durability is switched off
(fsync, synchronous_commit, full_page_writes): a crash only loses test data.

PostgreSQL refuses to run as root; when the tests run as root the binaries are
started through ``setpriv`` as the ``postgres`` system user, which must then be able
to reach the work directory (a directory under /tmp is fine; pytest's own
``/tmp/pytest-of-root`` is not, being mode 0700).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import psycopg
from psycopg import sql

__all__ = ["Driver", "PostgresServer", "find_bindir"]

Driver = Literal["asyncpg", "psycopg"]

_DEFAULT_SETTINGS: Final[Mapping[str, str]] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    # A stuck test must not leave a transaction holding locks for ever.
    "idle_in_transaction_session_timeout": "'5min'",
}
_DB_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
_live_servers: weakref.WeakSet[PostgresServer] = weakref.WeakSet()


def find_bindir() -> Path:
    """Where initdb/postgres live: $PG_BINDIR, the newest Debian layout, or pg_config."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, postgres) not found; looked in "
        f"{[str(c) for c in candidates] or '/usr/lib/postgresql/*/bin'}. Install "
        "postgresql (Debian: apt-get install postgresql) or set PG_BINDIR."
    )


class PostgresServer:
    """A PostgreSQL cluster in ``workdir`` listening on 127.0.0.1 and a private socket.

    The cluster is created on first ``start()`` (or reused if ``workdir`` already holds
    one). The port is chosen once and kept across ``restart()`` so URLs handed out
    earlier stay valid.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        bindir: str | os.PathLike[str] | None = None,
        superuser: str = "postgres",
        os_user: str = "postgres",
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else find_bindir()
        for binary in ("initdb", "postgres"):
            if not (self.bindir / binary).is_file():
                raise RuntimeError(f"{self.bindir / binary} does not exist")
        self.workdir = Path(workdir).resolve()
        self.datadir = self.workdir / "data"
        self.socket_dir = self.workdir / "run"
        self.logfile = self.workdir / "postgres.log"
        self.superuser = superuser
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # PostgreSQL refuses to run as root, so root drops to the cluster owner.
        self._owner = pwd.getpwnam(os_user) if os.geteuid() == 0 else None

        socket_path = self.socket_dir / ".s.PGSQL.65535"
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"work directory {self.workdir} is too long for a Unix socket path "
                f"({_MAX_SOCKET_PATH} bytes max); use a shorter one, e.g. tempfile.mkdtemp()"
            )

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start (initialising the cluster first if needed); returns once it accepts
        connections, or raises with the server log's tail."""
        if self.running:
            return self
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb()
        if self.port is not None:
            self._launch(self.port)
        else:
            # A port picked by bind(0) can be taken before postgres binds it; retry then.
            for attempt in range(3):
                port = _free_port()
                try:
                    self._launch(port)
                except _PortInUse:
                    if attempt == 2:
                        raise
                    continue
                break
        _live_servers.add(self)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (rolls back open transactions, disconnects clients); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _initdb(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_owner(self.workdir)
        self._give_to_owner(self.socket_dir)
        if (
            self._owner is not None
            and self._run_as_owner(["test", "-w", str(self.workdir)], check=False).returncode != 0
        ):
            raise RuntimeError(
                f"user {self._owner.pw_name!r} cannot reach {self.workdir}: a parent directory "
                "is not traversable by it (pytest's tmp_path under /tmp/pytest-of-root is "
                "0700); use a directory made with tempfile.mkdtemp()"
            )
        result = self._run_as_owner(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.datadir),
                "--username",
                self.superuser,
                "--auth",
                "trust",  # local throwaway cluster bound to loopback only
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                "--no-instructions",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}")
        lines = [f"{key} = {value}" for key, value in self.settings.items()]
        lines.append(f"unix_socket_directories = '{self.socket_dir}'")
        with (self.datadir / "postgresql.conf").open("a") as conf:
            # Appended so these win over initdb's defaults earlier in the file.
            conf.write("\n# ofnotify test cluster\n" + "\n".join(lines) + "\n")

    def _launch(self, port: int) -> None:
        log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        with self.logfile.open("ab") as log:
            # The port goes on the command line, not in postgresql.conf, so a retry
            # with another port needs no config rewrite.
            self._proc = subprocess.Popen(
                self._as_owner(
                    [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(port)]
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                # Own session: a Ctrl-C in the terminal reaches pytest, whose teardown
                # then stops the cluster, instead of killing postgres mid-test.
                start_new_session=True,
            )
        self.port = port
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while True:
            exit_code = self._proc.poll()
            if exit_code is not None:
                self._proc = None
                tail = self._log_since(log_offset)
                if "could not bind" in tail or "Address already in use" in tail:
                    self.port = None
                    raise _PortInUse(tail)
                raise RuntimeError(f"postgres exited with code {exit_code} during startup:\n{tail}")
            try:
                with psycopg.connect(self.url("postgres", driver=None), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.stop(timeout=5)
                raise TimeoutError(
                    f"postgres did not accept connections within {self.startup_timeout} s "
                    f"(last error: {last_error}); log:\n{self._log_since(log_offset)}"
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ privileges

    def _as_owner(self, command: Sequence[str]) -> list[str]:
        if self._owner is None:
            return list(command)
        # setpriv execs in place (unlike runuser/su), so the Popen pid is postgres
        # itself and signals reach it directly.
        return [
            "setpriv",
            f"--reuid={self._owner.pw_uid}",
            f"--regid={self._owner.pw_gid}",
            "--init-groups",
            "--",
            *command,
        ]

    def _run_as_owner(
        self, command: Sequence[str], *, check: bool
    ) -> subprocess.CompletedProcess[str]:
        # cwd matters: initdb fails with "could not identify current directory" when
        # started from a directory its user cannot read, e.g. /root.
        return subprocess.run(
            self._as_owner(command),
            cwd=self.workdir,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=check,
        )

    def _give_to_owner(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        path.chmod(0o700)

    def _env(self) -> dict[str, str]:
        # Inherited PG* variables (PGDATA, PGPORT, PGHOST...) would silently redirect
        # the binaries and the readiness probe to some other cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._owner is not None:
            env["HOME"] = self._owner.pw_dir
            env["USER"] = env["LOGNAME"] = self._owner.pw_name
        return env

    # ------------------------------------------------------------------ databases

    def url(self, name: str = "postgres", driver: Driver | None = "asyncpg") -> str:
        """SQLAlchemy URL for ``name`` (``driver=None``: a plain libpq URI)."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        return f"{scheme}://{self.superuser}@127.0.0.1:{self.port}/{name}"

    def connect(self, name: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit psycopg connection, for setup and assertions."""
        return psycopg.connect(self.url(name, driver=None), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its asyncpg SQLAlchemy URL."""
        _check_name(name)
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting whoever is still connected."""
        _check_name(name)
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def databases(self) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
            return sorted(str(row[0]) for row in rows)


class _PortInUse(RuntimeError):
    pass


def _check_name(name: str) -> None:
    if not _DB_NAME.match(name):
        raise ValueError(f"unsupported database name {name!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@atexit.register
def _stop_leftovers() -> None:
    # Postmasters run in their own session and outlive the interpreter otherwise.
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop(timeout=10)
