"""Where notifications are sent: claims due outbox rows and hands them to notifiers.

Every attempt ends in one transaction that updates the row and appends to the
delivery log, so `ofnotify deliveries` always matches what happened. Retry state
(attempts, next due time, failing-since) lives in the row: a restart resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from notifiers import Notifier, Outcome, SendResult

from . import metrics, outbox, registrations
from .committer import Batched, GroupCommitter
from .compose import AfterDelivery, Composer, Drop, Ready, finish_open_row
from .config import DeliveryConfig
from .store import DeliveryLogEntry, OutboxItem, OutboxStatus, utcnow

log = logging.getLogger(__name__)


# After a restart the watcher's first poll reflects what happened while we were down
# (new messages to fold into digests, deliveries that cancel); a dead Openfire database
# must not hold pushes back for longer than this.
CATCH_UP_WAIT = 30.0


def backoff(attempt: int, config: DeliveryConfig, retry_after: float | None) -> float:
    """Exponential with full jitter on the upper half; never earlier than the server asked."""
    ceiling = min(config.backoff_max, config.backoff_initial * 2 ** max(0, attempt - 1))
    delay = ceiling * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class Dispatcher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        committer: GroupCommitter,
        notifiers: dict[str, Notifier],
        config: DeliveryConfig,
        composer: Composer,
        *,
        on_registration_disabled: Callable[[], None] | None = None,
        idle_poll: float = 1.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._committer = committer
        self._notifiers = notifiers
        self._config = config
        self._composer = composer
        self._on_disabled = on_registration_disabled or (lambda: None)
        self._idle_poll = idle_poll
        self._wakeup = asyncio.Event()
        self._capacity = asyncio.Semaphore(config.batch_size)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_ids: set[int] = set()
        self._stopping = False
        self._accepting = False  # rows handed over directly (take); not before catch-up
        self._starting: set[asyncio.Task[None]] = set()
        self._taken: list[OutboxItem] = []  # handed over, not yet started
        self._channel_slots = {
            name: asyncio.Semaphore(n.max_concurrent)
            for name, n in notifiers.items()
            if n.max_concurrent is not None
        }
        self._unstarted: list[int] = []  # held back when a stop began
        self._loop_done = asyncio.Event()
        self._stop_requested = asyncio.Event()

    @property
    def lease(self) -> float:
        return self._config.lease

    def wake(self) -> None:
        """Something became due now (a new row, a cancelled lease)."""
        self._wakeup.set()

    def can_take(self, count: int) -> bool:
        """Whether `count` rows due now may be leased to this dispatcher as they are
        inserted (Ingest), skipping the claim: one group commit less between a publish
        and its push."""
        return self._accepting and len(self._in_flight_ids) + count <= self._config.batch_size

    def take(self, rows: Sequence[OutboxItem]) -> None:
        """Deliver rows that were leased to us when they were inserted."""
        if not rows:
            return
        if not self._accepting:
            # Stopping since the caller asked: hand the rows back to the queue.
            task = asyncio.create_task(self._release([row.id for row in rows]))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
            return
        self._in_flight_ids.update(row.id for row in rows)
        self._taken.extend(rows)
        if len(self._taken) == len(rows):
            # One start for everything taken in this turn of the loop: a commit batch
            # wakes all its publishers at once, and they should share one compose.
            task = asyncio.create_task(self._start_taken(), name="deliver-taken")
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_taken(self) -> None:
        rows, self._taken = self._taken, []
        await self._start(rows)

    async def run(self, wait_for: asyncio.Event | None = None) -> None:
        """`wait_for`: hold the first send until a source caught up (bounded)."""
        if wait_for is not None:
            waits = [
                asyncio.create_task(wait_for.wait()),
                asyncio.create_task(self._stop_requested.wait()),
            ]
            done, pending = await asyncio.wait(
                waits, timeout=CATCH_UP_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if not done:
                log.warning("sources did not catch up in %.0fs; sending anyway", CATCH_UP_WAIT)
        renewer = asyncio.create_task(self.renew_leases(), name="lease-renewal")
        self._accepting = not self._stopping
        try:
            await self._loop()
        finally:
            self._accepting = False
            self._loop_done.set()
            renewer.cancel()

    async def _loop(self) -> None:
        while not self._stopping:
            free = self._free_slots()
            rows: list[OutboxItem] = []
            if free:
                try:
                    rows = await self._claim(free)
                except Exception:
                    log.exception("claiming due notifications failed; retrying shortly")
                    await asyncio.sleep(self._idle_poll)
                    continue
            if self._stopping:
                # Stop arrived while claiming: hand the rows back untouched.
                await self._release([row.id for row in rows])
                self._in_flight_ids.difference_update(row.id for row in rows)
                return
            await self._start(rows)
            if len(rows) < free or not free:
                await self._sleep_until_due()

    async def _start(self, rows: list[OutboxItem]) -> None:
        """Compose the rows together, then send each as a slot frees up."""
        composed = await self._compose(rows)
        for row in rows:
            await self._capacity.acquire()
            task = asyncio.create_task(
                self._deliver(row, composed[row.id]), name=f"deliver-{row.id}"
            )
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    async def stop(self, grace: float = 10.0) -> None:
        """Let in-flight sends finish; rows still unsent return to the queue."""
        self._stopping = True
        self._accepting = False
        self._stop_requested.set()
        self._wakeup.set()
        # No new sends may start once we look at what is in flight.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loop_done.wait(), timeout=grace)
        if self._starting:
            await asyncio.wait(set(self._starting), timeout=grace)
        if self._in_flight:
            # Sends under way finish; the ones still waiting for the channel give up.
            _, pending = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                await self._release([int(t.get_name().split("-")[1]) for t in pending])
        await self._release(self._unstarted)
        self._unstarted = []

    def _free_slots(self) -> int:
        # Rows being composed or waiting for a slot count too (claimed or taken).
        return max(0, self._config.batch_size - len(self._in_flight_ids))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._in_flight_ids.discard(int(task.get_name().split("-")[1]))
        self._capacity.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task crashed", exc_info=task.exception())

    async def _claim(self, limit: int) -> list[OutboxItem]:
        # Through the committer: on SQLite a second writer would wait for the write
        # lock in SQLite's sleeping busy handler (1, 2, 5, 10… ms), on every claim.
        exclude = set(self._in_flight_ids)
        rows = await self._committer.run(
            lambda session: outbox.claim_due(session, limit, self._config.lease, exclude=exclude)
        )
        self._in_flight_ids.update(row.id for row in rows)
        return rows

    async def renew_leases(self) -> None:
        """While sends wait for a worker, their rows must not look abandoned."""
        while True:
            await asyncio.sleep(self._config.lease / 3)
            ids = set(self._in_flight_ids)
            try:
                await self._committer.run(
                    lambda session, ids=ids: outbox.renew_leases(session, ids, self._config.lease)
                )
            except Exception:
                log.warning("could not renew leases of rows in flight", exc_info=True)

    async def _sleep_until_due(self) -> None:
        if self._wakeup.is_set():
            # Rows were queued while we claimed: claim again, no need to ask when.
            self._wakeup.clear()
            return
        # Not cleared after looking: a row committed while we look still wakes us.
        timeout = self._idle_poll
        try:
            async with self._sessionmaker() as session:
                due = await outbox.next_due_at(session)
            if due is not None:
                timeout = min(timeout, max(0.0, (due - utcnow()).total_seconds()))
        except Exception:
            log.warning("could not read the next due time", exc_info=True)
        if timeout <= 0 and self._free_slots():
            await asyncio.sleep(0.01)  # due rows are leased by someone else: don't spin
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=max(timeout, 0.01))

    async def _release(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            async with self._sessionmaker() as session, session.begin():
                await session.execute(
                    update(OutboxItem).where(OutboxItem.id.in_(ids)).values(lease_until=None)
                )
        except Exception:
            log.warning("could not release %d leases; they expire by themselves", len(ids))

    async def _compose(self, rows: list[OutboxItem]) -> dict[int, Ready | Drop | SendResult]:
        """Decide what each claimed row becomes, in one session for the whole claim."""
        out: dict[int, Ready | Drop | SendResult] = {}
        if not rows:
            return out
        try:
            async with self._sessionmaker() as session, session.begin():
                await self._composer.prefetch(session, rows)
                for row in rows:
                    if row.channel not in self._notifiers:
                        out[row.id] = SendResult.failed(f"channel {row.channel!r} not configured")
                        continue
                    try:
                        out[row.id] = await self._composer.compose(session, row)
                    except Exception as exc:
                        log.warning(
                            "outbox=%s could not be prepared; will retry", row.id, exc_info=True
                        )
                        out[row.id] = SendResult.retry(f"preparing failed: {type(exc).__name__}")
        except Exception as exc:
            log.warning("preparing %d notifications failed; will retry", len(rows), exc_info=True)
            for row in rows:
                out[row.id] = SendResult.retry(f"preparing failed: {type(exc).__name__}")
        return out

    async def _deliver(self, row: OutboxItem, composed: Ready | Drop | SendResult) -> None:
        if isinstance(composed, SendResult):
            await self._record(row, composed)
            return
        if isinstance(composed, Drop):
            await self._record(row, None, drop=composed)
            return
        notifier = self._notifiers[row.channel]
        slots = self._channel_slots.get(row.channel)
        if slots is not None:
            await slots.acquire()
        try:
            if self._stopping:
                self._unstarted.append(row.id)  # never sent: back to the queue at stop
                return
            started = time.monotonic()
            try:
                result = await notifier.send(composed.notification)
            except Exception as exc:  # notifiers must not raise; if one does, keep the row
                log.exception("notifier %s raised for outbox %s", row.channel, row.id)
                result = SendResult.retry(f"notifier error: {type(exc).__name__}")
            latency_ms = (time.monotonic() - started) * 1000
        finally:
            if slots is not None:
                slots.release()
        await self._record(row, result, ready=composed, latency_ms=latency_ms)

    async def _record(
        self,
        row: OutboxItem,
        result: SendResult | None,
        *,
        ready: Ready | None = None,
        drop: Drop | None = None,
        latency_ms: float | None = None,
    ) -> None:
        record = outcome_record(
            row, result, self._config, ready=ready, drop=drop, latency_ms=latency_ms
        )
        try:
            await self._committer.add(RECORD, record)
        except Exception:
            # The lease will expire and the row be tried again: at-least-once.
            log.exception("could not record the outcome of outbox %s", row.id)
            return
        if record.disable_reason is not None:
            self._on_disabled()
        _count(row.channel, record.status, record.reason, latency_ms)
        # Every attempt is in the delivery log table; at 1,000/s a log line for each
        # success costs more than it tells. Anything else is worth a line.
        log.log(
            logging.DEBUG if record.status == "delivered" else logging.INFO,
            "outbox=%s account=%s channel=%s attempt=%d → %s%s",
            row.id,
            row.account,
            row.channel,
            record.values["attempts"],
            record.status,
            f" ({record.reason})" if record.reason else "",
        )


@dataclass
class OutcomeRecord:
    """Everything one attempt changes, applied in bulk with the batch's other attempts."""

    row: OutboxItem
    values: dict[str, Any]  # the same keys for every record: one executemany
    status: str
    reason: str
    log: dict[str, Any]
    disable_reason: str | None = None
    after_delivery: AfterDelivery | None = None


