"""Email digests over SMTP (aiosmtplib).

One notification becomes one multipart/alternative mail (text/plain + text/html)
listing the missed messages grouped by sender. Wording lives in Jinja2 templates,
``templates/email/{locale}/{subject.txt,body.txt,body.html}``; an operator directory
(`templates:` in the channel config) with the same layout overrides them file by file.

Every send opens its own SMTP connection and hands the message over exactly once;
retries belong to the dispatcher. `_deliver` is the only I/O: unit tests replace it.
What the server answers is mapped to an outcome by the tables below.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import ssl
import unicodedata
from dataclasses import dataclass, fields
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2
from markupsafe import Markup, escape

from component.errors import ConfigError, ConfigProblem
from component.redact import mask_email

from .base import MissedMessage, Notification, Notifier, Outcome, SendResult

log = logging.getLogger(__name__)

TEMPLATE_NAMES = ("subject.txt", "body.txt", "body.html")
SHIPPED_LOCALES = ("en", "ko")

# Digests stay readable on a phone and far below any server's size limit.
MAX_LISTED_PER_SENDER = 5  # the latest ones; older ones are only counted
MAX_SENDERS = 20
MAX_BODY_CHARS = 500
MAX_NAME_CHARS = 64
MAX_SUBJECT_CHARS = 150
MAX_REASON_CHARS = 200
# The dispatcher may run hundreds of sends at once; mail servers throttle or reject
# clients that open that many connections.
MAX_CONNECTIONS = 8

# SMTP reply codes whose meaning the reply class alone does not capture.
# RFC 5321 §4.2.1: 4yz "Transient Negative Completion" (retry), 5yz "Permanent
# Negative Completion" (do not repeat the same request); §4.2.3 lists the codes.
REPLY_CODE_OUTCOMES: dict[int, Outcome] = {
    421: Outcome.RETRY,  # service not available, closing transmission channel
    450: Outcome.RETRY,  # mailbox unavailable (busy, greylisting)
    451: Outcome.RETRY,  # local error in processing
    452: Outcome.RETRY,  # insufficient system storage
    # Authentication required / credentials rejected (RFC 4954 §6): the operator's
    # configuration is wrong and will be fixed; the dispatcher bounds the attempts.
    530: Outcome.RETRY,
    535: Outcome.RETRY,
    # §4.5.3.1.10: a 552 in reply to RCPT SHOULD be treated as temporary; on DATA it
    # is "mailbox full" (RFC 3463 X.2.2), which also clears up.
    552: Outcome.RETRY,
    # Mailbox unavailable / not local / name not allowed / transaction failed. One
    # 55x does not prove the address dead (policy blocks and typos in the server's
    # config look the same), so the address stays enabled: only this mail fails.
    550: Outcome.FAILED,
    551: Outcome.FAILED,
    553: Outcome.FAILED,
    554: Outcome.FAILED,
}
REPLY_CLASS_OUTCOMES: dict[int, Outcome] = {4: Outcome.RETRY, 5: Outcome.FAILED}

# aiosmtplib exceptions, most specific first (the first isinstance match wins).
# None: the server's reply code decides through the tables above, and the reason is
# that reply ("550 5.1.1 no such user"); otherwise the reason starts with the label.
# https://aiosmtplib.readthedocs.io/en/stable/reference.html#exceptions
EXCEPTION_OUTCOMES: tuple[tuple[type[BaseException], Outcome | None, str], ...] = (
    (aiosmtplib.SMTPAuthenticationError, Outcome.RETRY, "authentication failed"),
    (aiosmtplib.SMTPRecipientsRefused, None, "recipient refused"),
    (aiosmtplib.SMTPResponseException, None, "server refused"),
    # SMTPUTF8 needed but not offered: this mail cannot go through this server.
    (aiosmtplib.SMTPNotSupported, Outcome.FAILED, "not supported by the server"),
    (aiosmtplib.SMTPTimeoutError, Outcome.RETRY, "timeout"),  # incl. SMTPConnectTimeoutError
    (aiosmtplib.SMTPConnectError, Outcome.RETRY, "cannot connect"),
    (aiosmtplib.SMTPServerDisconnected, Outcome.RETRY, "disconnected"),
    (TimeoutError, Outcome.RETRY, "timeout"),
    (OSError, Outcome.RETRY, "network error"),  # refused connections, TLS failures
    # STARTTLS or AUTH not offered: a configuration problem an operator fixes.
    (aiosmtplib.SMTPException, Outcome.RETRY, "smtp error"),
)

# Characters that could end a header line or spoof its text; ZWJ and friends stay
# (emoji sequences need them).
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")
_LOCALE = re.compile(r"^[a-z]{2,3}$")


def clean_line(value: str, limit: int | None = None) -> str:
    """One header-safe line: control characters and line breaks collapse to spaces."""
    text = _SPACES.sub(" ", _UNSAFE_CHARS.sub(" ", unicodedata.normalize("NFC", value))).strip()
    return _truncate(text, limit) if limit else text


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def display_name(jid: str, name: str | None) -> str:
    """The sender as people know them: their nickname, else the JID's local part."""
    shown = clean_line(name or "", MAX_NAME_CHARS)
    if not shown:
        bare = jid.split("/", 1)[0]
        shown = clean_line(bare.split("@", 1)[0] if "@" in bare else bare, MAX_NAME_CHARS)
    return shown or "?"


