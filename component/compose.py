"""What a due outbox row becomes at send time: a Notification, or a reason not to send.

Everything that can change between deciding and sending is checked here, last thing
before the channel is called: the device may be gone, the messages read, the person
back online, the same message already pushed by the other source, the address unknown.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from notifiers import Notification
from notifiers.base import MissedMessage as MissedSummary

from . import openfire, outbox, readstate
from .config import Config
from .redact import mask_email, shorten
from .store import MissedMessage, OutboxItem, OutboxStatus, Registration, utcnow

log = logging.getLogger(__name__)

AfterDelivery = Callable[[AsyncSession], Awaitable[None]]

# Two pushes for one message from the two sources are this close in time at most.
DUPLICATE_WINDOW = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class Ready:
    notification: Notification
    shown_target: str  # for logs and the delivery log: never the whole token/address
    after_delivery: AfterDelivery | None = None


@dataclass(frozen=True)
class Drop:
    status: str  # "cancelled" (overtaken) or "skipped" (nowhere to send)
    reason: str


class Composer:
    def __init__(self, config: Config, openfire_engine: AsyncEngine | None = None) -> None:
        self._config = config
        self._openfire = openfire_engine
        # ofUser rows for one claim: a digest names the same senders again and again.
        self._users: dict[str, openfire.UserInfo | None] = {}
        # The claim's registrations, loaded in one query (see prefetch).
        self._registrations: dict[int, Registration] = {}

    async def prefetch(self, session: AsyncSession, rows: list[OutboxItem]) -> None:
        """Load the claim's registrations in one query instead of one per push.

        Held here, not left to the session's identity map: that map holds objects
        weakly, so unreferenced rows vanish and `session.get` queries again.
        """
        self._users.clear()  # names and addresses may change between claims
        ids = {row.registration_id for row in rows if row.registration_id is not None}
        self._registrations = {}
        if ids:
            found = await session.execute(select(Registration).where(Registration.id.in_(ids)))
            self._registrations = {r.id: r for r in found.scalars()}

    async def compose(self, session: AsyncSession, row: OutboxItem) -> Ready | Drop:
        kind = self._config.channels[row.channel].type
        if kind == "fcm":
            return await self._push(session, row)
        return await self._email(session, row)

    # -- push -------------------------------------------------------------------

    async def _push(self, session: AsyncSession, row: OutboxItem) -> Ready | Drop:
        if row.registration_id is None:
            return Drop("skipped", "no registration for this notification")
        registration = self._registrations.get(row.registration_id)
        if registration is None:  # not prefetched (a caller composing a single row)
            registration = await session.get(Registration, row.registration_id)
        if registration is None:
            return Drop("skipped", "registration was removed")
        if registration.disabled_at is not None:
            return Drop("skipped", f"registration disabled ({registration.disabled_reason})")
        if row.source == "watcher":
            ids = row.payload.get("message_ids", [])
            if row.payload.get("cancel_on_read", True) and not await readstate.still_unread(
                session, ids
            ):
                return Drop("cancelled", "message was read or delivered before sending")
        duplicate = await self._duplicate_push(session, row)
        if duplicate is not None:
            return Drop("cancelled", f"same message already pushed (outbox {duplicate})")
        if row.source == "xep0357" and await self._online_in_openfire(row.account):
            return Drop("cancelled", "recipient is online (Openfire ofPresence)")
        unread = None
        if self._config.openfire is not None:
            unread = await readstate.unread_count(session, row.account)
        notification = Notification(
            outbox_id=row.id,
            account=row.account,
            target=registration.token,
            conversation=row.conversation,
            message_count=int(row.payload.get("message_count", 1)),
            unread_count=unread,
            sender=row.payload.get("sender"),
            body=row.payload.get("body"),
        )
        return Ready(notification, f"{registration.channel}:{shorten(registration.token)}")

    async def _duplicate_push(self, session: AsyncSession, row: OutboxItem) -> int | None:
        """One push per message even when Openfire's plugin and the watcher both saw it.

        The publish carries no message id, so the match is: same device, the other
        source, close in time, and the same conversation when both know it.
        """
        if self._config.openfire is None or row.registration_id is None:
            return None
        other = "xep0357" if row.source == "watcher" else "watcher"
        stmt = select(OutboxItem.id, OutboxItem.conversation).where(
            OutboxItem.registration_id == row.registration_id,
            OutboxItem.source == other,
            OutboxItem.id != row.id,
            OutboxItem.status.in_([OutboxStatus.DELIVERED, OutboxStatus.PENDING]),
            OutboxItem.created_at >= row.created_at - DUPLICATE_WINDOW,
            OutboxItem.created_at <= row.created_at + DUPLICATE_WINDOW,
        )
        if other == "watcher":
            # A watcher push still pending will itself yield to this one.
            stmt = stmt.where(OutboxItem.status == OutboxStatus.DELIVERED)
        for other_id, conversation in (await session.execute(stmt)).all():
            if not conversation or not row.conversation or conversation == row.conversation:
                return int(other_id)
        return None

    async def _online_in_openfire(self, account: str) -> bool:
        settings = self._config.openfire
        if settings is None or self._openfire is None or not settings.suppress_when_online:
            return False
        username, _, domain = account.rpartition("@")
        if domain != settings.domain:
            return False
        try:
            async with self._openfire.connect() as conn:
                return not await openfire.is_offline(conn, username)
        except Exception:
            # Unknown is not online: a duplicate push beats a missed one.
            log.warning("could not read Openfire presence for %s", account, exc_info=True)
            return False

    # -- email ------------------------------------------------------------------

    async def _email(self, session: AsyncSession, row: OutboxItem) -> Ready | Drop:
        override = self._config.accounts.get(row.account)
        info = await self._user_info(row.account)
        address = (override.email if override else None) or (info.email if info else None)
        if not address:
            return Drop("skipped", "no email address (ofUser.email empty, no override)")
        digest = bool(row.payload.get("digest"))
        cursor = (
            await readstate.digest_cursor(session, row.account, row.channel) if digest else None
        )
        if cursor is not None:
            messages = await readstate.unread_after(session, row.account, cursor.last_message_id)
        else:
            messages = await readstate.still_unread(session, row.payload.get("message_ids", []))
        messages = await self._drop_delivered(session, row.account, messages)
        if not messages:
            return Drop("cancelled", "nothing unread any more")
        names = {m.conversation: await self._display_name(m.conversation) for m in messages}
        summaries = tuple(
            MissedSummary(
                sender=m.conversation,
                sender_name=names[m.conversation],
                body=m.body if self._config.privacy.include_body else None,
                encrypted=m.encrypted,
                sent_at=m.sent_at,
            )
            for m in messages
        )
        notification = Notification(
            outbox_id=row.id,
            account=row.account,
            target=address,
            conversation=messages[-1].conversation,
            message_count=len(messages),
            unread_count=len(messages),
            messages=summaries,
            recipient_name=(override.name if override else None) or (info.name if info else None),
            locale=override.locale if override else None,
        )
        last_id = messages[-1].id

        async def after_delivery(db: AsyncSession) -> None:
            if cursor is None:
                return
            saved = await readstate.digest_cursor(db, row.account, row.channel)
            saved.last_message_id = max(saved.last_message_id, last_id)
            saved.last_sent_at = utcnow()

        return Ready(notification, f"{row.channel}:{mask_email(address)}", after_delivery)

    async def _drop_delivered(
        self, session: AsyncSession, account: str, messages: list[MissedMessage]
    ) -> list[MissedMessage]:
        """Last check against Openfire: rows that vanished were delivered meanwhile."""
        if self._openfire is None or not messages:
            return messages
        username = account.rpartition("@")[0]
        try:
            async with self._openfire.connect() as conn:
                present = await openfire.present_keys(conn, [username])
        except Exception:
            log.warning("could not re-check ofOffline for %s; sending", account, exc_info=True)
            return messages
        present_keys = {f"of:{u}:{mid}" for u, mid in present}
        gone = [m.source_key for m in messages if m.source_key not in present_keys]
        if gone:
            await readstate.mark_delivered(session, account, gone)
        return [m for m in messages if m.source_key in present_keys]

    async def _user_info(self, account: str) -> openfire.UserInfo | None:
        settings = self._config.openfire
        username, _, domain = account.rpartition("@")
        if self._openfire is None or settings is None or domain != settings.domain:
            return None
        if username in self._users:
            return self._users[username]
        try:
            async with self._openfire.connect() as conn:
                info = await openfire.user_info(conn, username)
        except Exception:
            log.warning("could not read ofUser for %s", account, exc_info=True)
            raise
        self._users[username] = info
        return info

    async def _display_name(self, jid: str) -> str | None:
        override = self._config.accounts.get(jid)
        if override and override.name:
            return override.name
        info = await self._user_info(jid)
        return info.name if info else None


async def finish_open_row(session: AsyncSession, row: OutboxItem, delivered_or_moot: bool) -> None:
    """An 'open' row (a digest, or pushes folded by the rate limit) left the queue: free
    its key for the next one, and for a digest open a new one if more arrived.

    After a failure no follow-up is opened (it would retry the same mail forever); the
    unread messages join the next digest that a new message opens.
    """
    if not row.dedup_key.endswith(":open"):
        return
    closed_key = f"{row.dedup_key[: -len(':open')]}:{row.id}"
    await session.execute(
        update(OutboxItem).where(OutboxItem.id == row.id).values(dedup_key=closed_key)
    )
    if not delivered_or_moot or not row.payload.get("digest"):
        return
    cursor = await readstate.digest_cursor(session, row.account, row.channel)
    if not await readstate.unread_after(session, row.account, cursor.last_message_id, limit=1):
        return
    now = utcnow()
    due = now + dt.timedelta(seconds=float(row.payload.get("delay") or 0))
    interval = float(row.payload.get("min_interval") or 0)
    if interval and cursor.last_sent_at is not None:
        due = max(due, cursor.last_sent_at + dt.timedelta(seconds=interval))
    follow_up = OutboxItem(
        dedup_key=row.dedup_key,
        event=row.event,
        source=row.source,
        account=row.account,
        channel=row.channel,
        registration_id=None,
        conversation=row.conversation,
        payload=row.payload,
        due_at=due,
    )
    await outbox.enqueue(session, [follow_up])


__all__ = ["AfterDelivery", "Composer", "Drop", "Ready", "finish_open_row"]
