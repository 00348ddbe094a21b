"""Where a notification is decided: event + rules → outbox rows.

Rules are matched in order; every matching rule produces one row for its channel.
Privacy is applied here, so what the operator did not allow is never stored.
"""

from __future__ import annotations

import datetime as dt
import logging
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


class Policy:
    def __init__(self, config: Config) -> None:
        self._config = config

    def decide(
        self, event: OfflineMessage, registration_channel: str | None = None
    ) -> tuple[list[OutboxItem], list[Skip]]:
        rows: list[OutboxItem] = []
        skips: list[Skip] = []
        now = utcnow()
        for index, rule in enumerate(self._config.rules):
            if rule.event != event.event:
                continue
            try:
                row = self._apply(rule, event, registration_channel, now)
            except Exception:  # one broken rule must not stop the others
                log.exception("rule %d (%s → %s) failed; skipped", index, rule.event, rule.channel)
                continue
            if row is None:
                continue
            rows.append(row)
        if not rows:
            skips.append(Skip(event.account, registration_channel or "-", "no rule matched"))
        return rows, skips

    def _apply(
        self,
        rule: RuleConfig,
        event: OfflineMessage,
        registration_channel: str | None,
        now: dt.datetime,
    ) -> OutboxItem | None:
        if event.registration_id is not None and rule.channel != registration_channel:
            # A publish is for one device; only that device's channel applies.
            return None
        return OutboxItem(
            dedup_key=f"{event.dedup_key}:{rule.channel}",
            event=event.event,
            account=event.account,
            channel=rule.channel,
            registration_id=event.registration_id,
            conversation=event.conversation,
            payload=self._payload(event),
            due_at=now + dt.timedelta(seconds=rule.delay),
        )

    def _payload(self, event: OfflineMessage) -> dict[str, Any]:
        privacy = self._config.privacy
        payload: dict[str, Any] = {"message_count": event.message_count, "source": event.source}
        if privacy.include_sender and event.sender:
            payload["sender"] = event.sender
        if privacy.include_body and event.body:
            payload["body"] = event.body
        return payload
