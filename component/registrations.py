"""Push registrations: the devices that asked to be woken up, by node."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .store import Registration, utcnow


@dataclass(frozen=True)
class NodeInfo:
    """What a publish needs to know about its node: small, cacheable."""

    registration_id: int
    account: str
    secret: str
    channel: str
    disabled: bool

    @property
    def domain(self) -> str:
        return self.account.rpartition("@")[2]


class TooManyRegistrations(Exception):
    pass


async def register(
    session: AsyncSession,
    *,
    account: str,
    device_id: str,
    muc: str,
    token: str,
    channel: str,
    max_per_account: int,
) -> Registration:
    """Same account + device (+ muc) again: same node and secret, new token."""
    existing = (
        await session.execute(
            select(Registration).where(
                Registration.account == account,
                Registration.device_id == device_id,
                Registration.muc == muc,
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        existing.token = token
        existing.channel = channel
        existing.updated_at = utcnow()
        existing.disabled_at = None
        existing.disabled_reason = None
        return existing
    count = (
        await session.execute(
            select(func.count()).select_from(Registration).where(Registration.account == account)
        )
    ).scalar_one()
    if count >= max_per_account:
        raise TooManyRegistrations(account)
    registration = Registration(
        account=account,
        device_id=device_id,
        muc=muc,
        token=token,
        channel=channel,
        node=secrets.token_urlsafe(18),
        secret=secrets.token_urlsafe(24),
    )
    session.add(registration)
    await session.flush()
    return registration


async def unregister(
    session: AsyncSession, *, account: str, device_id: str, muc: str | None
) -> list[str]:
    """Remove the account's registrations of that device; returns the dropped nodes."""
    where = [Registration.account == account, Registration.device_id == device_id]
    if muc is not None:
        where.append(Registration.muc == muc)
    nodes = list((await session.execute(select(Registration.node).where(*where))).scalars())
    if nodes:
        await session.execute(delete(Registration).where(*where))
    return nodes


async def disable(session: AsyncSession, registration_id: int, reason: str) -> None:
    await session.execute(
        update(Registration)
        .where(Registration.id == registration_id, Registration.disabled_at.is_(None))
        .values(disabled_at=utcnow(), disabled_reason=reason[:255])
    )


class NodeCache:
    """Publishes arrive by the thousand per second for a handful of nodes.

    Entries live briefly so that changes made by another process (a standby taking
    over, an operator) are seen soon; changes made here invalidate at once.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ttl: float = 30.0) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._entries: dict[str, tuple[float, NodeInfo | None]] = {}

    async def get(self, node: str) -> NodeInfo | None:
        now = time.monotonic()
        hit = self._entries.get(node)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._sessionmaker() as session:
            row = (
                await session.execute(select(Registration).where(Registration.node == node))
            ).scalar_one_or_none()
        info = (
            NodeInfo(row.id, row.account, row.secret, row.channel, row.disabled_at is not None)
            if row is not None
            else None
        )
        if len(self._entries) > 100_000:  # unknown nodes must not grow memory forever
            self._entries.clear()
        self._entries[node] = (now + self._ttl, info)
        return info

    def invalidate(self, node: str | None = None) -> None:
        if node is None:
            self._entries.clear()
        else:
            self._entries.pop(node, None)
