"""The one interface every delivery channel implements.

A notifier is created once per configured channel (`create`) and asked to `send` one
notification at a time. It never raises for delivery problems: it returns a
`SendResult` saying what the dispatcher should do next. Only the dispatcher calls it.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # temporary: try again (not before retry_after, if given)
    FAILED = "failed"  # permanent for this notification
    TARGET_INVALID = "target_invalid"  # the token/address is dead: disable it


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    reason: str = ""
    retry_after: float | None = None

    @classmethod
    def delivered(cls) -> SendResult:
        return cls(Outcome.DELIVERED)

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> SendResult:
        return cls(Outcome.RETRY, reason, retry_after)

    @classmethod
    def failed(cls, reason: str) -> SendResult:
        return cls(Outcome.FAILED, reason)

    @classmethod
    def target_invalid(cls, reason: str) -> SendResult:
        return cls(Outcome.TARGET_INVALID, reason)


@dataclass(frozen=True)
class MissedMessage:
    """One message in a digest. `body` is None when privacy hides it or it is encrypted."""

    sender: str  # bare JID
    sender_name: str | None = None
    body: str | None = None
    encrypted: bool = False
    sent_at: dt.datetime | None = None


@dataclass(frozen=True)
class Notification:
    """What a channel needs to tell one person about missed messages.

    `sender` and `body` are already filtered by the privacy settings: a notifier
    sends what it is given and nothing else.
    """

    outbox_id: int
    account: str
    target: str  # FCM token, email address, …
    conversation: str  # bare JID of the other party; the collapse key
    message_count: int = 1
    unread_count: int | None = None
    sender: str | None = None
    body: str | None = None
    # Digest channels (email) get every unread message and who it is for.
    messages: tuple[MissedMessage, ...] = ()
    recipient_name: str | None = None
    locale: str | None = None
    # More fields for the app (push data messages), e.g. `test` from send-test.
    extra: dict[str, Any] = field(default_factory=dict)


class Notifier(abc.ABC):
    kind: ClassVar[str]
    # Sends this notifier works on at once; the dispatcher holds the rest back, so a
    # stop can return them to the queue unsent instead of draining a backlog.
    max_concurrent: int | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abc.abstractmethod
    async def create(cls, name: str, config: Any) -> Notifier:
        """Build from the channel's validated config; may load credentials."""

    @abc.abstractmethod
    async def send(self, notification: Notification) -> SendResult: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""
