"""`ofnotify send-test`: one push, now, to every device an account registered.

It answers "does a push from ofnotify reach this phone at all?" without waiting for
someone to send a message: each device gets a data message marked `test: true`
(no sender, no body), the answer of FCM is printed and written to the delivery log
like any attempt, and a token FCM reports dead is disabled as the dispatcher would.
It does not go through the outbox: nothing is retried, and a running service is not
needed (nor disturbed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notifiers import Notification, Notifier, Outcome, create_notifier

from . import registrations
from .config import Config
from .redact import shorten
from .store import DeliveryLogEntry, Registration, create_schema, make_engine, make_sessionmaker


@dataclass(frozen=True)
class SendTestResult:
    channel: str
    target: str  # shortened, as in the delivery log
    status: str
    reason: str
    latency_ms: float


class NothingToTest(Exception):
    """The account has no enabled registration on a push channel."""


async def send_test(
    config: Config, account: str, channel: str | None = None
) -> list[SendTestResult]:
    push_channels = [
        name for name, c in config.channels.items() if c.type == "fcm" and channel in (None, name)
    ]
    engine = make_engine(config.storage.url)
    try:
        await create_schema(engine)
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session:
            devices = await _devices(session, account, push_channels)
        if not devices:
            where = f" on channel {channel!r}" if channel else ""
            raise NothingToTest(f"{account} has no enabled push registration{where}")
        results: list[tuple[Registration, SendTestResult, Outcome]] = []
        for name in push_channels:
            mine = [d for d in devices if d.channel == name]
            if mine:
                notifier = await create_notifier(name, config.channels[name])
                try:
                    results += [await _send(notifier, d) for d in mine]
                finally:
                    await notifier.close()
        async with sessionmaker() as session, session.begin():
            for device, result, outcome in results:
                session.add(
                    DeliveryLogEntry(
                        account=account,
                        channel=result.channel,
                        target=result.target,
                        status=result.status,
                        error=f"send-test{': ' + result.reason if result.reason else ''}",
                        attempt=0,
                        latency_ms=result.latency_ms,
                    )
                )
                if outcome is Outcome.TARGET_INVALID:
                    await registrations.disable(session, device.id, result.reason)
        return [result for _, result, _ in results]
    finally:
        await engine.dispose()


async def _devices(session: AsyncSession, account: str, channels: list[str]) -> list[Registration]:
    stmt = (
        select(Registration)
        .where(
            Registration.account == account,
            Registration.channel.in_(channels),
            Registration.disabled_at.is_(None),
        )
        .order_by(Registration.id)
    )
    return list((await session.execute(stmt)).scalars())


async def _send(
    notifier: Notifier, device: Registration
) -> tuple[Registration, SendTestResult, Outcome]:
    notification = Notification(
        outbox_id=0,
        account=device.account,
        target=device.token,
        conversation=device.account,
        message_count=0,
        extra={"test": "true"},
    )
    started = time.monotonic()
    sent = await notifier.send(notification)
    latency_ms = (time.monotonic() - started) * 1000
    result = SendTestResult(
        channel=device.channel,
        target=f"{device.channel}:{shorten(device.token)}",
        status=sent.outcome.value,
        reason=sent.reason,
        latency_ms=round(latency_ms, 1),
    )
    return device, result, sent.outcome
