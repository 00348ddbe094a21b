"""A local stand-in for Google's OAuth2 token endpoint and the FCM HTTP v1 API.

Google is unreachable from the test environment, so this server speaks the same wire
protocol on 127.0.0.1: service-account JWT grants on ``POST /token`` and
``POST /v1/projects/{project}/messages:send`` with the documented v1 error format
(https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode).

It runs its own asyncio loop in a daemon thread, so sync code (pyfcm, requests) and
async tests (whose loop belongs to pytest-asyncio) can both talk to it without sharing
a loop. Behaviour per device token is scripted with ``FcmReply`` values::

    fake.script("tok", [FcmReply.unregistered(), FcmReply.quota_exceeded(retry_after=2)])
    fake.always("dead", FcmReply.unregistered())
    fake.default = FcmReply.unavailable()

A reply is chosen as: the token's script queue (one-shot, in order), else the token's
permanent rule, else the default (success unless changed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl

import requests
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pyfcm import FCMNotification
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "FCM_ERROR_TYPE",
    "FCM_SCOPE",
    "GOOGLE_TOKEN_URI",
    "JWT_GRANT_TYPE",
    "FakeFcm",
    "FcmReply",
    "FcmRequest",
    "SingleShotFCMNotification",
    "TokenGrant",
    "pyfcm_client",
]

FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
# google-auth always puts Google's endpoint in the assertion's `aud`, whatever token_uri
# the service-account file names, so the fake has to accept it.
GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"
JWT_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
ERROR_INFO_TYPE: Final = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST_TYPE: Final = "type.googleapis.com/google.rpc.BadRequest"

_SEND_PREFIX: Final = "/v1/projects/"
_SEND_SUFFIX: Final = "/messages:send"
_JSON_HEADERS: Final = {"Content-Type": "application/json; charset=UTF-8"}
_MESSAGE_TARGETS: Final = ("token", "topic", "condition")
# Google rejects assertions whose iat/exp lie outside a short window around "now".
_MAX_ASSERTION_LIFETIME: Final = 3600
_CLOCK_SKEW: Final = 300


@dataclass(frozen=True, slots=True)
class FcmReply:
    """One scripted answer to a messages:send request.

    ``body`` None means "success": the fake then generates ``{"name": ...}`` itself so
    every delivered message gets a unique id. Bytes are sent verbatim (empty bodies,
    HTML from a misbehaving proxy, ...).
    """

    http_status: int = 200
    body: Mapping[str, Any] | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    error_code: str | None = None

    def with_delay(self, seconds: float) -> FcmReply:
        return replace(self, delay=seconds)

    @classmethod
    def ok(cls, *, name: str | None = None, delay: float = 0.0) -> FcmReply:
        return cls(200, None if name is None else {"name": name}, delay=delay)

    @classmethod
    def error(
        cls,
        http_status: int,
        grpc_status: str,
        error_code: str | None,
        message: str,
        *,
        retry_after: int | str | None = None,
        delay: float = 0.0,
        extra_details: Iterable[Mapping[str, Any]] = (),
    ) -> FcmReply:
        """Any v1 error. ``retry_after`` may be seconds or an HTTP-date string."""
        details: list[Mapping[str, Any]] = []
        if error_code is not None:
            details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
        details.extend(extra_details)
        error: dict[str, Any] = {"code": http_status, "message": message, "status": grpc_status}
        if details:
            error["details"] = details
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(http_status, {"error": error}, headers, delay, error_code)

    @classmethod
    def raw(
        cls,
        http_status: int,
        body: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> FcmReply:
        data = body.encode() if isinstance(body, str) else body
        return cls(http_status, data, dict(headers or {}), delay)

    @classmethod
    def unregistered(cls, *, delay: float = 0.0) -> FcmReply:
        return cls.error(
            404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.", delay=delay
        )

    @classmethod
    def invalid_argument(
        cls,
        message: str = "The registration token is not a valid FCM registration token",
        *,
        field_name: str = "message.token",
        delay: float = 0.0,
    ) -> FcmReply:
        violation = {
            "@type": BAD_REQUEST_TYPE,
            "fieldViolations": [{"field": field_name, "description": message}],
        }
        return cls.error(
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            message,
            delay=delay,
            extra_details=[violation],
        )

    @classmethod
    def sender_id_mismatch(cls, *, delay: float = 0.0) -> FcmReply:
        return cls.error(
            403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch", delay=delay
        )

    @classmethod
    def quota_exceeded(cls, *, retry_after: int | str | None = 60, delay: float = 0.0) -> FcmReply:
        return cls.error(
            429,
            "RESOURCE_EXHAUSTED",
            "QUOTA_EXCEEDED",
            "Quota exceeded for quota metric 'Send requests' of service 'fcm.googleapis.com'.",
            retry_after=retry_after,
            delay=delay,
        )

    @classmethod
    def unavailable(cls, *, retry_after: int | str | None = None, delay: float = 0.0) -> FcmReply:
        return cls.error(
            503,
            "UNAVAILABLE",
            "UNAVAILABLE",
            "The service is currently unavailable.",
            retry_after=retry_after,
            delay=delay,
        )

    @classmethod
    def internal(cls, *, retry_after: int | str | None = None, delay: float = 0.0) -> FcmReply:
        return cls.error(
            500,
            "INTERNAL",
            "INTERNAL",
            "Internal error encountered.",
            retry_after=retry_after,
            delay=delay,
        )

    @classmethod
    def third_party_auth_error(cls, *, delay: float = 0.0) -> FcmReply:
        return cls.error(
            401,
            "UNAUTHENTICATED",
            "THIRD_PARTY_AUTH_ERROR",
            "Auth error from APNS or Web Push Service",
            delay=delay,
        )


@dataclass(frozen=True, slots=True)
class FcmRequest:
    """A messages:send request as the fake saw it, and what it answered.

    Recorded on arrival, before any scripted delay, so the list is in arrival order and
    a waiter can wake while the client is still waiting for its (delayed) answer.
    """

    received_at: float  # time.monotonic(), comparable with the test's own clock
    received_at_wall: float  # time.time()
    project: str
    token: str | None  # message.token; None for topic/condition sends or unparsable bodies
    message: dict[str, Any] | None
    validate_only: bool
    status: int
    error_code: str | None  # FcmError errorCode answered, if any
    name: str | None  # message name answered on success
    access_token: str | None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """An access token handed out by ``POST /token``."""

    access_token: str
    client_email: str
    scopes: frozenset[str]
    issued_at: float  # time.monotonic()
    expires_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class _Identity:
    key_id: str
    client_email: str
    public_key: rsa.RSAPublicKey


class _InvalidGrant(Exception):
    pass


class _CountingServer(web.Server):
    """Counts accepted connections, which is how tests see keep-alive actually working."""

    def __init__(self, *args: Any, on_connect: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_connect = on_connect

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._on_connect()


class FakeFcm:
    """FCM HTTP v1 + OAuth2 token endpoint on 127.0.0.1, served from a background thread.

    ``strict`` enables the request validation real FCM performs (exactly one target,
    string-only ``data`` values, known top-level fields); turn it off to see what a
    client sends without the fake judging it.
    """

    def __init__(
        self,
        project_id: str = "test-project",
        *,
        token_lifetime: int = 3600,
        strict: bool = True,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self.strict = strict
        self.service_account_path: Path | None = None
        self._shutdown_timeout = shutdown_timeout

        # One lock guards everything the server thread and test threads both touch.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[FcmRequest] = []
        self._async_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._scripts: dict[str, deque[FcmReply]] = {}
        self._always: dict[str, FcmReply] = {}
        self._default = FcmReply.ok()
        self._grants: dict[str, TokenGrant] = {}
        self._grant_log: list[TokenGrant] = []
        self._identities: dict[str, _Identity] = {}
        self._connections = 0
        self._message_ids = itertools.count(1)

        self._lifecycle = threading.Lock()
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        with self._lifecycle:
            if self._thread is not None:
                return self
            sock = self._bind()
            ready = threading.Event()
            failures: list[BaseException] = []
            thread = threading.Thread(
                target=self._serve,
                args=(sock, ready, failures),
                name=f"fake-fcm-{self._port}",
                daemon=True,
            )
            thread.start()
            if not ready.wait(10):
                raise RuntimeError("fake FCM server did not start within 10 s")
            if failures:
                thread.join(5)
                self._sock = None
                raise RuntimeError("fake FCM server failed to start") from failures[0]
            self._thread = thread
        return self

    def stop(self) -> None:
        """Stop serving; idempotent. ``start()`` again reuses the same port."""
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                return
            # RuntimeError: the loop is already closed because the server thread crashed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(self._shutdown_timeout + 10)
            self._thread = self._loop = None
            self._sock = None  # closed by aiohttp's site shutdown

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        # Binding (without listening) before start fixes the port, so base_url and
        # service-account files can be produced first and stay valid across stop/start.
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port or 0))
            self._port = sock.getsockname()[1]
            self._sock = sock
        return self._sock

    def _serve(
        self, sock: socket.socket, ready: threading.Event, failures: list[BaseException]
    ) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            runner = loop.run_until_complete(self._start_site(sock))
        except BaseException as exc:
            failures.append(exc)
            sock.close()
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _start_site(self, sock: socket.socket) -> web.BaseRunner:
        # The low-level server skips routing and middlewares; access_log=None because
        # logging every request would dominate the cost at benchmark rates.
        server = _CountingServer(
            self._dispatch,
            on_connect=self._count_connection,
            access_log=None,
            keepalive_timeout=75.0,
        )
        runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        return runner

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        # Lock-free once known: request handlers read it on the server thread while
        # stop() may hold the lifecycle lock waiting for that very thread.
        if self._port is None:
            with self._lifecycle:
                self._bind()
        assert self._port is not None
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"

    @property
    def fcm_endpoint_base(self) -> str:
        """What pyfcm's ``FCM_END_POINT_BASE`` must be set to."""
        return self.base_url + "/v1/projects"

    def send_url(self, project: str | None = None) -> str:
        return f"{self.fcm_endpoint_base}/{project or self.project_id}/messages:send"

    # ------------------------------------------------------------------ credentials

    def service_account_info(
        self, *, trusted: bool = True, client_email: str | None = None
    ) -> dict[str, str]:
        """A fresh service-account key as the JSON dict Google would hand out.

        ``trusted=False`` produces a well-formed key the token endpoint does not know,
        i.e. what a revoked or foreign key looks like.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        email = client_email or (
            f"firebase-adminsdk-{secrets.token_hex(3)}@{self.project_id}.iam.gserviceaccount.com"
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        if trusted:
            with self._lock:
                self._identities[key_id] = _Identity(key_id, email, key.public_key())
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**21)).zfill(21),
            "auth_uri": self.base_url + "/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": self.base_url + "/oauth2/v1/certs",
            "client_x509_cert_url": f"{self.base_url}/robot/v1/metadata/x509/{email}",
            "universe_domain": "googleapis.com",
        }

    def write_service_account(
        self,
        path: str | os.PathLike[str],
        *,
        trusted: bool = True,
        client_email: str | None = None,
    ) -> Path:
        """Write a throwaway service-account JSON; the trusted one is remembered as
        ``service_account_path``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        info = self.service_account_info(trusted=trusted, client_email=client_email)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
        if trusted:
            self.service_account_path = target
        return target

    @property
    def token_grants(self) -> list[TokenGrant]:
        with self._lock:
            return list(self._grant_log)

    def expire_access_tokens(self) -> None:
        """Make every token issued so far answer 401 ACCESS_TOKEN_EXPIRED."""
        now = time.monotonic()
        with self._lock:
            for token, grant in self._grants.items():
                self._grants[token] = replace(grant, expires_at=min(grant.expires_at, now))

    def revoke_access_tokens(self) -> None:
        """Forget every token issued so far: they answer 401 as unknown tokens."""
        with self._lock:
            self._grants.clear()

    # ------------------------------------------------------------------ scripting

    def script(self, token: str, replies: Iterable[FcmReply]) -> None:
        """Queue one-shot replies for ``token``, appended after any still queued."""
        with self._lock:
            self._scripts.setdefault(token, deque()).extend(replies)

    def always(self, token: str, reply: FcmReply | None) -> None:
        """Answer every request for ``token`` with ``reply`` (None removes the rule)."""
        with self._lock:
            if reply is None:
                self._always.pop(token, None)
            else:
                self._always[token] = reply

    @property
    def default(self) -> FcmReply:
        return self._default

    @default.setter
    def default(self, reply: FcmReply) -> None:
        with self._lock:
            self._default = reply

    def set_default(self, reply: FcmReply) -> None:
        self.default = reply

    def pending_scripts(self) -> dict[str, int]:
        """Replies still queued per token; empty once every script was consumed."""
        with self._lock:
            return {token: len(queue) for token, queue in self._scripts.items() if queue}

    def reset(self) -> None:
        """Drop scripts, rules, the default override and recorded requests."""
        with self._lock:
            self._scripts.clear()
            self._always.clear()
            self._default = FcmReply.ok()
            self._requests.clear()

    def _choose(self, token: str | None) -> FcmReply:
        with self._lock:
            if token is not None:
                queue = self._scripts.get(token)
                if queue:
                    reply = queue.popleft()
                    if not queue:
                        del self._scripts[token]
                    return reply
                rule = self._always.get(token)
                if rule is not None:
                    return rule
            return self._default

    # ------------------------------------------------------------------ observation

    @property
    def requests(self) -> list[FcmRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, token: str) -> list[FcmRequest]:
        with self._lock:
            return [r for r in self._requests if r.token == token]

    @property
    def delivered(self) -> list[FcmRequest]:
        """Requests answered 200 that were not dry runs."""
        with self._lock:
            return [r for r in self._requests if r.status == 200 and not r.validate_only]

    @property
    def connections_opened(self) -> int:
        with self._lock:
            return self._connections

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_requests_sync(self, n: int, timeout: float = 5.0) -> list[FcmRequest]:
        """Block until at least ``n`` messages:send requests arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"fake FCM saw {len(self._requests)} of {n} requests within {timeout} s"
                    )
                self._cond.wait(remaining)
            return list(self._requests)

    # A timeout argument (rather than asyncio.timeout) keeps it symmetrical with the
    # sync variant and gives a TimeoutError that says how many requests did arrive.
    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[FcmRequest]:
        """Like ``wait_for_requests_sync`` without blocking the caller's event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (n, loop, future)
        with self._lock:
            if len(self._requests) >= n:
                return list(self._requests)
            self._async_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise TimeoutError(
                f"fake FCM saw {len(self.requests)} of {n} requests within {timeout} s"
            ) from None
        finally:
            with self._lock:
                if entry in self._async_waiters:
                    self._async_waiters.remove(entry)
        return self.requests

    def _record(self, request: FcmRequest) -> None:
        with self._lock:
            self._requests.append(request)
            count = len(self._requests)
            self._cond.notify_all()
            woken = [w for w in self._async_waiters if w[0] <= count]
            if woken:
                self._async_waiters = [w for w in self._async_waiters if w[0] > count]
        for _, loop, future in woken:
            # RuntimeError: the waiter's loop is already closed; nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    # ------------------------------------------------------------------ HTTP

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "POST":
            if path == "/token":
                return await self._handle_token(request)
            if path.startswith(_SEND_PREFIX) and path.endswith(_SEND_SUFFIX):
                project = path[len(_SEND_PREFIX) : -len(_SEND_SUFFIX)]
                if project and "/" not in project:
                    return await self._handle_send(request, project)
        return _json_response(
            404,
            _error_body(
                404, "NOT_FOUND", f"The requested URL {path} was not found on this server."
            ),
        )

    async def _handle_token(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.read()
        form = dict(parse_qsl(raw.decode("utf-8", "replace")))
        grant_type = form.get("grant_type")
        if grant_type != JWT_GRANT_TYPE:
            return _json_response(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Invalid grant_type: {grant_type}",
                },
            )
        try:
            identity, scopes = self._verify_assertion(form.get("assertion", ""))
        except _InvalidGrant as exc:
            return _json_response(400, {"error": "invalid_grant", "error_description": str(exc)})
        if not scopes:
            return _json_response(
                400,
                {
                    "error": "invalid_scope",
                    "error_description": "Invalid OAuth scope or ID token audience provided.",
                },
            )
        now = time.monotonic()
        grant = TokenGrant(
            access_token="ya29.fake-" + secrets.token_urlsafe(32),
            client_email=identity.client_email,
            scopes=scopes,
            issued_at=now,
            expires_at=now + self.token_lifetime,
        )
        with self._lock:
            self._grants[grant.access_token] = grant
            self._grant_log.append(grant)
        return _json_response(
            200,
            {
                "access_token": grant.access_token,
                "expires_in": self.token_lifetime,
                "token_type": "Bearer",
            },
        )

    def _verify_assertion(self, assertion: str) -> tuple[_Identity, frozenset[str]]:
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _InvalidGrant("Invalid JWT: malformed assertion.")
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (ValueError, binascii.Error) as exc:
            raise _InvalidGrant("Invalid JWT: malformed assertion.") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _InvalidGrant("Invalid JWT: malformed assertion.")
        if header.get("alg") != "RS256":
            raise _InvalidGrant("Invalid JWT: unsupported algorithm.")

        with self._lock:
            kid = header.get("kid")
            if kid is not None:
                candidates = [self._identities[kid]] if kid in self._identities else []
            else:
                candidates = list(self._identities.values())
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        identity = next((c for c in candidates if _signature_ok(c, signed, signature)), None)
        if identity is None:
            raise _InvalidGrant("Invalid JWT Signature.")
        if claims.get("iss") != identity.client_email:
            raise _InvalidGrant("Invalid email or User ID")
        if claims.get("aud") not in (GOOGLE_TOKEN_URI, self.token_uri):
            raise _InvalidGrant("Invalid JWT: Failed audience check.")
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or exp - iat > _MAX_ASSERTION_LIFETIME
            or iat > now + _CLOCK_SKEW
            or exp < now - _CLOCK_SKEW
        ):
            raise _InvalidGrant(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim."
            )
        scope = claims.get("scope", "")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        return identity, scopes

    async def _handle_send(self, request: web.BaseRequest, project: str) -> web.StreamResponse:
        received_at, received_at_wall = time.monotonic(), time.time()
        raw = await request.read()
        access_token, failure = self._authenticate(
            request.headers.get("Authorization"), received_at
        )
        message, validate_only, invalid = self._parse_send_body(raw)
        token = message.get("token") if message is not None else None
        if not isinstance(token, str):
            token = None

        # Same precedence as Google: credentials, then permission, then the payload.
        if failure is None and project != self.project_id:
            failure = _permission_denied(project)
        reply = failure or invalid or self._choose(token)

        name: str | None = None
        if reply.body is None:
            message_id = (
                "fake_message_id"
                if validate_only
                else f"0:{int(received_at_wall * 1e6)}%{next(self._message_ids):016x}"
            )
            name = f"projects/{project}/messages/{message_id}"
            body = json.dumps({"name": name}).encode()
        elif isinstance(reply.body, bytes):
            body = reply.body
        else:
            body = json.dumps(reply.body).encode()
            if reply.http_status == 200:
                name = reply.body.get("name")

        self._record(
            FcmRequest(
                received_at=received_at,
                received_at_wall=received_at_wall,
                project=project,
                token=token,
                message=message,
                validate_only=validate_only,
                status=reply.http_status,
                error_code=reply.error_code,
                name=name,
                access_token=access_token,
            )
        )
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        headers = dict(_JSON_HEADERS) if not isinstance(reply.body, bytes) else {}
        headers.update(reply.headers)
        return web.Response(status=reply.http_status, body=body, headers=headers)

    def _authenticate(self, header: str | None, now: float) -> tuple[str | None, FcmReply | None]:
        if not header or not header.startswith("Bearer "):
            return None, FcmReply.error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request is missing required authentication credential. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
                extra_details=[_error_info("CREDENTIALS_MISSING")],
            )
        token = header[len("Bearer ") :].strip()
        with self._lock:
            grant = self._grants.get(token)
        if grant is None:
            return token, FcmReply.error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        if grant.expires_at <= now:
            # pyfcm (and ofnotify) refresh and re-send only on this exact reason.
            return token, FcmReply.error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                extra_details=[_error_info("ACCESS_TOKEN_EXPIRED")],
            )
        if not grant.scopes & {FCM_SCOPE, CLOUD_PLATFORM_SCOPE}:
            return token, FcmReply.error(
                403,
                "PERMISSION_DENIED",
                None,
                "Request had insufficient authentication scopes.",
                extra_details=[_error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT")],
            )
        return token, None

    def _parse_send_body(self, raw: bytes) -> tuple[dict[str, Any] | None, bool, FcmReply | None]:
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None, False, _bad_json("Invalid JSON payload received.")
        if not isinstance(document, dict):
            return None, False, _bad_json("Invalid JSON payload received. Expected an object.")
        message = document.get("message")
        validate_only = document.get("validate_only", False)
        if not isinstance(message, dict):
            return None, False, _bad_json("Invalid JSON payload received. 'message' is required.")
        if not isinstance(validate_only, bool):
            return (
                message,
                False,
                _bad_json("Invalid value at 'validate_only' (TYPE_BOOL)", "validate_only"),
            )
        if self.strict:
            return message, validate_only, _validate_message(document, message)
        return message, validate_only, None


def _validate_message(document: dict[str, Any], message: dict[str, Any]) -> FcmReply | None:
    for key in document:
        if key not in ("message", "validate_only"):
            return _bad_json(
                f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.', key
            )
    if sum(1 for key in _MESSAGE_TARGETS if message.get(key)) != 1:
        return FcmReply.error(
            400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Recipient of the message is not set."
        )
    data = message.get("data")
    if data is not None:
        if not isinstance(data, dict):
            return _bad_json(
                "Invalid value at 'message.data' (type.googleapis.com/"
                "google.firebase.fcm.v1.Message.DataEntry)",
                "message.data",
            )
        for index, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                # FCM's data map is string -> string; ints and bools are rejected outright.
                where = f"message.data[{index}].value"
                return _bad_json(
                    f"Invalid value at '{where}' (TYPE_STRING), {value!r} (key {key!r})", where
                )
    return None


def _bad_json(message: str, field_name: str | None = None) -> FcmReply:
    details = []
    if field_name is not None:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": field_name, "description": message}],
            }
        )
    return FcmReply.error(400, "INVALID_ARGUMENT", None, message, extra_details=details)


