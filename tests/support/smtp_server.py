"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, scriptable failures, STARTTLS, AUTH.

    with SmtpServer(users={"alice": "s3cret"}) as server:
        server.fail_rcpt(451, "4.3.0 try later", times=1)
        ...                                   # send to 127.0.0.1:server.port
        mail_from, rcpt_tos, data = server.messages[0]

aiosmtpd runs its own event loop in a thread, so the test's loop can talk to it
without deadlocking; every shared list is touched under a lock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .ports import LOOPBACK, free_port


class Received(NamedTuple):
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class _Script:
    reply: str
    times: int | None  # None: until cleared


@dataclass(frozen=True)
class SelfSignedCert:
    """A self-signed certificate for 127.0.0.1 / localhost and a client that trusts it."""

    cert_pem: bytes
    key_pem: bytes

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain only reads files.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self.key_pem)
            context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))


def make_certificate(hostname: str = "localhost") -> SelfSignedCert:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return SelfSignedCert(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class SmtpServer:
    """aiosmtpd `Controller` with a capturing, scriptable handler.

    `starttls`: offer STARTTLS with this certificate (`require_tls` refuses mail
    without it); `implicit_tls`: TLS from the first byte (SMTPS); `users`: accept
    AUTH PLAIN/LOGIN with these passwords (allowed without TLS, for tests).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        starttls: SelfSignedCert | None = None,
        require_tls: bool = False,
        implicit_tls: SelfSignedCert | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self._fixed_port = port
        self.port = port or 0
        self._starttls = starttls
        self._require_tls = require_tls
        self._implicit_tls = implicit_tls
        self._users = users
        self._lock = threading.Lock()
        self._scripts: dict[str, list[_Script]] = {"MAIL": [], "RCPT": [], "DATA": []}
        self._controller: Controller | None = None
        self.messages: list[Received] = []
        self.tls_used: list[bool] = []  # per received message
        self.logins: list[str] = []  # per received message; "" when not authenticated
        self.auth_attempts: list[tuple[str, bool]] = []  # (login, accepted)

    # -- scripting -------------------------------------------------------------------

    def fail_mail(self, code: int, text: str, times: int | None = 1) -> None:
        self._script("MAIL", code, text, times)

    def fail_rcpt(self, code: int, text: str, times: int | None = 1) -> None:
        self._script("RCPT", code, text, times)

    def fail_data(self, code: int, text: str, times: int | None = 1) -> None:
        self._script("DATA", code, text, times)

    def clear_failures(self) -> None:
        with self._lock:
            for scripts in self._scripts.values():
                scripts.clear()

    def _script(self, stage: str, code: int, text: str, times: int | None) -> None:
        with self._lock:
            self._scripts[stage].append(_Script(f"{code} {text}", times))

    def _scripted(self, stage: str) -> str | None:
        with self._lock:
            scripts = self._scripts[stage]
            if not scripts:
                return None
            script = scripts[0]
            if script.times is not None:
                script.times -= 1
                if script.times <= 0:
                    scripts.pop(0)
            return script.reply

    # -- aiosmtpd handler hooks (run in the server thread) ----------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if reply := self._scripted("MAIL"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if reply := self._scripted("RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := self._scripted("DATA"):
            return reply
        data = envelope.original_content or b""
        login = (
            session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else ""
        )
        with self._lock:
            self.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), data))
            # session.ssl is only set by STARTTLS; implicit TLS shows on the transport.
            self.tls_used.append(_over_tls(server, session))
            self.logins.append(login)
        return "250 2.0.0 queued"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword) and self._users is not None:
            login = auth_data.login.decode()
            ok = self._users.get(login) == auth_data.password.decode()
        with self._lock:
            self.auth_attempts.append((login, ok))
        if not ok:
            # handled=False: aiosmtpd itself answers 535 (handled=True would leave the
            # client waiting for a reply nobody sends).
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        kwargs: dict[str, Any] = {
            "server_hostname": "smtp.test",  # getfqdn() may wait on DNS
            "ready_timeout": 5.0,
        }
        if self._starttls is not None:
            kwargs.update(tls_context=self._starttls.server_context())
            kwargs.update(require_starttls=self._require_tls)
        if self._implicit_tls is not None:
            kwargs.update(ssl_context=self._implicit_tls.server_context())
        if self._users is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        # A free port can be taken between picking and binding: pick again.
        for attempt in range(3):
            self.port = self._fixed_port or free_port()
            controller = Controller(self, hostname=LOOPBACK, port=self.port, **kwargs)
            try:
                controller.start()
            except OSError:
                if self._fixed_port or attempt == 2:
                    raise
                continue
            self._controller = controller
            return

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _over_tls(server: SMTP, session: Session) -> bool:
    transport = server.transport
    return session.ssl is not None or (
        transport is not None and transport.get_extra_info("sslcontext") is not None
    )
