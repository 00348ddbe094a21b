"""Read state: what each person has not seen yet, and what overtook pending notifications.

Messages become `delivered` when Openfire hands them to a client (their ofOffline row
vanishes) and `read` when a XEP-0333 displayed/acknowledged marker covers them. A
pending notification whose messages are all overtaken is cancelled, with a line in
the delivery log saying why.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox
from .store import (
    DigestCursor,
    MessageState,
    MissedMessage,
    OutboxItem,
    OutboxStatus,
    ReadState,
    dialect_insert,
    utcnow,
)

log = logging.getLogger(__name__)


async def record_missed(
    session: AsyncSession,
    *,
    account: str,
    conversation: str,
    source_key: str,
    stanza_id: str | None,
    body: str | None,
    encrypted: bool,
    sent_at: dt.datetime,
) -> int | None:
    """Store a missed message; None if this source_key was recorded before."""
    [new_id] = await record_missed_many(
        session,
        [
            {
                "account": account,
                "conversation": conversation,
                "source_key": source_key,
                "stanza_id": stanza_id,
                "body": body,
                "encrypted": encrypted,
                "sent_at": sent_at,
            }
        ],
    )
    return new_id


async def record_missed_many(
    session: AsyncSession, messages: Sequence[dict[str, Any]]
) -> list[int | None]:
    """`record_missed` for a whole poll in one statement: the new id per message, or
    None for one recorded before. Read state is refreshed once per conversation."""
    if not messages:
        return []
    # A parameter list, not `.values(list)`: the statement is compiled once and cached
    # (SQLAlchemy's "insertmanyvalues" still sends one multi-row INSERT); compiling a
    # fresh multi-row VALUES for every batch size cost more than running it.
    stmt = (
        dialect_insert(session)(MissedMessage.__table__)
        .on_conflict_do_nothing(index_elements=["source_key"])
        .returning(MissedMessage.id, MissedMessage.source_key)
    )
    result = await session.execute(stmt, [{**m, "state": MessageState.UNREAD} for m in messages])
    inserted = {key: new_id for new_id, key in result.all()}
    ids = [inserted.pop(m["source_key"], None) for m in messages]
    pairs = {(m["account"], m["conversation"]) for m, i in zip(messages, ids, strict=True) if i}
    await _refresh_many(session, pairs)
    return ids


async def _refresh_many(session: AsyncSession, pairs: set[tuple[str, str]]) -> None:
    if not pairs:
        return
    accounts = sorted({account for account, _ in pairs})
    counts = {
        (account, conversation): int(n)
        for account, conversation, n in (
            await session.execute(
                select(MissedMessage.account, MissedMessage.conversation, func.count())
                .where(
                    MissedMessage.account.in_(accounts),
                    MissedMessage.state == MessageState.UNREAD,
                )
                .group_by(MissedMessage.account, MissedMessage.conversation)
            )
        ).all()
    }
    existing = {
        (state.account, state.conversation): state
        for state in (
            await session.execute(select(ReadState).where(ReadState.account.in_(accounts)))
        ).scalars()
    }
    for account, conversation in pairs:
        state = existing.get((account, conversation))
        if state is None:
            state = ReadState(account=account, conversation=conversation)
            session.add(state)
        state.unread_count = counts.get((account, conversation), 0)


async def mark_delivered(session: AsyncSession, account: str, source_keys: Iterable[str]) -> int:
    keys = list(source_keys)
    if not keys:
        return 0
    now = utcnow()
    conversations = list(
        (
            await session.execute(
                select(MissedMessage.conversation)
                .where(
                    MissedMessage.account == account,
                    MissedMessage.source_key.in_(keys),
                    MissedMessage.state == MessageState.UNREAD,
                )
                .distinct()
            )
        ).scalars()
    )
    result = await session.execute(
        update(MissedMessage)
        .where(
            MissedMessage.account == account,
            MissedMessage.source_key.in_(keys),
            MissedMessage.state == MessageState.UNREAD,
        )
        .values(state=MessageState.DELIVERED, state_changed_at=now)
    )
    await _refresh(session, account, conversations, delivered_at=now)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def mark_displayed(
    session: AsyncSession, reader: str, conversation: str | None, stanza_id: str
) -> int:
    """XEP-0333: a displayed marker for id X means X and everything before it was read."""
    where = [MissedMessage.account == reader, MissedMessage.stanza_id == stanza_id]
    if conversation:
        where.append(MissedMessage.conversation == conversation)
    marked = (
        (
            await session.execute(
                select(MissedMessage).where(*where).order_by(MissedMessage.id.desc())
            )
        )
        .scalars()
        .first()
    )
    if marked is None:
        return 0
    now = utcnow()
    result = await session.execute(
        update(MissedMessage)
        .where(
            MissedMessage.account == reader,
            MissedMessage.conversation == marked.conversation,
            MissedMessage.id <= marked.id,
            MissedMessage.state != MessageState.READ,
        )
        .values(state=MessageState.READ, state_changed_at=now)
    )
    await _refresh(session, reader, [marked.conversation], displayed=(stanza_id, now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def unread_count(session: AsyncSession, account: str) -> int:
    stmt = select(func.count()).where(
        MissedMessage.account == account, MissedMessage.state == MessageState.UNREAD
    )
    return int((await session.execute(stmt)).scalar_one())


async def _refresh(
    session: AsyncSession,
    account: str,
    conversations: Iterable[str],
    *,
    delivered_at: dt.datetime | None = None,
    displayed: tuple[str, dt.datetime] | None = None,
) -> None:
    for conversation in set(conversations):
        unread = (
            await session.execute(
                select(func.count()).where(
                    MissedMessage.account == account,
                    MissedMessage.conversation == conversation,
                    MissedMessage.state == MessageState.UNREAD,
                )
            )
        ).scalar_one()
        state = await session.get(ReadState, (account, conversation))
        if state is None:
            state = ReadState(account=account, conversation=conversation)
            session.add(state)
        state.unread_count = int(unread)
        if delivered_at is not None:
            state.last_delivered_at = delivered_at
        if displayed is not None:
            state.last_displayed_id, state.last_displayed_at = displayed


async def still_unread(session: AsyncSession, ids: Iterable[int]) -> list[MissedMessage]:
    ids = list(ids)
    if not ids:
        return []
    stmt = select(MissedMessage).where(
        MissedMessage.id.in_(ids), MissedMessage.state == MessageState.UNREAD
    )
    return list((await session.execute(stmt.order_by(MissedMessage.id))).scalars())


async def unread_after(
    session: AsyncSession, account: str, after_id: int, limit: int = 200
) -> list[MissedMessage]:
    stmt = (
        select(MissedMessage)
        .where(
            MissedMessage.account == account,
            MissedMessage.id > after_id,
            MissedMessage.state == MessageState.UNREAD,
        )
        .order_by(MissedMessage.id)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def digest_cursor(session: AsyncSession, account: str, channel: str) -> DigestCursor:
    cursor = await session.get(DigestCursor, (account, channel))
    if cursor is None:
        cursor = DigestCursor(account=account, channel=channel, last_message_id=0)
        session.add(cursor)
    return cursor


async def cancel_overtaken(session: AsyncSession, account: str) -> list[int]:
    """Cancel this account's pending watcher notifications that have nothing left to say."""
    rows = (
        await session.execute(
            select(OutboxItem).where(
                OutboxItem.account == account,
                OutboxItem.status == OutboxStatus.PENDING,
                OutboxItem.source == "watcher",
            )
        )
    ).scalars()
    cancelled: list[int] = []
    for row in rows:
        if not row.payload.get("cancel_on_read", True):
            continue
        if row.payload.get("digest"):
            cursor = await digest_cursor(session, account, row.channel)
            left = await unread_after(session, account, cursor.last_message_id, limit=1)
        else:
            left = await still_unread(session, row.payload.get("message_ids", []))
        if left:
            continue
        await cancel(session, row, "messages were read or delivered before sending")
        cancelled.append(row.id)
    return cancelled


async def cancel(session: AsyncSession, row: OutboxItem, reason: str) -> None:
    now = utcnow()
    values: dict[str, object] = {
        "status": OutboxStatus.CANCELLED,
        "finished_at": now,
        "last_error": reason,
        "lease_until": None,
    }
    if row.dedup_key.endswith(":open"):
        values["dedup_key"] = f"{row.dedup_key[: -len(':open')]}:{row.id}"
    await session.execute(
        update(OutboxItem)
        .where(OutboxItem.id == row.id, OutboxItem.status == OutboxStatus.PENDING)
        .values(**values)
    )
    await outbox.log_entry(
        session,
        at=now,
        outbox_id=row.id,
        account=row.account,
        channel=row.channel,
        status="cancelled",
        error=reason,
        attempt=row.attempts,
    )
    log.info(
        "outbox=%s account=%s channel=%s cancelled: %s", row.id, row.account, row.channel, reason
    )
