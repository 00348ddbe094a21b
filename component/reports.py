"""Read-only queries behind `ofnotify deliveries` and `ofnotify registrations`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .redact import shorten
from .store import DeliveryLogEntry, Registration, utcnow


@dataclass(frozen=True)
class DeliveryFilter:
    user: str | None = None
    channel: str | None = None
    status: str | None = None
    since_seconds: float | None = None
    outbox_id: int | None = None
    limit: int = 50


async def deliveries(session: AsyncSession, flt: DeliveryFilter) -> list[dict[str, Any]]:
    stmt = select(DeliveryLogEntry).order_by(DeliveryLogEntry.id.desc()).limit(flt.limit)
    if flt.user:
        stmt = stmt.where(DeliveryLogEntry.account == flt.user)
    if flt.channel:
        stmt = stmt.where(DeliveryLogEntry.channel == flt.channel)
    if flt.status:
        stmt = stmt.where(DeliveryLogEntry.status == flt.status)
    if flt.outbox_id is not None:
        stmt = stmt.where(DeliveryLogEntry.outbox_id == flt.outbox_id)
    if flt.since_seconds is not None:
        stmt = stmt.where(DeliveryLogEntry.at >= utcnow() - dt.timedelta(seconds=flt.since_seconds))
    rows = list((await session.execute(stmt)).scalars())
    rows.reverse()  # newest last, like a log
    return [
        {
            "at": row.at.isoformat(timespec="milliseconds"),
            "outbox_id": row.outbox_id,
            "account": row.account,
            "channel": row.channel,
            "target": row.target,
            "status": row.status,
            "attempt": row.attempt,
            "latency_ms": round(row.latency_ms, 1) if row.latency_ms is not None else None,
            "error": row.error,
        }
        for row in rows
    ]


async def registrations(session: AsyncSession, user: str | None = None) -> list[dict[str, Any]]:
    stmt = select(Registration).order_by(Registration.account, Registration.id)
    if user:
        stmt = stmt.where(Registration.account == user)
    return [
        {
            "id": row.id,
            "account": row.account,
            "device": shorten(row.device_id),
            "muc": row.muc or None,
            "channel": row.channel,
            "token": shorten(row.token),
            "node": shorten(row.node),
            "created_at": row.created_at.isoformat(timespec="seconds"),
            "updated_at": row.updated_at.isoformat(timespec="seconds"),
            "disabled": row.disabled_reason if row.disabled_at else None,
        }
        for row in (await session.execute(stmt)).scalars()
    ]


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned table: readable in a terminal, greppable, no dependency."""
    if not rows:
        return "(nothing matched)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = [header]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)
