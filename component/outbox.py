"""Durable queue of decided notifications: enqueue, claim due rows, record outcomes.

Rows are claimed with a lease rather than a status change, so a process that dies
mid-send loses nothing: the lease expires and the row is due again (at-least-once).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from . import metrics
from .store import DeliveryLogEntry, OutboxItem, OutboxStatus, utcnow

_COLUMNS = (
    "dedup_key",
    "event",
    "source",
    "account",
    "channel",
    "registration_id",
    "conversation",
    "payload",
    "due_at",
)


async def enqueue(session: AsyncSession, rows: Sequence[OutboxItem]) -> list[int]:
    """Insert rows; a row whose dedup_key exists already is silently dropped.

    Returns the ids of the rows actually inserted.
    """
    ids: list[int] = []
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    for row in rows:
        # Unset attributes are left out so that the columns' defaults apply.
        values: dict[str, Any] = {
            c: getattr(row, c) for c in _COLUMNS if getattr(row, c) is not None
        }
        values.update(status=OutboxStatus.PENDING, created_at=now, attempts=0)
        stmt = (
            insert(OutboxItem)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedup_key"])
            .returning(OutboxItem.id)
        )
        inserted = (await session.execute(stmt)).scalar_one_or_none()
        if inserted is not None:
            ids.append(inserted)
            metrics.DECIDED.labels(row.channel, row.source or "xep0357").inc()
    return ids


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
    )
    ids = list((await session.execute(due)).scalars())
    if not ids:
        return []
    until = now + dt.timedelta(seconds=lease)
    await session.execute(
        update(OutboxItem).where(OutboxItem.id.in_(ids)).values(lease_until=until)
    )
    result = await session.execute(
        select(OutboxItem).where(OutboxItem.id.in_(ids)).order_by(OutboxItem.due_at)
    )
    return list(result.scalars())


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