def outcome_record(
    row: OutboxItem,
    result: SendResult | None,
    config: DeliveryConfig,
    *,
    ready: Ready | None = None,
    drop: Drop | None = None,
    latency_ms: float | None = None,
) -> OutcomeRecord:
    attempt = row.attempts + (0 if drop else 1)
    now = utcnow()
    values: dict[str, Any] = {
        "b_id": row.id,  # the WHERE of _UPDATE_OUTCOME; every other key is SET
        "attempts": attempt,
        "lease_until": None,
        "status": OutboxStatus.PENDING,
        "due_at": row.due_at,
        "last_error": row.last_error,
        "failing_since": row.failing_since,
        "finished_at": None,
    }
    if drop is not None:
        status, reason = drop.status, drop.reason
        final = OutboxStatus.CANCELLED if drop.status == "cancelled" else OutboxStatus.FAILED
        values.update(status=final, finished_at=now, last_error=reason)
    else:
        assert result is not None
        status, reason = result.outcome.value, result.reason
        if result.outcome is Outcome.DELIVERED:
            values.update(status=OutboxStatus.DELIVERED, finished_at=now, last_error=None)
        elif result.outcome is Outcome.RETRY and attempt < config.max_attempts:
            values.update(
                due_at=now + dt.timedelta(seconds=backoff(attempt, config, result.retry_after)),
                last_error=reason,
                failing_since=row.failing_since or now,
            )
        else:
            if result.outcome is Outcome.RETRY:
                reason = f"gave up after {attempt} attempts: {reason}"
                status = "failed"
            values.update(status=OutboxStatus.FAILED, finished_at=now, last_error=reason)
    disable = (
        reason
        if result is not None
        and result.outcome is Outcome.TARGET_INVALID
        and row.registration_id is not None
        else None
    )
    return OutcomeRecord(
        row=row,
        values=values,
        status=status,
        reason=reason,
        log={
            "at": now,
            "outbox_id": row.id,
            "account": row.account,
            "channel": row.channel,
            "target": ready.shown_target if ready else "-",
            "status": status,
            "error": reason or None,
            "attempt": attempt,
            "latency_ms": latency_ms,
        },
        disable_reason=disable,
        after_delivery=ready.after_delivery
        if ready and values["status"] == OutboxStatus.DELIVERED
        else None,
    )


