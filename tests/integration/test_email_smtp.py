"""The email channel against a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator, Iterator
from email import policy
from email.message import EmailMessage
from typing import Any, cast

import pytest
from pydantic import SecretStr

from component.config import EmailChannelConfig
from notifiers.base import MissedMessage, Notification, Outcome
from notifiers.email import EmailNotifier
from tests.support.ports import LOOPBACK, free_port
from tests.support.smtp_server import SelfSignedCert, SmtpServer, make_certificate

pytestmark = pytest.mark.integration

TO = "kim@example.com"
PASSWORD = "pa55-w0rd-secret"


def note(locale: str | None = None) -> Notification:
    return Notification(
        outbox_id=7,
        account="kim@example.org",
        target=TO,
        conversation="michael@example.org",
        message_count=3,
        messages=(
            MissedMessage("michael@example.org", "마이클", "안녕하세요"),
            MissedMessage("michael@example.org", "마이클", None, encrypted=True),
            MissedMessage("michael@example.org", "마이클", "내일 봐요"),
        ),
        recipient_name="김철수",
        locale=locale,
    )


async def mail(port: int, **overrides: Any) -> EmailNotifier:
    tls_context = overrides.pop("tls_context", None)
    values: dict[str, Any] = {
        "type": "email",
        "host": LOOPBACK,
        "port": port,
        "security": "none",
        "sender": "Chat <chat@example.com>",
        "timeout": 5,
    }
    values.update(overrides)
    return await EmailNotifier.create("mail", EmailChannelConfig(**values), tls_context=tls_context)


def received(server: SmtpServer, index: int = 0) -> EmailMessage:
    return cast(
        EmailMessage, email.message_from_bytes(server.messages[index].data, policy=policy.default)
    )


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer() as smtp:
        yield smtp


@pytest.fixture(scope="module")
def certificate() -> SelfSignedCert:
    return make_certificate()


async def test_delivered_once_as_multipart_with_a_korean_subject(server: SmtpServer) -> None:
    result = await (await mail(server.port)).send(note(locale="ko"))
    assert result.outcome is Outcome.DELIVERED
    assert len(server.messages) == 1
    mail_from, rcpt_tos, _ = server.messages[0]
    assert (mail_from, rcpt_tos) == ("chat@example.com", [TO])
    message = received(server)
    assert message["Subject"] == "마이클님의 새 메시지 3개"
    assert message["To"].addresses[0].display_name == "김철수"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "안녕하세요" in text.get_content() and "암호화된 메시지" in text.get_content()
    assert "내일 봐요" in html.get_content()
    assert server.tls_used == [False] and server.logins == [""]


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_451_is_retried_then_delivered(server: SmtpServer, stage: str) -> None:
    getattr(server, f"fail_{stage}")(451, "4.3.0 try later", times=1)
    notifier = await mail(server.port)
    first = await notifier.send(note())
    assert (first.outcome, first.reason) == (Outcome.RETRY, "451 4.3.0 try later")
    assert server.messages == []
    assert (await notifier.send(note())).outcome is Outcome.DELIVERED
    assert len(server.messages) == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_550_fails_with_the_code_in_the_reason(server: SmtpServer, stage: str) -> None:
    getattr(server, f"fail_{stage}")(550, "5.1.1 no such user", times=None)
    result = await (await mail(server.port)).send(note())
    assert (result.outcome, result.reason) == (Outcome.FAILED, "550 5.1.1 no such user")
    assert server.messages == []


async def test_echoed_address_is_masked(server: SmtpServer) -> None:
    server.fail_rcpt(550, f"5.1.1 <{TO}>: Recipient address rejected")
    result = await (await mail(server.port)).send(note())
    assert result.reason == "550 5.1.1 <k***@example.com>: Recipient address rejected"


async def test_refused_sender_is_classified_by_its_code(server: SmtpServer) -> None:
    server.fail_mail(421, "4.7.0 too many connections")
    result = await (await mail(server.port)).send(note())
    assert (result.outcome, result.reason) == (Outcome.RETRY, "421 4.7.0 too many connections")


async def test_unreachable_port_is_retried() -> None:
    result = await (await mail(free_port(), timeout=2)).send(note())
    assert result.outcome is Outcome.RETRY
    assert result.reason.startswith(("cannot connect", "network error"))


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """Accepts connections and never says a word (a hung server)."""
    clients: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.append(writer)

    silent = await asyncio.start_server(hold, LOOPBACK, 0)
    yield silent.sockets[0].getsockname()[1]
    for writer in clients:
        writer.close()
    silent.close()
    await silent.wait_closed()


async def test_a_silent_server_times_out_and_is_retried(silent_port: int) -> None:
    result = await (await mail(silent_port, timeout=0.5)).send(note())
    assert result.outcome is Outcome.RETRY and result.reason.startswith("timeout")


# -- TLS -----------------------------------------------------------------------------


async def test_starttls(certificate: SelfSignedCert) -> None:
    with SmtpServer(starttls=certificate, require_tls=True) as server:
        notifier = await mail(
            server.port, security="starttls", tls_context=certificate.client_context()
        )
        assert (await notifier.send(note())).outcome is Outcome.DELIVERED
        assert server.tls_used == [True]


async def test_starttls_checks_the_certificate(certificate: SelfSignedCert) -> None:
    with SmtpServer(starttls=certificate) as server:
        # The system trust store does not know the test certificate.
        result = await (await mail(server.port, security="starttls")).send(note())
        assert result.outcome is Outcome.RETRY
        assert server.messages == []


async def test_starttls_is_not_silently_skipped(server: SmtpServer) -> None:
    result = await (await mail(server.port, security="starttls")).send(note())
    assert result.outcome is Outcome.RETRY and "STARTTLS" in result.reason
    assert server.messages == []


async def test_security_none_never_upgrades(certificate: SelfSignedCert) -> None:
    # aiosmtplib's default (start_tls=None) would upgrade when offered, and fail here.
    with SmtpServer(starttls=certificate) as server:
        assert (await (await mail(server.port)).send(note())).outcome is Outcome.DELIVERED
        assert server.tls_used == [False]


async def test_implicit_tls(certificate: SelfSignedCert) -> None:
    with SmtpServer(implicit_tls=certificate) as server:
        notifier = await mail(server.port, security="tls", tls_context=certificate.client_context())
        assert (await notifier.send(note())).outcome is Outcome.DELIVERED
        assert server.tls_used == [True]


# -- AUTH ----------------------------------------------------------------------------


@pytest.fixture
def auth_server() -> Iterator[SmtpServer]:
    with SmtpServer(users={"chat": PASSWORD}) as smtp:
        yield smtp


async def test_login(auth_server: SmtpServer) -> None:
    notifier = await mail(auth_server.port, username="chat", password=SecretStr(PASSWORD))
    assert (await notifier.send(note())).outcome is Outcome.DELIVERED
    assert auth_server.logins == ["chat"]


async def test_wrong_password_is_retried_without_revealing_it(auth_server: SmtpServer) -> None:
    wrong = "wrong-" + PASSWORD
    notifier = await mail(auth_server.port, username="chat", password=SecretStr(wrong))
    result = await notifier.send(note())
    assert result.outcome is Outcome.RETRY
    assert result.reason.startswith("authentication failed: 535")
    assert wrong not in result.reason and PASSWORD not in result.reason
    assert auth_server.messages == []
    assert ("chat", False) in auth_server.auth_attempts
