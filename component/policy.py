"""Where a notification is decided: an event and the rules give outbox rows.

Rules are matched in order; every matching rule produces rows for its channel. The
policy is pure: what it needs from the database (the account's devices) is passed
in. Privacy is applied here, so what the operator did not allow is never stored.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Config, RuleConfig
from .events import OfflineMessage
from .store import OutboxItem, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """A decision not to notify, worth a line in the delivery log."""

    account: str
    channel: str
    reason: str


def open_digest_key(account: str, channel: str) -> str:
    """While a digest is pending, every new message folds into it (same dedup key)."""
    return f"digest:{account}:{channel}:open"


class Policy:
    def __init__(self, config: Config) -> None:
        self._config = config

    def decide(
        self,
        event: OfflineMessage,
        registration_channel: str | None = None,
        registrations: Mapping[str, Sequence[int]] | None = None,
    ) -> tuple[list[OutboxItem], list[Skip]]:
        """`registration_channel`: the channel of the publishing device (XEP-0357);
        `registrations`: channel → the account's enabled registrations (watcher)."""
        rows: list[OutboxItem] = []
        skips: list[Skip] = []
        now = utcnow()
        for index, rule in enumerate(self._config.rules):
            if rule.event != event.event:
                continue
            try:
                made, skip = self._apply(
                    rule, event, registration_channel, registrations or {}, now
                )
            except Exception:  # one broken rule must not stop the others
                log.exception("rule %d (%s → %s) failed; skipped", index, rule.event, rule.channel)
                continue
            rows += made
            if skip:
                skips.append(skip)
        if not rows and not skips:
            skips.append(Skip(event.account, registration_channel or "-", "no rule matched"))
        return rows, skips

    def _apply(
        self,
        rule: RuleConfig,
        event: OfflineMessage,
        registration_channel: str | None,
        registrations: Mapping[str, Sequence[int]],
        now: dt.datetime,
    ) -> tuple[list[OutboxItem], Skip | None]:
        kind = self._config.channels[rule.channel].type
        payload = self._payload(event, rule)
        due = now + dt.timedelta(seconds=rule.delay)

        def row(key: str, registration_id: int | None, due_at: dt.datetime) -> OutboxItem:
            return OutboxItem(
                dedup_key=key,
                event=event.event,
                source=event.source,
                account=event.account,
                channel=rule.channel,
                registration_id=registration_id,
                conversation=event.conversation,
                payload=payload,
                due_at=due_at,
            )

        if event.registration_id is not None:
            # A publish wakes one device; only that device's channel applies.
            if kind != "fcm" or rule.channel != registration_channel:
                return [], None
            return [row(f"{event.dedup_key}:{rule.channel}", event.registration_id, due)], None
        if kind == "fcm":
            devices = registrations.get(rule.channel, ())
            if not devices:
                return [], Skip(event.account, rule.channel, "no push registration")
            # Give the server's own XEP-0357 publish of this message time to arrive.
            openfire = self._config.openfire
            push_grace = openfire.push_grace if openfire is not None else 0.0
            grace = now + dt.timedelta(seconds=max(rule.delay, push_grace))
            return [
                row(f"{event.dedup_key}:{rule.channel}:{reg}", reg, grace) for reg in devices
            ], None
        if rule.digest:
            return [row(open_digest_key(event.account, rule.channel), None, due)], None
        return [row(f"{event.dedup_key}:{rule.channel}", None, due)], None

    def _payload(self, event: OfflineMessage, rule: RuleConfig) -> dict[str, Any]:
        privacy = self._config.privacy
        payload: dict[str, Any] = {"message_count": event.message_count}
        if privacy.include_sender and event.sender:
            payload["sender"] = event.sender
        if privacy.include_body and event.body:
            payload["body"] = event.body
        if event.missed_message_id is not None:
            payload["message_ids"] = [event.missed_message_id]
        if rule.digest:
            payload["digest"] = True
        if rule.min_interval:
            payload["min_interval"] = rule.min_interval
        if rule.delay:
            payload["delay"] = rule.delay
        if not rule.cancel_on_read:
            payload["cancel_on_read"] = False
        return payload