# -- What the templates get ----------------------------------------------------------


@dataclass(frozen=True)
class DigestEntry:
    body: str | None  # None exactly when encrypted
    encrypted: bool
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class SenderDigest:
    jid: str
    name: str
    count: int
    # The latest few messages there is something to show for (a body, or the fact that
    # it was encrypted), oldest first. Messages whose body privacy hides are only counted.
    entries: tuple[DigestEntry, ...]
    unlisted: int  # count - len(entries)


@dataclass(frozen=True)
class Digest:
    """The typed contract between this module and every template.

    Each field is a top-level template name; body templates also get `subject`.
    """

    locale: str
    account: str
    recipient_name: str | None
    message_count: int
    unread_count: int | None
    senders: tuple[SenderDigest, ...]  # in order of first message, at most MAX_SENDERS
    sender_count: int  # all of them, listed or not
    unattributed: int  # messages counted whose sender is not listed
    app_url: str | None


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def _entry(message: MissedMessage) -> DigestEntry | None:
    if message.encrypted:  # never a body, even if one was passed along
        return DigestEntry(None, True, message.sent_at)
    if message.body is None or not message.body.strip():
        return None
    body = message.body.replace("\r\n", "\n").replace("\r", "\n").strip()
    return DigestEntry(_truncate(body, MAX_BODY_CHARS), False, message.sent_at)


def build_digest(notification: Notification, locale: str, app_url: str | None) -> Digest:
    messages = notification.messages
    if not messages and notification.sender:
        # A channel fed only the summary fields (sender/body/count) still gets a digest.
        first = MissedMessage(notification.sender, body=notification.body)
        rest = max(0, min(notification.message_count, 50) - 1)
        messages = (first, *(MissedMessage(notification.sender) for _ in range(rest)))
    groups: dict[str, list[MissedMessage]] = {}
    for message in messages:
        groups.setdefault(message.sender, []).append(message)
    senders = []
    for jid, group in list(groups.items())[:MAX_SENDERS]:
        name = next((m.sender_name for m in group if m.sender_name), None)
        visible = [e for e in map(_entry, group) if e is not None][-MAX_LISTED_PER_SENDER:]
        senders.append(
            SenderDigest(
                jid=jid,
                name=display_name(jid, name),
                count=len(group),
                entries=tuple(visible),
                unlisted=len(group) - len(visible),
            )
        )
    total = max(notification.message_count, len(messages))
    return Digest(
        locale=locale,
        account=notification.account,
        recipient_name=clean_line(notification.recipient_name, MAX_NAME_CHARS)
        if notification.recipient_name
        else None,
        message_count=total,
        unread_count=notification.unread_count,
        senders=tuple(senders),
        sender_count=len(groups),
        unattributed=total - sum(s.count for s in senders),
        app_url=app_url,
    )


# -- Templates -----------------------------------------------------------------------


def _utc_time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:  # the outbox stores naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _nl2br(value: str) -> Markup:
    return Markup("<br>\n").join(escape(line) for line in str(value).split("\n"))


class EmailRenderer:
    """Jinja2 templates: the operator's directory first, then the shipped ones."""

    def __init__(self, override_dir: Path | None, default_locale: str) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        # PackageLoader reads through importlib, so templates work from a wheel too.
        loaders.append(jinja2.PackageLoader("notifiers", "templates/email"))
        self._env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            # Only HTML is escaped: the text part and the subject are not markup.
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
            undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # no file checks on the event loop once loaded
        )
        self._env.filters["utc_time"] = _utc_time
        self._env.filters["nl2br"] = _nl2br
        self.default_locale = default_locale
        self._known: dict[str, bool] = {}

    def check(self) -> list[str]:
        """Load every shipped locale now; return what is broken (for the startup error)."""
        problems = []
        for locale in sorted({*SHIPPED_LOCALES, self.default_locale}):
            for name in TEMPLATE_NAMES:
                try:
                    self._env.get_template(f"{locale}/{name}")
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(f"{locale}/{name} line {exc.lineno}: {exc.message}")
                except jinja2.TemplateNotFound:
                    problems.append(f"{locale}/{name}: not found")
        return problems

    def locale_for(self, wanted: str | None) -> str:
        """`ko-KR` → `ko`; anything without a full template set → the default."""
        if not wanted:
            return self.default_locale
        locale = re.split(r"[-_]", wanted.strip().lower(), maxsplit=1)[0]
        if not _LOCALE.match(locale):
            return self.default_locale
        if locale not in self._known:
            try:
                for name in TEMPLATE_NAMES:
                    self._env.get_template(f"{locale}/{name}")
                self._known[locale] = True
            except jinja2.TemplateError:
                self._known[locale] = False
        return locale if self._known[locale] else self.default_locale

    def render(self, digest: Digest) -> RenderedEmail:
        context: dict[str, Any] = {f.name: getattr(digest, f.name) for f in fields(digest)}

        def render(name: str) -> str:
            return self._env.get_template(f"{digest.locale}/{name}").render(context)

        context["subject"] = subject = clean_line(render("subject.txt"), MAX_SUBJECT_CHARS)
        return RenderedEmail(subject, render("body.txt").strip() + "\n", render("body.html"))