def _permission_denied(project: str) -> FcmReply:
    return FcmReply.error(
        403,
        "PERMISSION_DENIED",
        None,
        f"Permission 'cloudmessaging.messages.create' denied on resource "
        f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
        extra_details=[_error_info("IAM_PERMISSION_DENIED")],
    )


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": ERROR_INFO_TYPE,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {
            "service": "fcm.googleapis.com",
            "method": "google.firebase.fcm.v1.FcmService.SendMessage",
        },
    }


def _error_body(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _json_response(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), headers=_JSON_HEADERS)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _signature_ok(identity: _Identity, signed: bytes, signature: bytes) -> bool:
    try:
        identity.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# ---------------------------------------------------------------------- pyfcm helpers


class SingleShotFCMNotification(FCMNotification):
    """pyfcm posting exactly once.

    pyfcm's own ``send_request`` sleeps and re-posts for as long as answers carry a
    positive Retry-After, so a scripted 429 (or a 503 with Retry-After) would hang it.
    """

    def send_request(self, payload: Any = None, timeout: Any = None) -> requests.Response:
        return self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)


def pyfcm_client(
    fake: FakeFcm,
    service_account_file: str | os.PathLike[str] | None = None,
    *,
    single_shot: bool = False,
) -> FCMNotification:
    """pyfcm configured the way ofnotify configures it, pointed at ``fake``."""
    path = service_account_file or fake.service_account_path
    if path is None:
        raise ValueError("call fake.write_service_account() first or pass a file")
    cls = SingleShotFCMNotification if single_shot else FCMNotification
    client = cls(
        service_account_file=str(path),
        project_id=fake.project_id,
        adapter=HTTPAdapter(max_retries=Retry(total=0)),
    )
    client.FCM_END_POINT_BASE = fake.fcm_endpoint_base
    return client
