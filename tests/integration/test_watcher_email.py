"""Issue 3 end to end: Openfire's tables in real PostgreSQL, real SMTP, real ofnotify.

An XMPP server (Prosody) is running because the service needs its component stream;
Openfire's side is played by writing its tables exactly as Openfire does.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from component.config import load_config
from tests.support.ofnotify_process import OfnotifyProcess
from tests.support.ofnotify_service import (
    delivery_log,
    running_service,
    wait_for,
)
from tests.support.openfire_db import displayed_stanza
from tests.support.push_client import offline_with_push
from tests.support.smtp_server import SmtpServer
from tests.support.stack import DOMAIN, Stack
from tests.support.xmpp_client import connect_client

pytestmark = pytest.mark.integration


JENNY = f"jenny@{DOMAIN}"


def mails_to(smtp: SmtpServer, address: str) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(m.data, policy=email.policy.default)  # type: ignore[misc]
        for m in smtp.messages
        if address in m.rcpt_tos
    ]


def text_part(message: email.message.EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content()


async def watcher_caught_up(service: Any) -> None:
    await wait_for(lambda: service.watcher and service.watcher.last_success, what="a watcher poll")


async def test_three_messages_one_digest(stack: Stack) -> None:
    config = stack.configure()
    async with running_service(config) as service:
        await watcher_caught_up(service)
        for i in range(3):
            stack.openfire_db.store_chat("jenny", "michael", f"message <{i}> & more", f"m{i}")
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=15, what="the digest"
        )
        await asyncio.sleep(1.5)  # nothing else may follow
    [mail] = mails_to(stack.smtp, "jenny@mail.example")
    assert mail["Subject"] == "3 new messages from Michael"
    text = text_part(mail)
    for i in range(3):
        assert f"message <{i}> & more" in text
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "message &lt;0&gt; &amp; more" in html
    log = await delivery_log(load_config(config))
    assert [e.status for e in log if e.channel == "mail"] == ["delivered"]


async def test_delivered_before_the_delay_sends_nothing(stack: Stack) -> None:
    config = stack.configure(delay="3s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_chat("jenny", "michael", "hello", "m1")
        await wait_for(lambda: _pending(config), what="a pending digest")
        stack.openfire_db.deliver_all("jenny")  # jenny came online
        await wait_for(lambda: _logged(config, "cancelled"), what="the cancellation")
        await asyncio.sleep(3.5)
    assert mails_to(stack.smtp, "jenny@mail.example") == []
    await _cancelled_before_due(config)


async def _cancelled_before_due(config: Path) -> None:
    """Cancelled when the delivery/marker was seen, not at send time."""
    [entry] = [e for e in await delivery_log(load_config(config)) if e.status == "cancelled"]
    assert entry.error == "messages were read or delivered before sending"


async def test_displayed_marker_cancels(stack: Stack) -> None:
    config = stack.configure(delay="3s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_chat("jenny", "michael", "one", "m1")
        stack.openfire_db.store_chat("jenny", "michael", "two", "m2")
        await wait_for(lambda: _pending(config), what="a pending digest")
        # Jenny read both on another client; her marker waits for offline michael.
        stack.openfire_db.store_offline(
            "michael", displayed_stanza(f"michael@{DOMAIN}", f"{JENNY}/phone", "m2")
        )
        await wait_for(lambda: _logged(config, "cancelled"), what="the cancellation")
        await asyncio.sleep(3.5)
    assert mails_to(stack.smtp, "jenny@mail.example") == []
    await _cancelled_before_due(config)


async def test_malformed_row_is_skipped_others_notified(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    config = stack.configure()
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_offline(
            "jenny", "<message type='chat' from='michael@example.test'><body>trunc"
        )
        stack.openfire_db.store_chat("jenny", "michael", "fine", "m2")
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=15, what="the digest"
        )
    [mail] = mails_to(stack.smtp, "jenny@mail.example")
    assert "fine" in text_part(mail)
    assert mail["Subject"] == "New message from Michael"
    skipped = [r for r in caplog.records if "skipping ofOffline row" in r.getMessage()]
    assert len(skipped) == 1 and "jenny" in skipped[0].getMessage()


async def test_smtp_451_is_retried_550_fails_visibly(stack: Stack) -> None:
    stack.openfire_db.add_user("gone", "Gone", "gone@mail.example")
    config = stack.configure(
        delivery={"max_attempts": 5, "backoff_initial": "0.3s", "backoff_max": "1s"},
    )
    stack.smtp.fail_rcpt(451, "4.3.0 try later", times=2)
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_chat("jenny", "michael", "hi", "m1")
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=20, what="the retried mail"
        )
        stack.smtp.fail_rcpt(550, "5.1.1 no such user", times=None)
        stack.openfire_db.store_chat("gone", "michael", "hi", "m2")
        await wait_for(lambda: _logged(config, "failed"), timeout=15, what="the 550")
    assert len(mails_to(stack.smtp, "jenny@mail.example")) == 1
    log = [e for e in await delivery_log(load_config(config)) if e.channel == "mail"]
    jenny = [e.status for e in log if e.account == JENNY]
    assert jenny == ["retry", "retry", "delivered"]
    [failed] = [e for e in log if e.status == "failed"]
    assert failed.account == f"gone@{DOMAIN}" and "550" in (failed.error or "")


async def test_no_address_is_a_logged_skip(stack: Stack) -> None:
    stack.openfire_db.add_user("noemail", "No Email", None)
    config = stack.configure(delay="0s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_chat("noemail", "michael", "hi", "m1")
        await wait_for(lambda: _logged(config, "skipped"), what="the skip")
    [entry] = [e for e in await delivery_log(load_config(config)) if e.status == "skipped"]
    assert "no email address" in (entry.error or "")
    assert stack.smtp.messages == []


async def test_korean_locale_and_address_override(stack: Stack) -> None:
    config = stack.configure(
        delay="0s",
        accounts={JENNY: {"email": "jenny@elsewhere.example", "locale": "ko"}},
    )
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_chat("jenny", "soyeon", "안녕하세요", "k1")
        stack.openfire_db.store_chat("jenny", "soyeon", "잘 지내요?", "k2")
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@elsewhere.example"), timeout=15, what="the mail"
        )
    [mail] = mails_to(stack.smtp, "jenny@elsewhere.example")
    assert mail["Subject"] == "소연님의 새 메시지 2개"
    assert "안녕하세요" in text_part(mail)
    assert mails_to(stack.smtp, "jenny@mail.example") == []


async def test_one_push_when_watcher_and_xep0357_both_see_it(stack: Stack) -> None:
    stack.prosody.register("jenny", "pw")
    stack.prosody.register("michael", "pw")
    config = stack.configure(
        rules=[{"event": "offline_message", "channel": "phone"}],
    )
    async with running_service(config) as service:
        await watcher_caught_up(service)
        await offline_with_push(stack.prosody, "jenny", "tok-jenny")
        stack.openfire_db.user_logged_out("jenny")
        michael = await connect_client(stack.prosody, "michael", "pw")
        await michael.send_chat(JENNY, "one message")  # the server publishes (XEP-0357)...
        stack.openfire_db.store_chat("jenny", "michael", "one message", "x1")  # ...and stores it
        await stack.fake_fcm.wait_for_requests(1, timeout=10)
        await wait_for(lambda: _logged(config, "cancelled"), timeout=10, what="the duplicate")
        await asyncio.sleep(1.0)
        assert len(stack.fake_fcm.requests) == 1
        await michael.go_offline()
    [cancelled] = [e for e in await delivery_log(load_config(config)) if e.status == "cancelled"]
    assert "already pushed" in (cancelled.error or "")


async def test_killed_and_restarted_still_one_email(stack: Stack) -> None:
    config = stack.configure(delay="2s")
    process = OfnotifyProcess(config, stack.tmp_path / "ofnotify.log")
    process.start()
    try:
        await wait_for(lambda: "watcher starts fresh" in process.log(), what="the watcher start")
        stack.openfire_db.store_chat("jenny", "michael", "before the kill", "b1")
        await wait_for(lambda: _pending(config), what="a pending digest")
        process.kill()
        stack.openfire_db.store_chat("jenny", "michael", "while it was down", "b2")
        process.start()
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=20, what="the digest"
        )
        await asyncio.sleep(2.5)
        assert process.terminate() == 0
    finally:
        process.kill()
    [mail] = mails_to(stack.smtp, "jenny@mail.example")
    text = text_part(mail)
    assert "before the kill" in text and "while it was down" in text


async def _logged(config: Path, status: str) -> bool:
    return any(e.status == status for e in await delivery_log(load_config(config)))


async def _pending(config: Path) -> bool:
    from sqlalchemy import func, select

    from component.store import OutboxItem, make_engine

    engine = make_engine(load_config(config).storage.url)
    try:
        async with engine.connect() as conn:
            stmt = (
                select(func.count()).select_from(OutboxItem).where(OutboxItem.status == "pending")
            )
            return bool((await conn.execute(stmt)).scalar_one())
    finally:
        await engine.dispose()


async def test_hostile_names_and_bodies_cannot_inject(stack: Stack) -> None:
    stack.openfire_db.add_user(
        "mallory", "Mal\r\nBcc: victim@evil.example\r\nX-Evil: 1 <b>bold</b>", None
    )
    config = stack.configure(delay="0s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.store_chat(
            "jenny", "mallory", "<script>alert(1)</script>\r\nSubject: hi", "h1"
        )
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=15, what="the mail"
        )
    [received] = [m for m in stack.smtp.messages if "jenny@mail.example" in m.rcpt_tos]
    assert received.rcpt_tos == ["jenny@mail.example"]  # no smuggled recipient
    header_lines = received.data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    names = {line.split(":", 1)[0].lower() for line in header_lines if not line[:1].isspace()}
    assert "bcc" not in names and "x-evil" not in names  # CR/LF collapsed, not obeyed
    [mail] = mails_to(stack.smtp, "jenny@mail.example")
    assert "\n" not in str(mail["Subject"]) and "Mal Bcc" in str(mail["Subject"])
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>bold</b>" not in html
    assert mail["Bcc"] is None
