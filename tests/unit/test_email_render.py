"""Email channel without a server: rendering, headers, the SMTP failure table, `send`
with only the `_deliver` seam replaced."""

from __future__ import annotations

import datetime as dt
import email
import logging
import ssl
from email import policy
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from pydantic import SecretStr

from component.config import EmailChannelConfig
from component.errors import ConfigError
from notifiers import create_notifier
from notifiers.base import MissedMessage, Notification, Outcome
from notifiers.email import (
    EXCEPTION_OUTCOMES,
    REPLY_CODE_OUTCOMES,
    EmailNotifier,
    classify,
    clean_line,
    outcome_for_code,
)

SENT = dt.datetime(2024, 5, 1, 14, 5, tzinfo=dt.UTC)
MICHAEL = "michael@example.com"
JENNY = "jenny@example.com"
TO = "kim@example.com"


def config(**overrides: Any) -> EmailChannelConfig:
    values: dict[str, Any] = {
        "type": "email",
        "host": "smtp.example.com",
        "sender": "Chat <chat@example.com>",
    }
    values.update(overrides)
    return EmailChannelConfig(**values)


def msg(
    sender: str = MICHAEL,
    name: str | None = "Michael",
    body: str | None = "hello",
    *,
    encrypted: bool = False,
) -> MissedMessage:
    return MissedMessage(sender, name, body, encrypted, SENT)


def note(*messages: MissedMessage, **fields: Any) -> Notification:
    values: dict[str, Any] = {
        "outbox_id": 42,
        "account": "kim@example.org",
        "target": TO,
        "conversation": MICHAEL,
        "message_count": len(messages) or 1,
        "messages": messages,
        "recipient_name": "Kim",
    }
    values.update(fields)
    return Notification(**values)