# -- The message ---------------------------------------------------------------------


class BadAddress(ValueError):
    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


def recipient_address(address: str, name: str | None) -> Address:
    """The To address, or BadAddress carrying what to tell the dispatcher."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or _UNSAFE_CHARS.search(address) or " " in address:
        raise BadAddress(SendResult.target_invalid("malformed email address"))
    if not local.isascii():
        # Needs SMTPUTF8 (RFC 6531), which this channel does not speak; the address
        # itself may be fine.
        raise BadAddress(SendResult.failed("non-ASCII local part needs SMTPUTF8"))
    try:
        # The email package would wrap a non-ASCII domain in an encoded-word.
        domain = domain.encode("idna").decode("ascii")
        shown = clean_line(name or "", MAX_NAME_CHARS)
        return Address(display_name=shown, addr_spec=f"{local}@{domain}")
    except (ValueError, IndexError, UnicodeError):
        raise BadAddress(SendResult.target_invalid("malformed email address")) from None


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: Address,
    app_url: str | None,
    message_id: str | None = None,
) -> EmailMessage:
    # policy.SMTP: CRLF line ends and RFC 2047 encoding of non-ASCII header text.
    message = EmailMessage(policy=policy.SMTP)
    message["Subject"] = clean_line(rendered.subject)
    message["From"] = sender
    message["To"] = to
    message["Date"] = dt.datetime.now(dt.UTC)
    message["Message-ID"] = message_id or make_msgid("ofnotify", domain=_domain_of(sender))
    # RFC 3834 §5: vacation responders must not answer; the header Exchange honours.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    if app_url:
        message["List-Unsubscribe"] = f"<{app_url}>"  # RFC 2369: where to turn it off
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def stable_message_id(notification: Notification, sender: str) -> str:
    """The same notification keeps its Message-ID across retries and restarts, so a
    duplicate after a crash (at-least-once) is recognisable by mail clients."""
    salt = hashlib.sha256(f"{notification.account}:{notification.outbox_id}".encode()).hexdigest()
    return f"<ofnotify.{notification.outbox_id}.{salt[:12]}@{_domain_of(sender)}>"


def _domain_of(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"


# -- Failure classification ----------------------------------------------------------


def outcome_for_code(code: int) -> Outcome:
    if code in REPLY_CODE_OUTCOMES:
        return REPLY_CODE_OUTCOMES[code]
    # Anything else (aiosmtplib's -1 for a garbled reply) may be a glitch: retry.
    return REPLY_CLASS_OUTCOMES.get(code // 100, Outcome.RETRY)


def _scrub(text: str, addresses: tuple[str, ...], secrets: tuple[str, ...]) -> str:
    """Servers echo the address ("<kim@example.com>: no such user"): mask it."""
    text = clean_line(text)
    for address in addresses:
        if address:
            text = re.sub(re.escape(address), mask_email(address), text, flags=re.IGNORECASE)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _truncate(text, MAX_REASON_CHARS)


def classify(
    exc: BaseException, addresses: tuple[str, ...] = (), secrets: tuple[str, ...] = ()
) -> SendResult:
    """Map a failed send to an outcome; the reason is safe to log and store.

    `addresses` are masked and `secrets` blanked wherever the server's text echoes them.
    """
    match = next((row for row in EXCEPTION_OUTCOMES if isinstance(exc, row[0])), None)
    if match is None:
        return SendResult.retry(f"unexpected {type(exc).__name__}")
    _, fixed, label = match
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]  # we send to exactly one recipient
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = _scrub(f"{exc.code} {exc.message}", addresses, secrets)
        outcome = fixed or outcome_for_code(exc.code)
        reason = f"{label}: {reply}" if fixed else reply
    else:
        outcome = fixed or Outcome.RETRY
        detail = _scrub(str(exc), addresses, secrets)
        reason = f"{label}: {detail}" if detail else label
    return SendResult(outcome, reason)


# -- The channel ---------------------------------------------------------------------


class EmailNotifier(Notifier):
    kind = "email"

    def __init__(
        self, name: str, config: Any, *, tls_context: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(name)
        self._config = config
        self.renderer = EmailRenderer(config.templates, config.default_locale)
        self._envelope_from = parseaddr(config.sender)[1]
        self._password = config.password.get_secret_value() if config.password else None
        # Built once: aiosmtplib would otherwise load the CA store on every connection.
        self._tls_context = tls_context
        if self._tls_context is None and config.security != "none":
            self._tls_context = ssl.create_default_context()
        self._connections = asyncio.Semaphore(MAX_CONNECTIONS)

    @classmethod
    async def create(
        cls, name: str, config: Any, *, tls_context: ssl.SSLContext | None = None
    ) -> EmailNotifier:
        problems = _config_problems(name, config)
        notifier = cls(name, config, tls_context=tls_context)
        if not problems:
            problems = [
                ConfigProblem(f"channels.{name}.templates", p) for p in notifier.renderer.check()
            ]
        if problems:
            raise ConfigError("<config>", problems)
        return notifier

    def render(self, notification: Notification) -> RenderedEmail:
        locale = self.renderer.locale_for(notification.locale)
        return self.renderer.render(build_digest(notification, locale, self._config.app_url))

    def build(self, notification: Notification) -> EmailMessage:
        """The message for one notification; BadAddress if there is nowhere to send it."""
        to = recipient_address(notification.target, notification.recipient_name)
        return build_message(
            self.render(notification),
            sender=self._config.sender,
            to=to,
            app_url=self._config.app_url,
            message_id=stable_message_id(notification, self._config.sender),
        )

    async def send(self, notification: Notification) -> SendResult:
        outbox_id, shown = notification.outbox_id, mask_email(notification.target)
        if not notification.target.strip():
            return self._log(outbox_id, shown, SendResult.failed("no email address"))
        try:
            message = self.build(notification)
        except BadAddress as exc:
            return self._log(outbox_id, shown, exc.result)
        except Exception as exc:  # a broken operator template: fixed by a restart
            log.exception("email outbox=%s: rendering failed", outbox_id)
            result = SendResult.retry(f"template error: {type(exc).__name__}")
            return self._log(outbox_id, shown, result)
        recipient = message["To"].addresses[0].addr_spec
        try:
            async with self._connections:
                await self._deliver(message, recipient)
        except Exception as exc:
            known = any(isinstance(exc, kind) for kind, _, _ in EXCEPTION_OUTCOMES)
            if not known:  # a bug or an unexpected library error: keep the row
                log.exception("email outbox=%s: send raised unexpectedly", outbox_id)
            secrets = (self._password,) if self._password else ()
            result = classify(exc, (notification.target, recipient), secrets)
            return self._log(outbox_id, shown, result)
        return self._log(outbox_id, shown, SendResult.delivered())

    async def _deliver(self, message: EmailMessage, recipient: str) -> None:
        """The one I/O call: hand the message to the configured SMTP server."""
        config = self._config
        refused, _ = await aiosmtplib.send(
            message,
            sender=self._envelope_from,
            recipients=[recipient],
            hostname=config.host,
            port=config.port,
            timeout=config.timeout,
            use_tls=config.security == "tls",
            # Explicit: None would upgrade opportunistically, True insists on it.
            start_tls=config.security == "starttls",
            username=config.username or None,
            password=(self._password or "") if config.username else None,
            tls_context=self._tls_context if config.security != "none" else None,
        )
        if refused:
            # Only raised when *every* recipient is refused; with one it cannot
            # happen, but a refusal must never pass for a delivery.
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(r.code, r.message, a) for a, r in refused.items()]
            )

    def _log(self, outbox_id: int, shown: str, result: SendResult) -> SendResult:
        level = logging.DEBUG if result.outcome is Outcome.DELIVERED else logging.INFO
        log.log(
            level,
            "email outbox=%s to=%s → %s%s",
            outbox_id,
            shown,
            result.outcome,
            f" ({result.reason})" if result.reason else "",
        )
        return result


def _config_problems(name: str, config: Any) -> list[ConfigProblem]:
    problems = []
    path = f"channels.{name}"
    if config.templates is not None and not Path(config.templates).is_dir():
        problems.append(ConfigProblem(f"{path}.templates", "not a directory"))
    if config.app_url is not None and not re.match(r"^https?://[^\s<>\"]+$", config.app_url):
        # It becomes a link and a header: no other schemes, no spaces, no brackets.
        problems.append(ConfigProblem(f"{path}.app_url", "must be an http:// or https:// URL"))
    if config.password is not None and not config.username:
        problems.append(ConfigProblem(f"{path}.password", "set without a username"))
    return problems
