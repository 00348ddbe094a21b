"""Durable queue of decided notifications: enqueue, claim due rows, record outcomes.

Rows are claimed with a lease rather than a status change, so a process that dies
mid-send loses nothing: the lease expires and the row is due again (at-least-once).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import metrics
from .committer import Batched
from .store import DeliveryLogEntry, OutboxItem, OutboxStatus, dialect_insert, utcnow


async def enqueue(session: AsyncSession, rows: Sequence[OutboxItem]) -> list[int]:
    """Insert rows in one statement; a row whose dedup_key exists already (or repeats
    within `rows`) is dropped. Returns the ids of the rows actually inserted, in order."""
    return [i for i in await enqueue_ids_in_order(session, rows) if i is not None]


def _values(row: OutboxItem, now: dt.datetime) -> dict[str, Any]:
    # Every row names every column: a multi-row VALUES needs the same keys throughout.
    return {
        "dedup_key": row.dedup_key,
        "event": row.event or "offline_message",
        "source": row.source or "xep0357",
        "account": row.account,
        "channel": row.channel,
        "registration_id": row.registration_id,
        "conversation": row.conversation or "",
        "payload": row.payload or {},
        "due_at": row.due_at or now,
        "status": OutboxStatus.PENDING,
        "created_at": now,
        "attempts": 0,
        "lease_until": row.lease_until,  # set when handed to the dispatcher directly
    }


async def enqueue_decisions(
    session: AsyncSession, decisions: Sequence[tuple[Sequence[OutboxItem], Sequence[Any]]]
) -> list[list[int]]:
    """Batched form for the group committer: (rows, skips) per caller, ids back each."""
    all_rows = [row for rows, _ in decisions for row in rows]
    ids = iter(await enqueue_ids_in_order(session, all_rows))
    await log_skips(session, [skip for _, found in decisions for skip in found])
    return [[i for i in (next(ids) for _ in rows) if i is not None] for rows, _ in decisions]


async def enqueue_ids_in_order(
    session: AsyncSession, rows: Sequence[OutboxItem]
) -> list[int | None]:
    """Like `enqueue`, but one entry per row: its id, or None if it was a duplicate."""
    if not rows:
        return []
    now = utcnow()
    # One statement with a parameter list: SQLAlchemy compiles it once and reuses it
    # ("insertmanyvalues" sends the rows as a multi-row VALUES), whereas `.values(list)`
    # compiled a new statement for every batch size — most of the enqueue cost.
    stmt = (
        dialect_insert(session)(OutboxItem.__table__)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(OutboxItem.id, OutboxItem.dedup_key)
    )
    result = await session.execute(stmt, [_values(row, now) for row in rows])
    inserted = {key: row_id for row_id, key in result.all()}
    out: list[int | None] = []
    for row in rows:
        row_id = inserted.pop(row.dedup_key, None)
        if row_id is not None:
            metrics.DECIDED.labels(row.channel, row.source or "xep0357").inc()
            # The object now reads like the stored row (the dispatcher may take it as is).
            row.id, row.created_at, row.attempts = row_id, now, 0
            row.status, row.last_error, row.failing_since = OutboxStatus.PENDING, None, None
        out.append(row_id)
    return out


ENQUEUE = Batched("enqueue", enqueue_decisions)


async def claim_due(
    session: AsyncSession,
    limit: int,
    lease: float,
    now: dt.datetime | None = None,
    exclude: Collection[int] = (),
) -> list[OutboxItem]:
    """Lease up to `limit` due rows; `exclude` are this process's own rows in flight."""
    now = now or utcnow()
    conditions = [
        OutboxItem.status == OutboxStatus.PENDING,
        OutboxItem.due_at <= now,
        or_(OutboxItem.lease_until.is_(None), OutboxItem.lease_until < now),
    ]
    if exclude:
        conditions.append(OutboxItem.id.notin_(list(exclude)))
    due = (
        select(OutboxItem.id)
        .where(*conditions)
        .order_by(OutboxItem.due_at)
        .limit(limit)
        # Several ofnotify processes on one PostgreSQL never claim the same row;
        # SQLite ignores this and serialises writers anyway.
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    # One statement: lease the due rows and read them back (UPDATE … RETURNING works
    # on SQLite ≥ 3.35 and PostgreSQL).
    stmt = (
        update(OutboxItem)
        .where(OutboxItem.id.in_(due))
        .values(lease_until=now + dt.timedelta(seconds=lease))
        .returning(OutboxItem)
        .execution_options(synchronize_session=False)
    )
    rows = list((await session.execute(stmt)).scalars())
    rows.sort(key=lambda row: (row.due_at, row.id))  # RETURNING keeps no order
    return rows


async def renew_leases(session: AsyncSession, ids: Collection[int], lease: float) -> None:
    """Rows still queued for a sender keep their lease, so nobody else takes them."""
    if ids:
        until = utcnow() + dt.timedelta(seconds=lease)
        await session.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(list(ids)), OutboxItem.status == OutboxStatus.PENDING)
            .values(lease_until=until)
        )


async def next_due_at(session: AsyncSession) -> dt.datetime | None:
    stmt = select(func.min(OutboxItem.due_at)).where(OutboxItem.status == OutboxStatus.PENDING)
    value = (await session.execute(stmt)).scalar_one_or_none()
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


async def depth_and_oldest_due(session: AsyncSession) -> tuple[int, dt.datetime | None]:
    stmt = select(func.count(), func.min(OutboxItem.due_at)).where(
        OutboxItem.status == OutboxStatus.PENDING
    )
    depth, oldest = (await session.execute(stmt)).one()
    if isinstance(oldest, dt.datetime) and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    return int(depth), oldest


async def log_skips(session: AsyncSession, skips: Sequence[Any]) -> None:
    """Decisions not to notify (policy `Skip`s), one delivery-log line each, in bulk."""
    if skips:
        now = utcnow()
        await session.execute(
            insert(DeliveryLogEntry.__table__),
            [
                {
                    "at": now,
                    "account": s.account,
                    "channel": s.channel,
                    "status": "skipped",
                    "error": s.reason,
                    "target": "-",
                    "attempt": 0,
                }
                for s in skips
            ],
        )


async def log_entry(session: AsyncSession, **fields: Any) -> None:
    session.add(DeliveryLogEntry(**fields))


async def requeue_failed(
    session: AsyncSession, ids: Sequence[int] | None = None, account: str | None = None
) -> int:
    """Operator action: give failed rows a fresh set of attempts."""
    stmt = update(OutboxItem).where(OutboxItem.status == OutboxStatus.FAILED)
    if ids:
        stmt = stmt.where(OutboxItem.id.in_(ids))
    if account:
        stmt = stmt.where(OutboxItem.account == account)
    stmt = stmt.values(
        status=OutboxStatus.PENDING,
        attempts=0,
        due_at=utcnow(),
        lease_until=None,
        failing_since=None,
        finished_at=None,
    )
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