class Recorder(EmailNotifier):
    """The seam unit tests may replace: no network, just what would have been sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[EmailMessage, str]] = []
        self.raises: BaseException | None = None

    async def _deliver(self, message: EmailMessage, recipient: str) -> None:
        self.sent.append((message, recipient))
        if self.raises is not None:
            raise self.raises


def notifier(**overrides: Any) -> Recorder:
    return Recorder("mail", config(**overrides))


def parsed(message: EmailMessage) -> Message:
    """What a receiving MUA sees: parse the exact bytes that go on the wire."""
    return email.message_from_bytes(message.as_bytes(), policy=policy.default)


def parts(message: EmailMessage) -> tuple[str, str]:
    received = parsed(message)
    assert received.get_content_type() == "multipart/alternative"
    text = received.get_body(("plain",))
    html = received.get_body(("html",))
    assert text is not None and html is not None
    # policy.SMTP puts CRLF on the wire; compare with the template's line ends.
    return (
        text.get_content().replace("\r\n", "\n"),
        html.get_content().replace("\r\n", "\n"),
    )


# -- Subjects ------------------------------------------------------------------------


def senders(count: int) -> tuple[MissedMessage, ...]:
    names = ["Michael", "Jenny", "Tom", "Ana", "Bo"]
    return tuple(msg(f"{n.lower()}@example.com", n) for n in names[:count])


@pytest.mark.parametrize(
    "locale,messages,count,subject",
    [
        ("en", (msg(),), 1, "New message from Michael"),
        ("en", (msg(), msg(), msg()), 3, "3 new messages from Michael"),
        ("en", senders(2), 2, "New messages from Michael and Jenny"),
        ("en", senders(3), 3, "New messages from Michael, Jenny and Tom"),
        ("en", senders(5), 5, "New messages from Michael, Jenny and 3 others"),
        ("en", (), 1, "1 new message"),
        ("en", (), 4, "4 new messages"),
        ("ko", (msg(),), 1, "Michael님의 새 메시지"),
        ("ko", (msg(), msg(), msg()), 3, "Michael님의 새 메시지 3개"),
        ("ko", senders(2), 2, "Michael님, Jenny님의 새 메시지 2개"),
        ("ko", senders(5), 5, "Michael님, Jenny님 외 3명의 새 메시지 5개"),
        ("ko", (), 4, "새 메시지 4개"),
    ],
)
def test_subject(
    locale: str, messages: tuple[MissedMessage, ...], count: int, subject: str
) -> None:
    rendered = notifier().render(note(*messages, message_count=count, locale=locale))
    assert rendered.subject == subject


def test_many_senders_are_counted_beyond_the_listed_ones() -> None:
    crowd = tuple(msg(f"user{i}@example.com", f"User {i}") for i in range(25))
    rendered = notifier().render(note(*crowd))
    assert rendered.subject == "New messages from User 0, User 1 and 23 others"
    assert "User 19 <" in rendered.text and "User 20" not in rendered.text
    assert "... and 5 more messages." in rendered.text


def test_sender_without_name_shows_the_jid_local_part() -> None:
    rendered = notifier().render(note(msg("jenny@example.com/phone", None)))
    assert rendered.subject == "New message from jenny"


def test_summary_fields_alone_still_make_a_digest() -> None:
    # What the dispatcher fills today: sender/body/count, no `messages`.
    rendered = notifier().render(note(message_count=2, sender=MICHAEL, body="see you"))
    assert rendered.subject == "2 new messages from michael"
    assert "see you" in rendered.text


# -- Bodies --------------------------------------------------------------------------


def test_english_digest_text_and_html() -> None:
    n = note(msg(body="first"), msg(JENNY, "Jenny", "hi there"), msg(body="second\nline"))
    text, html = parts(notifier(app_url="https://chat.example.com/").build(n))
    assert text.startswith("Hi Kim,")
    assert "Michael <michael@example.com> - 2 messages" in text
    assert "Jenny <jenny@example.com> - 1 message\n" in text
    assert text.index("first") < text.index("second") < text.index("hi there")
    assert "    line" in text  # continuation lines stay under their bullet
    assert "[2024-05-01 14:05 UTC]" in text
    assert "Open the chat: https://chat.example.com/" in text
    assert '<html lang="en">' in html
    assert "second<br>\nline" in html
    assert 'href="https://chat.example.com/"' in html


def test_korean_digest_text_and_html() -> None:
    n = note(msg(), msg(), msg(), locale="ko")
    text, html = parts(notifier().build(n))
    assert text.startswith("Kim님, 안녕하세요.")
    assert "Michael <michael@example.com> - 메시지 3개" in text
    assert '<html lang="ko">' in html and "메시지 3개" in html


def test_long_digest_lists_the_latest_messages_and_counts_the_rest() -> None:
    n = note(*(msg(body=f"message {i}") for i in range(8)))
    rendered = notifier().render(n)
    assert "message 2" not in rendered.text and "message 7" in rendered.text
    assert "... and 3 more messages" in rendered.text


def test_html_escapes_names_and_bodies_but_text_does_not() -> None:
    n = note(msg(name="<script>alert(1)</script> & Co", body="<script>x()</script> Tom & Jerry"))
    text, html = parts(notifier().build(n))
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert "&lt;script&gt;x()&lt;/script&gt; Tom &amp; Jerry" in html
    assert "<script>x()</script> Tom & Jerry" in text
    assert "&amp;" not in text


@pytest.mark.parametrize(
    "locale,shown", [("en", "an encrypted message"), ("ko", "암호화된 메시지")]
)
def test_encrypted_messages_never_show_a_body(locale: str, shown: str) -> None:
    # Even if a body slipped through, an encrypted message is shown as such.
    n = note(msg(body="ciphertext?AwgBEiE", encrypted=True), locale=locale)
    text, html = parts(notifier().build(n))
    for part in (text, html):
        assert shown in part
        assert "ciphertext" not in part


@pytest.mark.parametrize("locale,count", [("en", "3 messages"), ("ko", "메시지 3개")])
def test_hidden_bodies_show_only_counts(locale: str, count: str) -> None:
    n = note(msg(body=None), msg(body=None), msg(body=None), locale=locale)
    text, html = parts(notifier().build(n))
    assert count in text and count in html
    assert "  * " not in text
    assert "#f0f3f6" not in html  # no message bubbles
    assert "..." not in text  # nothing listed, so nothing "more"


# -- Headers -------------------------------------------------------------------------


def test_headers_and_structure() -> None:
    message = notifier(app_url="https://chat.example.com/").build(note(msg()))
    received = parsed(message)
    assert received["From"] == "Chat <chat@example.com>"
    assert received["To"] == "Kim <kim@example.com>"
    assert received["Auto-Submitted"] == "auto-generated"
    assert received["X-Auto-Response-Suppress"] == "All"
    assert received["List-Unsubscribe"] == "<https://chat.example.com/>"
    assert received["Message-ID"].endswith("@example.com>")
    assert received["Date"].datetime is not None
    assert [p.get_content_type() for p in received.iter_parts()] == ["text/plain", "text/html"]


def test_no_list_unsubscribe_without_app_url() -> None:
    assert "List-Unsubscribe" not in parsed(notifier().build(note(msg())))


def test_korean_subject_is_rfc2047_encoded() -> None:
    raw = notifier().build(note(msg(), msg(), locale="ko")).as_bytes()
    subject_line = next(line for line in raw.split(b"\r\n") if line.startswith(b"Subject:"))
    assert subject_line.isascii() and b"=?utf-8?" in subject_line
    assert email.message_from_bytes(raw, policy=policy.default)["Subject"] == (
        "Michael님의 새 메시지 2개"
    )


def test_line_breaks_in_names_cannot_create_headers() -> None:
    evil = "Evil\r\nBcc: victim@example.net\r\n\r\nbody"
    n = note(msg(name=evil), recipient_name="Kim\nX-Injected: yes\u2028Cc: x@example.net")
    received = parsed(notifier().build(n))
    assert received["Bcc"] is None and received["Cc"] is None
    assert received["X-Injected"] is None
    assert received["Subject"] == "New message from Evil Bcc: victim@example.net body"
    assert [a.addr_spec for a in received["To"].addresses] == [TO]
    assert received["To"].addresses[0].display_name == "Kim X-Injected: yes Cc: x@example.net"


def test_line_breaks_from_an_operator_subject_template_collapse(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "subject.txt").write_text("Hello\r\nBcc: victim@example.net\n")
    received = parsed(notifier(templates=tmp_path).build(note(msg())))
    assert received["Bcc"] is None
    assert received["Subject"] == "Hello Bcc: victim@example.net"


def test_display_name_with_comma_and_quotes_stays_one_address() -> None:
    received = parsed(notifier().build(note(msg(), recipient_name='Kim, "The Boss" <x@y>')))
    addresses = received["To"].addresses
    assert len(addresses) == 1 and addresses[0].addr_spec == TO


def test_clean_line_keeps_emoji_joiners() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_line(f"a\x00b\tc\u202ed {family}") == f"a b c d {family}"


# -- Templates and locales -----------------------------------------------------------


def test_operator_template_overrides_one_file(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "subject.txt").write_text("[Chat] {{ message_count }} unread")
    rendered = notifier(templates=tmp_path).render(note(msg(), msg(), msg()))
    assert rendered.subject == "[Chat] 3 unread"
    assert rendered.text.startswith("Hi Kim,")  # the shipped body is still used


def test_operator_can_add_a_locale(tmp_path: Path) -> None:
    (tmp_path / "de").mkdir()
    for name, content in {
        "subject.txt": "Neue Nachrichten",
        "body.txt": "Hallo",
        "body.html": "<p>Hallo {{ recipient_name }}</p>",
    }.items():
        (tmp_path / "de" / name).write_text(content)
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "subject.txt").write_text("Nouveaux messages")  # incomplete
    mail = notifier(templates=tmp_path)
    assert mail.render(note(msg(), locale="de-AT")).subject == "Neue Nachrichten"
    assert mail.render(note(msg(), locale="fr")).subject == "New message from Michael"


@pytest.mark.parametrize(
    "locale,default,expected",
    [
        (None, "en", "New message from Michael"),
        (None, "ko", "Michael님의 새 메시지"),
        ("ko-KR", "en", "Michael님의 새 메시지"),
        ("ko_kr", "en", "Michael님의 새 메시지"),
        ("xx", "ko", "Michael님의 새 메시지"),
        ("../../etc", "en", "New message from Michael"),
    ],
)
def test_locale_choice(locale: str | None, default: str, expected: str) -> None:
    rendered = notifier(default_locale=default).render(note(msg(), locale=locale))
    assert rendered.subject == expected


async def test_create_rejects_a_broken_operator_template(tmp_path: Path) -> None:
    (tmp_path / "ko").mkdir()
    (tmp_path / "ko" / "body.html").write_text("{% if %}")
    with pytest.raises(ConfigError) as caught:
        await EmailNotifier.create("mail", config(templates=tmp_path))
    assert "channels.mail.templates" in str(caught.value)
    assert "ko/body.html line 1" in str(caught.value)


@pytest.mark.parametrize(
    "overrides,path",
    [
        ({"templates": Path("/nonexistent/templates")}, "channels.mail.templates"),
        ({"app_url": "javascript:alert(1)"}, "channels.mail.app_url"),
        ({"app_url": "https://x.example/ y"}, "channels.mail.app_url"),
        ({"password": "s3cret"}, "channels.mail.password"),
    ],
)
async def test_create_rejects_bad_settings(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await EmailNotifier.create("mail", config(**overrides))
    assert path in str(caught.value)


async def test_factory_builds_the_email_channel() -> None:
    built = await create_notifier("mail", config())
    assert isinstance(built, EmailNotifier) and built.kind == "email"
    await built.close()


# -- Failure classification ----------------------------------------------------------


@pytest.mark.parametrize(
    "code,outcome",
    [
        (421, Outcome.RETRY),
        (450, Outcome.RETRY),
        (451, Outcome.RETRY),
        (452, Outcome.RETRY),
        (550, Outcome.FAILED),
        (552, Outcome.RETRY),  # RFC 5321 §4.5.3.1.10
        (553, Outcome.FAILED),
        (554, Outcome.FAILED),
    ],
)
@pytest.mark.parametrize("stage", ["RCPT", "MAIL", "DATA"])
def test_reply_codes(code: int, outcome: Outcome, stage: str) -> None:
    text = f"{code // 100}.1.1 <kim@example.com>: no such user"
    exc: Exception
    if stage == "RCPT":
        exc = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(code, text, TO)])
    elif stage == "MAIL":
        exc = aiosmtplib.SMTPSenderRefused(code, text, "chat@example.com")
    else:
        exc = aiosmtplib.SMTPResponseException(code, text)
    result = classify(exc, (TO,))
    assert result.outcome is outcome
    assert result.reason == f"{code} {code // 100}.1.1 <k***@example.com>: no such user"


@pytest.mark.parametrize("code,outcome", sorted(REPLY_CODE_OUTCOMES.items()))
def test_every_table_entry_is_a_4xx_or_5xx_code(code: int, outcome: Outcome) -> None:
    assert 400 <= code < 600 and outcome_for_code(code) is outcome


@pytest.mark.parametrize(
    "code,outcome", [(455, Outcome.RETRY), (557, Outcome.FAILED), (-1, Outcome.RETRY)]
)
def test_codes_outside_the_table_follow_their_class(code: int, outcome: Outcome) -> None:
    assert outcome_for_code(code) is outcome


@pytest.mark.parametrize(
    "exc,outcome,label",
    [
        (
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"),
            Outcome.RETRY,
            "authentication failed: 535",
        ),
        (
            aiosmtplib.SMTPConnectError("Error connecting to smtp on port 587"),
            Outcome.RETRY,
            "cannot connect",
        ),
        (aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"), Outcome.RETRY, "timeout"),
        (aiosmtplib.SMTPReadTimeoutError("Timed out waiting"), Outcome.RETRY, "timeout"),
        (aiosmtplib.SMTPTimeoutError("Timed out"), Outcome.RETRY, "timeout"),
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), Outcome.RETRY, "disconnected"),
        (aiosmtplib.SMTPConnectResponseError(421, "busy"), Outcome.RETRY, "421 busy"),
        (ConnectionRefusedError(111, "Connection refused"), Outcome.RETRY, "network error"),
        (ssl.SSLCertVerificationError("certificate verify failed"), Outcome.RETRY, "network error"),
        (TimeoutError(), Outcome.RETRY, "timeout"),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported"), Outcome.FAILED, "not supported"),
        (aiosmtplib.SMTPException("STARTTLS extension not supported"), Outcome.RETRY, "smtp error"),
        (ValueError("bug"), Outcome.RETRY, "unexpected ValueError"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_exceptions(exc: BaseException, outcome: Outcome, label: str) -> None:
    result = classify(exc)
    assert result.outcome is outcome
    assert result.reason.startswith(label)


def test_exception_table_is_ordered_most_specific_first() -> None:
    kinds = [kind for kind, _, _ in EXCEPTION_OUTCOMES]
    for i, earlier in enumerate(kinds):
        for later in kinds[i + 1 :]:
            assert not issubclass(later, earlier), (
                f"{later.__name__} is shadowed by {earlier.__name__}"
            )


def test_reasons_are_short_and_hide_secrets() -> None:
    exc = aiosmtplib.SMTPAuthenticationError(
        535, "bad password hunter2 for KIM@example.com " + "x" * 500
    )
    result = classify(exc, (TO,), ("hunter2",))
    assert "hunter2" not in result.reason
    assert "KIM@example.com" not in result.reason and "k***@example.com" in result.reason
    assert len(result.reason) <= 200 + len("authentication failed: ")


# -- send() through the seam ---------------------------------------------------------


async def test_send_delivers_through_the_seam() -> None:
    mail = notifier()
    result = await mail.send(note(msg()))
    assert result.outcome is Outcome.DELIVERED
    [(message, recipient)] = mail.sent
    assert recipient == TO and message["To"].addresses[0].addr_spec == TO


@pytest.mark.parametrize("target", ["", "   "])
async def test_no_address_fails_without_connecting(target: str) -> None:
    mail = notifier()
    result = await mail.send(note(msg(), target=target))
    assert (result.outcome, result.reason) == (Outcome.FAILED, "no email address")
    assert mail.sent == []


@pytest.mark.parametrize(
    "target,outcome",
    [
        ("kim@example.com\r\nBcc: x@example.net", Outcome.TARGET_INVALID),
        ("not-an-address", Outcome.TARGET_INVALID),
        ("two@example.com, three@example.com", Outcome.TARGET_INVALID),
        ("kim@", Outcome.TARGET_INVALID),
        ("김@example.com", Outcome.FAILED),  # valid with SMTPUTF8, which we do not speak
    ],
)
async def test_unusable_addresses(target: str, outcome: Outcome) -> None:
    mail = notifier()
    result = await mail.send(note(msg(), target=target))
    assert result.outcome is outcome
    assert mail.sent == []


async def test_international_domain_is_sent_as_punycode() -> None:
    mail = notifier()
    assert (await mail.send(note(msg(), target="kim@bücher.example"))).outcome is Outcome.DELIVERED
    assert mail.sent[0][1] == "kim@xn--bcher-kva.example"


async def test_refusal_is_classified_and_logged_masked(caplog: pytest.LogCaptureFixture) -> None:
    mail = notifier(username="chat", password=SecretStr("hunter2"))
    mail.raises = aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 <kim@example.com> unknown", TO)]
    )
    with caplog.at_level(logging.DEBUG, logger="notifiers.email"):
        result = await mail.send(note(msg()))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "550 5.1.1 <k***@example.com> unknown"
    assert "outbox=42" in caplog.text and "k***@example.com" in caplog.text
    assert TO not in caplog.text and "hunter2" not in caplog.text


async def test_broken_template_at_run_time_is_retried(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "body.txt").write_text("{{ no_such_name }}")  # StrictUndefined
    mail = notifier(templates=tmp_path)
    result = await mail.send(note(msg()))
    assert result.outcome is Outcome.RETRY and result.reason.startswith("template error")
    assert mail.sent == []


# -- _deliver: what it asks aiosmtplib for ---------------------------------------------


@pytest.fixture
def smtp_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    refused: dict[str, aiosmtplib.SMTPResponse] = {}

    async def fake_send(message: EmailMessage, **kwargs: Any) -> tuple[dict[str, Any], str]:
        calls.append(kwargs)
        return dict(refused), "2.0.0 queued"

    monkeypatch.setattr("notifiers.email.aiosmtplib.send", fake_send)
    calls.append({"refused": refused})  # lets a test script a partial refusal
    return calls


@pytest.mark.parametrize(
    "security,use_tls,start_tls",
    [("starttls", False, True), ("tls", True, False), ("none", False, False)],
)
async def test_security_settings(
    smtp_calls: list[dict[str, Any]], security: str, use_tls: bool, start_tls: bool
) -> None:
    mail = EmailNotifier("mail", config(security=security, port=2525, timeout=7))
    assert (await mail.send(note(msg()))).outcome is Outcome.DELIVERED
    call = smtp_calls[1]
    assert (call["use_tls"], call["start_tls"]) == (use_tls, start_tls)
    assert (call["hostname"], call["port"], call["timeout"]) == ("smtp.example.com", 2525, 7)
    assert call["sender"] == "chat@example.com" and call["recipients"] == [TO]
    assert (call["tls_context"] is None) == (security == "none")
    assert call["username"] is None and call["password"] is None


async def test_login_only_with_a_username(smtp_calls: list[dict[str, Any]]) -> None:
    mail = EmailNotifier("mail", config(username="chat", password=SecretStr("hunter2")))
    await mail.send(note(msg()))
    assert (smtp_calls[1]["username"], smtp_calls[1]["password"]) == ("chat", "hunter2")


async def test_a_partly_refused_recipient_list_is_a_refusal(
    smtp_calls: list[dict[str, Any]],
) -> None:
    # aiosmtplib raises only when every recipient is refused; otherwise it returns them.
    smtp_calls[0]["refused"][TO] = aiosmtplib.SMTPResponse(450, "4.2.0 mailbox busy")
    result = await EmailNotifier("mail", config()).send(note(msg()))
    assert (result.outcome, result.reason) == (Outcome.RETRY, "450 4.2.0 mailbox busy")
