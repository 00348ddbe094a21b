"""Real Prosody and ejabberd instances for integration tests.

Each instance gets its own loopback ports, its own config, data and logs in a private
directory, and runs in its own session/process group so that ``stop()`` (or, as a last
resort, interpreter exit) leaves nothing behind.  Nothing under /etc is read or touched.

Both servers refuse to run as root, so when the tests run as root the server runs as the
package's system user (``prosody`` / ``ejabberd``) through ``setpriv``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import yaml

from tests.support.ports import LOOPBACK, free_ports, port_accepts

__all__ = ["EjabberdServer", "ProsodyServer", "XmppServer"]

# pytest's tmp_path lives under a 0700 root-owned directory that the service users
# cannot traverse, so the server's files go to a world-traversable place instead and
# the workdir only gets a symlink to them (and a copy of the logs at cleanup).
_RUNTIME_PARENT = Path("/tmp")

_live_servers: set[XmppServer] = set()

# 127.0.0.1 as /proc/net/tcp prints it on little-endian machines.
LOOPBACK_HEX = "0100007F"


@atexit.register
def _cleanup_leftovers() -> None:
    # Safety net for runs that never reach fixture teardown (Ctrl-C, crashes in setup).
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.cleanup()


def _lua_string(value: str) -> str:
    # For printable text, JSON string escapes (\" \\) are valid Lua escapes too.
    return json.dumps(value, ensure_ascii=False)


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n:])


class XmppServer(ABC):
    """A throwaway XMPP server on 127.0.0.1 with one XEP-0114 component slot."""

    name: ClassVar[str]
    service_user: ClassVar[str]
    host: ClassVar[str] = LOOPBACK
    start_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 15.0

    domain: str
    c2s_port: int
    component_port: int
    component_jid: str
    component_secret: str

    def __init__(
        self,
        workdir: Path,
        *,
        component_jid: str = "push.example.test",
        component_secret: str = "s3cret",
        domain: str = "example.test",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.component_jid = component_jid
        self.component_secret = component_secret
        ports = free_ports(2 + self._extra_port_count())
        self.c2s_port, self.component_port = ports[0], ports[1]
        self._extra_ports = ports[2:]
        self.rundir = Path(tempfile.mkdtemp(prefix=f"ofnotify-{self.name}-", dir=_RUNTIME_PARENT))
        with contextlib.suppress(OSError):
            (self.workdir / "rundir").symlink_to(self.rundir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offsets: dict[Path, int] = {}
        self.last_stop_forced = False
        _live_servers.add(self)

    # -- public API ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._has_exited(self._proc)

    @property
    def console_log(self) -> Path:
        return self.rundir / "console.log"

    def start(self) -> None:
        """Start the server; return once the c2s and component ports accept connections."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} is already started")
        self._check_prerequisites()
        self._prepare_rundir()
        # Logs are appended across restarts; startup checks only look at this run's part.
        self._log_offsets = {
            path: path.stat().st_size if path.exists() else 0 for path in self._log_files()
        }
        with self.console_log.open("ab") as console:
            self._proc = subprocess.Popen(
                self._as_service_user(self._start_command()),
                cwd=self.rundir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_ready(self._proc)

    def stop(self) -> None:
        """Stop gracefully, then SIGKILL whatever is left of the process group.

        Idempotent. ``last_stop_forced`` tells whether the SIGKILL was needed.
        """
        proc = self._proc
        if proc is None:
            return
        self.last_stop_forced = False
        try:
            if self._group_alive(proc):
                with contextlib.suppress(Exception):
                    self._graceful_stop(proc)
                self.last_stop_forced = not self._wait_group_gone(proc, self.stop_timeout)
        finally:
            self._kill_group(proc)
            self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same accounts and data.

        This blocks for up to a few seconds (ejabberd); call it through
        ``asyncio.to_thread`` from async tests so XMPP clients keep being serviced.
        """
        self.stop()
        self.start()

    @abstractmethod
    def register(self, user: str, password: str) -> None:
        """Create the account ``user@domain`` (ejabberd: only while running)."""

    def log_tail(self, n: int = 50) -> str:
        parts = []
        for path in [*self._log_files(), self.console_log]:
            text = _tail(path, n)
            if text.strip():
                parts.append(f"==> {path} <==\n{text}")
        return "\n".join(parts) or f"(no {self.name} log output in {self.rundir})"

    def cleanup(self) -> None:
        """Stop, keep a copy of the logs in the workdir, delete the runtime directory."""
        try:
            self.stop()
        finally:
            _live_servers.discard(self)
            if self.rundir.exists():
                logs = self.workdir / "logs"
                logs.mkdir(exist_ok=True)
                for path in [*self._log_files(), self.console_log]:
                    if path.exists():
                        shutil.copy(path, logs / path.name)
                shutil.rmtree(self.rundir, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.workdir / "rundir").unlink()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.domain} c2s={self.host}:{self.c2s_port} "
            f"component={self.host}:{self.component_port} running={self.running}>"
        )

    # -- hooks for subclasses -------------------------------------------------------------

    def _extra_port_count(self) -> int:
        return 0

    @abstractmethod
    def _binary(self) -> str: ...

    @abstractmethod
    def _write_config(self) -> None: ...

    @abstractmethod
    def _start_command(self) -> list[str]: ...

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # Prosody's mod_posix turns SIGTERM into a clean shutdown that closes streams;
        # for ejabberd this is only the fallback (the runtime then runs init:stop()).
        os.killpg(proc.pid, signal.SIGTERM)

    @abstractmethod
    def _log_files(self) -> list[Path]: ...

    def _env(self) -> dict[str, str]:
        # A minimal environment: inherited ERL_*/LUA_* settings must not leak in.
        path = os.environ.get("PATH", "")
        return {
            "PATH": f"{path}:/usr/sbin:/usr/bin:/sbin:/bin" if path else "/usr/sbin:/usr/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.rundir),
        }

    # -- helpers -------------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        if shutil.which(self._binary(), path=self._env()["PATH"]) is None:
            raise RuntimeError(
                f"{self._binary()} not found: install the Debian package '{self.name}'"
            )
        if self._needs_setpriv():
            try:
                pwd.getpwnam(self.service_user)
            except KeyError:
                raise RuntimeError(
                    f"system user {self.service_user!r} missing: is the '{self.name}' "
                    "package installed?"
                ) from None

    @staticmethod
    def _needs_setpriv() -> bool:
        return os.geteuid() == 0

    def _as_service_user(self, cmd: Sequence[str]) -> list[str]:
        if not self._needs_setpriv():
            return list(cmd)
        user = self.service_user
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *cmd]

    def _prepare_rundir(self) -> None:
        self._write_config()
        if self._needs_setpriv():
            entry = pwd.getpwnam(self.service_user)
            for root, dirs, files in os.walk(self.rundir):
                for name in [root, *(os.path.join(root, d) for d in dirs)]:
                    os.chown(name, entry.pw_uid, entry.pw_gid)
                for name in files:
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def _run_tool(self, cmd: Sequence[str], *, timeout: float = 30.0) -> str:
        full = self._as_service_user(cmd)
        result = subprocess.run(
            full,
            cwd=self.rundir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(full)} exited with {result.returncode}\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail(20)}"
            )
        return result.stdout

    def _wait_until_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._has_exited(proc):
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited during startup (exit status {proc.returncode})\n"
                    f"{self.log_tail()}"
                )
            failure = self._startup_failure()
            if failure:
                self.stop()
                raise RuntimeError(f"{self.name} failed to start: {failure}\n{self.log_tail()}")
            if self._ports_ready(proc):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not open ports {self.c2s_port}/{self.component_port} "
                    f"within {self.start_timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _startup_failure(self) -> str | None:
        """A fatal problem the server logged while staying alive, if any."""
        return None

    def _log_since_start(self, path: Path) -> str:
        try:
            with path.open("rb") as log:
                log.seek(self._log_offsets.get(path, 0))
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _ports_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        # Accepting connections is not enough: if another process grabbed one of our
        # ports between free_ports() and the bind, we would be talking to a stranger.
        ours = self._group_socket_inodes(proc)
        return all(
            self._listen_inode(port) in ours and port_accepts(port)
            for port in (self.c2s_port, self.component_port)
        )

    def _listen_inode(self, port: int) -> str | None:
        # /proc/net/tcp: "sl local_address rem_address st ... uid timeout inode", with
        # the IPv4 address as little-endian hex; st 0A is LISTEN.
        local = f"{LOOPBACK_HEX}:{port:04X}"
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1] == local and fields[3] == "0A":
                    return fields[9]
        return None

    def _group_socket_inodes(self, proc: subprocess.Popen[bytes]) -> set[str]:
        inodes: set[str] = set()
        for pid in self._group_pids(proc):
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd.path)
                        if target.startswith("socket:["):
                            inodes.add(target[len("socket:[") : -1])
        return inodes

    # The process group id equals the leader's pid.  The leader is never reaped before
    # the group is empty (waitid with WNOWAIT leaves it a zombie), so the group id cannot
    # be recycled by an unrelated process while we still signal it.

    @staticmethod
    def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
        if proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    @staticmethod
    def _group_pids(proc: subprocess.Popen[bytes]) -> list[int]:
        """Live (non-zombie) processes in the server's process group."""
        if proc.returncode is not None:
            return []
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command name: state ppid pgrp ...
            state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
            if int(pgrp) == proc.pid and state != "Z":
                pids.append(int(entry.name))
        return pids

    def _group_alive(self, proc: subprocess.Popen[bytes]) -> bool:
        # The leader alone is not enough: for ejabberd it is the ejabberdctl shell, which
        # can die before beam.smp has finished shutting down.
        return bool(self._group_pids(proc))

    def _wait_group_gone(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._group_alive(proc):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        if self._group_alive(proc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self._wait_group_gone(proc, 10.0)
        proc.wait()


class ProsodyServer(XmppServer):
    """Prosody 0.12 with mod_cloud_notify (prosody-modules)."""

    name = "prosody"
    service_user = "prosody"

    # Debian's prosody-modules installs mod_cloud_notify/ next to the core modules.
    plugin_paths: ClassVar[tuple[str, ...]] = (
        "/usr/lib/prosody/modules",
        "/usr/share/prosody-modules",
    )

    @property
    def config_path(self) -> Path:
        return self.rundir / "prosody.cfg.lua"

    @property
    def log_path(self) -> Path:
        return self.rundir / "prosody.log"

    def register(self, user: str, password: str) -> None:
        self._prepare_rundir()
        self._run_tool(
            [
                "prosodyctl",
                "--config",
                str(self.config_path),
                "register",
                user,
                self.domain,
                password,
            ]
        )

    def _binary(self) -> str:
        return "prosody"

    def _start_command(self) -> list[str]:
        return ["prosody", "-F", "--config", str(self.config_path)]

    def _log_files(self) -> list[Path]:
        return [self.log_path]

    def _startup_failure(self) -> str | None:
        # Prosody keeps running when it cannot bind a port; it only logs it.
        for line in self._log_since_start(self.log_path).splitlines():
            if "Failed to open server port" in line:
                return line
        return None

    def _check_prerequisites(self) -> None:
        super()._check_prerequisites()
        if not any(Path(p, "mod_cloud_notify").is_dir() for p in self.plugin_paths):
            raise RuntimeError(
                "mod_cloud_notify not found in "
                f"{', '.join(self.plugin_paths)}: install the Debian package 'prosody-modules'"
            )

    def _write_config(self) -> None:
        data = self.rundir / "data"
        data.mkdir(exist_ok=True)
        # An absent certs dir makes every prosody/prosodyctl run log an error.
        (self.rundir / "certs").mkdir(exist_ok=True)
        paths = ", ".join(_lua_string(p) for p in self.plugin_paths if Path(p).is_dir())
        lo = _lua_string(self.host)
        self.config_path.write_text(
            f"""\
-- Generated by tests/support/xmpp_servers.py
plugin_paths = {{ {paths} }}
data_path = {_lua_string(str(data))}
certificates = {_lua_string(str(self.rundir / "certs"))}
pidfile = {_lua_string(str(self.rundir / "prosody.pid"))}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = {_lua_string(str(self.log_path))} }} }}

interfaces = {{ {lo} }}
local_interfaces = {{ {lo} }}
c2s_interfaces = {{ {lo} }}
component_interfaces = {{ {lo} }}
c2s_ports = {{ {self.c2s_port} }}
component_ports = {{ {self.component_port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}

admins = {{ }}
-- mod_limits is deliberately absent: Debian's stock config throttles c2s to 10 kB/s.
modules_enabled = {{
    "disco"; "roster"; "saslauth"; "carbons"; "offline"; "smacks"; "ping";
    "posix"; "cloud_notify";
}}
modules_disabled = {{ "s2s" }}

c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

push_notification_with_body = true
push_notification_with_sender = true

VirtualHost {_lua_string(self.domain)}

Component {_lua_string(self.component_jid)}
    component_secret = {_lua_string(self.component_secret)}
"""
        )


class EjabberdServer(XmppServer):
    """ejabberd 23.01 with mod_push, as a private Erlang node without epmd."""

    name = "ejabberd"
    service_user = "ejabberd"

    @property
    def dist_port(self) -> int:
        return self._extra_ports[0]

    @property
    def node(self) -> str:
        # Unique per instance so parallel or leftover nodes never collide; stable across
        # restart() because Mnesia's schema (i.e. the accounts) is tied to the node name.
        return f"ejabberd_test_{self.c2s_port}@localhost"

    @property
    def config_path(self) -> Path:
        return self.rundir / "ejabberd.yml"

    @property
    def logs_dir(self) -> Path:
        return self.rundir / "logs"

    @property
    def spool_dir(self) -> Path:
        return self.rundir / "db"

    def register(self, user: str, password: str) -> None:
        if not self.running:
            raise RuntimeError("ejabberd must be running to register users")
        self._run_tool(self._ctl("register", user, self.domain, password))

    def _extra_port_count(self) -> int:
        return 1

    def _binary(self) -> str:
        return "ejabberdctl"

    def _ctl(self, *args: str) -> list[str]:
        return [
            "ejabberdctl",
            "--config-dir",
            str(self.rundir),
            "--logs",
            str(self.logs_dir),
            "--spool",
            str(self.spool_dir),
            "--node",
            self.node,
            *args,
        ]

    def _start_command(self) -> list[str]:
        return self._ctl("foreground")

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # A bare SIGTERM (init:stop) lets Mnesia go down under ejabberd's feet and fills
        # error.log with crash reports; `ejabberdctl stop` shuts ejabberd down in order.
        try:
            self._run_tool(self._ctl("stop"), timeout=self.stop_timeout)
        except (RuntimeError, subprocess.TimeoutExpired):
            super()._graceful_stop(proc)

    def _log_files(self) -> list[Path]:
        return [self.logs_dir / "ejabberd.log", self.logs_dir / "error.log"]

    def _env(self) -> dict[str, str]:
        # HOME holds the .erlang.cookie shared by the node and every ejabberdctl call.
        return {**super()._env(), "HOME": str(self.rundir / "home")}

    def _write_config(self) -> None:
        for sub in ("home", "logs", "db", "contrib"):
            (self.rundir / sub).mkdir(exist_ok=True)
        # Without this file the runtime prints an inet_config error at every start.
        (self.rundir / "inetrc").write_text("{lookup, [native]}.\n")
        # ejabberdctl sources this instead of /etc/ejabberd/ejabberdctl.cfg.
        # ERL_DIST_PORT makes the node listen on a fixed port and talk to no epmd.
        # inet_dist_use_interface is what INET_DIST_INTERFACE=127.0.0.1 would produce,
        # minus the extra `erl` boot ejabberdctl spends on converting it at every call.
        ctl_cfg = {
            "ERLANG_NODE": self.node,
            "ERL_DIST_PORT": str(self.dist_port),
            "ERL_OPTIONS": "-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface "
            "{127,0,0,1}",
            "EJABBERD_PID_PATH": str(self.rundir / "ejabberd.pid"),
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "CONTRIB_MODULES_PATH": str(self.rundir / "contrib"),
            "CONTRIB_MODULES_CONF_DIR": str(self.rundir / "contrib"),
        }
        (self.rundir / "ejabberdctl.cfg").write_text(
            "".join(f"{key}={shlex.quote(value)}\n" for key, value in ctl_cfg.items())
        )
        config = {
            "hosts": [self.domain],
            "loglevel": "info",
            "acme": {"auto": False},
            "s2s_access": "none",
            "auth_method": "internal",
            "listen": [
                {
                    "port": self.c2s_port,
                    "ip": self.host,
                    "module": "ejabberd_c2s",
                    "starttls_required": False,
                    "max_stanza_size": 262144,
                },
                {
                    "port": self.component_port,
                    "ip": self.host,
                    "module": "ejabberd_service",
                    "hosts": {self.component_jid: {"password": self.component_secret}},
                },
            ],
            # Debian's default caps offline storage at 100 messages per user.
            "shaper_rules": {"max_user_offline_messages": "infinity"},
            "modules": {
                "mod_adhoc": {},
                "mod_caps": {},
                "mod_carboncopy": {},  # ejabberd's XEP-0280 module; there is no mod_carbons
                "mod_disco": {},
                "mod_offline": {"access_max_user_messages": "max_user_offline_messages"},
                "mod_push": {"include_body": True, "include_sender": True},
                "mod_roster": {},
                "mod_stream_mgmt": {},
            },
        }
        self.config_path.write_text(
            "# Generated by tests/support/xmpp_servers.py\n"
            + yaml.safe_dump(config, default_flow_style=False, sort_keys=False)
        )