async def apply_outcomes(session: AsyncSession, records: Sequence[OutcomeRecord]) -> list[None]:
    # One executemany UPDATE by primary key and one executemany INSERT for the batch,
    # in Core: the ORM's bulk paths cost more per row than the statements themselves.
    await session.execute(_UPDATE_OUTCOME, [r.values for r in records])
    await session.execute(insert(DeliveryLogEntry.__table__), [r.log for r in records])
    for r in records:  # rare side effects, one by one
        if r.disable_reason is not None and r.row.registration_id is not None:
            await registrations.disable(session, r.row.registration_id, r.disable_reason)
        if r.after_delivery is not None:
            await r.after_delivery(session)
        if r.values["status"] != OutboxStatus.PENDING:
            moot = r.values["status"] in (OutboxStatus.DELIVERED, OutboxStatus.CANCELLED)
            await finish_open_row(session, r.row, moot)
    return [None] * len(records)


RECORD = Batched("record-outcome", apply_outcomes)

_outbox = OutboxItem.__table__
# SET columns come from the parameter keys (every record has the same ones).
_UPDATE_OUTCOME = update(_outbox).where(_outbox.c.id == bindparam("b_id"))


def _count(channel: str, status: str, reason: str, latency_ms: float | None) -> None:
    if latency_ms is not None:
        metrics.SEND_LATENCY.labels(channel).observe(latency_ms / 1000)
    if status == "delivered":
        metrics.SENT.labels(channel).inc()
    elif status == "retry":
        metrics.RETRIED.labels(channel).inc()
    elif status == "cancelled":
        metrics.CANCELLED.labels(channel, metrics.cancel_reason(reason)).inc()
    else:
        kind = "attempts_exhausted" if reason.startswith("gave up") else status
        metrics.FAILED.labels(channel, kind if kind != "failed" else "permanent").inc()
