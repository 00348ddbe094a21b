"""Turning source events into durable rows: one path for XEP-0357 and the watcher.

Each call is one unit of work in the group committer, so what a source reported and
what it caused (missed messages, outbox rows, cancellations, the watcher's position)
commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox, readstate
from .committer import GroupCommitter
from .events import OfflineMessage
from .policy import Policy, Skip
from .ratelimit import TokenBuckets
from .stanzas import ParsedMessage
from .store import (
    DigestCursor,
    OutboxItem,
    Registration,
    WatcherState,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenMessage:
    """A content message the watcher found in ofOffline."""

    account: str
    source_key: str
    parsed: ParsedMessage
    stored_at: dt.datetime


@dataclass
class WatcherBatch:
    messages: list[SeenMessage] = field(default_factory=list)
    markers: list[tuple[str, str | None, str]] = field(default_factory=list)  # reader, conv, id
    delivered: dict[str, list[str]] = field(default_factory=dict)  # account → source keys
    position: tuple[int, int] | None = None  # (high message id, cursor ms)

    def __bool__(self) -> bool:
        return bool(self.messages or self.markers or self.delivered or self.position)


class DirectDelivery(Protocol):
    """A dispatcher that takes rows due now as they are inserted, leased to it."""

    @property
    def lease(self) -> float: ...

    def can_take(self, count: int) -> bool: ...

    def take(self, rows: Sequence[OutboxItem]) -> None: ...


class Ingest:
    def __init__(
        self,
        committer: GroupCommitter,
        policy: Policy,
        on_enqueued: Callable[[], None],
        *,
        include_body: bool,
        buckets: TokenBuckets | None = None,
        direct: DirectDelivery | None = None,
    ) -> None:
        self._committer = committer
        self._policy = policy
        self._on_enqueued = on_enqueued
        self._include_body = include_body
        self._buckets = buckets
        self._direct = direct

    def _limit(self, rows: Sequence[OutboxItem]) -> None:
        """Over the account's push rate, a push waits for the next slot and all pushes
        for the same device and conversation meanwhile fold into it (same key)."""
        if self._buckets is None:
            return
        for row in rows:
            if row.registration_id is None:
                continue  # digests and emails have their own pacing (min_interval)
            wait = self._buckets.take(row.account)
            if wait > 0:
                row.dedup_key = f"push:{row.registration_id}:{row.conversation}:open"
                row.due_at = max(row.due_at, utcnow() + dt.timedelta(seconds=wait))

    async def publish(self, event: OfflineMessage, registration_channel: str) -> list[int]:
        rows, skips = self._policy.decide(event, registration_channel)
        self._limit(rows)
        leased = self._lease_to_dispatcher(rows)
        ids = await self._committer.add(outbox.ENQUEUE, (rows, skips))
        taken = [row for row in leased if row.id is not None]  # not a duplicate
        if self._direct is not None and taken:
            self._direct.take(taken)
        if len(ids) > len(taken):
            self._on_enqueued()
        return ids

    def _lease_to_dispatcher(self, rows: Sequence[OutboxItem]) -> list[OutboxItem]:
        """Rows due now go to the dispatcher with the insert, already leased: a crash
        loses nothing (the lease expires and the row is claimed like any other)."""
        if self._direct is None:
            return []
        now = utcnow()
        due = [row for row in rows if row.due_at <= now]
        if not due or not self._direct.can_take(len(due)):
            return []
        until = now + dt.timedelta(seconds=self._direct.lease)
        for row in due:
            row.lease_until = until
        return due

    async def marker(self, reader: str, stanza_id: str) -> None:
        await self._committer.run(
            lambda s: self._apply(s, WatcherBatch(markers=[(reader, None, stanza_id)]), 1)
        )

    async def watcher(self, batch: WatcherBatch, watcher_id: int = 1) -> list[int]:
        ids = await self._committer.run(lambda s: self._apply(s, batch, watcher_id))
        if ids:
            self._on_enqueued()
        return ids

    async def _apply(
        self, session: AsyncSession, batch: WatcherBatch, watcher_id: int
    ) -> list[int]:
        touched: set[str] = set()
        new_ids = await self._messages(session, batch.messages)
        for reader, conversation, stanza_id in batch.markers:
            if await readstate.mark_displayed(session, reader, conversation, stanza_id):
                touched.add(reader)
        for account, keys in batch.delivered.items():
            if await readstate.mark_delivered(session, account, keys):
                touched.add(account)
        for account in sorted(touched):
            await readstate.cancel_overtaken(session, account)
        if batch.position is not None:
            state = await session.get(WatcherState, watcher_id)
            if state is None:
                state = WatcherState(id=watcher_id)
                session.add(state)
            state.high_message_id, state.cursor_ms = batch.position
            state.updated_at = utcnow()
        return new_ids

    async def _messages(self, session: AsyncSession, seen: Sequence[SeenMessage]) -> list[int]:
        """A poll's new messages: a handful of statements for the lot, not per message."""
        missed_ids = await readstate.record_missed_many(
            session,
            [
                {
                    "account": m.account,
                    "conversation": m.parsed.sender_bare,
                    "source_key": m.source_key,
                    "stanza_id": m.parsed.id,
                    "body": m.parsed.body if self._include_body else None,
                    "encrypted": m.parsed.encrypted,
                    "sent_at": m.parsed.delay or m.stored_at,
                }
                for m in seen
            ],
        )
        fresh = [(m, i) for m, i in zip(seen, missed_ids, strict=True) if i is not None]
        if not fresh:
            return []  # all seen before (a restart re-read the overlap window)
        devices = await _registrations_by_account(session, {m.account for m, _ in fresh})
        rows: list[OutboxItem] = []
        skips: list[Skip] = []
        for message, missed_id in fresh:
            event = OfflineMessage(
                account=message.account,
                dedup_key=message.source_key,
                source="watcher",
                sender=message.parsed.sender_bare,
                body=None if message.parsed.encrypted else message.parsed.body,
                missed_message_id=missed_id,
            )
            decided, skipped = self._policy.decide(
                event, registrations=devices.get(message.account, {})
            )
            self._limit(decided)
            rows += decided
            skips += skipped
        await _apply_min_interval(session, rows)
        await outbox.log_skips(session, skips)
        return await outbox.enqueue(session, rows)


async def _registrations_by_account(
    session: AsyncSession, accounts: set[str]
) -> dict[str, dict[str, list[int]]]:
    """account → channel → enabled registration ids, for all accounts at once."""
    stmt = select(Registration.account, Registration.channel, Registration.id).where(
        Registration.account.in_(sorted(accounts)), Registration.disabled_at.is_(None)
    )
    found: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for account, channel, reg_id in (await session.execute(stmt)).all():
        found[account][channel].append(reg_id)
    return found


async def _apply_min_interval(session: AsyncSession, rows: Sequence[OutboxItem]) -> None:
    paced = [row for row in rows if row.payload.get("min_interval")]
    if not paced:
        return
    keys = sorted({(row.account, row.channel) for row in paced})
    last_sent = {
        (c.account, c.channel): c.last_sent_at
        for c in (
            await session.execute(
                select(DigestCursor).where(
                    tuple_(DigestCursor.account, DigestCursor.channel).in_(keys)
                )
            )
        ).scalars()
    }
    for row in paced:
        sent = last_sent.get((row.account, row.channel))
        if sent is not None:
            earliest = sent + dt.timedelta(seconds=float(row.payload["min_interval"]))
            row.due_at = max(row.due_at, earliest)
