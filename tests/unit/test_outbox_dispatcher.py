"""Outbox and dispatcher logic on a real SQLite database, with a scripted channel."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from component import outbox, registrations
from component.committer import GroupCommitter
from component.compose import Composer
from component.config import Config, DeliveryConfig, parse_config
from component.dispatcher import Dispatcher, backoff
from component.events import OfflineMessage
from component.ingest import Ingest
from component.policy import Policy
from component.store import (
    DeliveryLogEntry,
    OutboxItem,
    Registration,
    create_schema,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from notifiers.base import Notification, Notifier, SendResult


class ScriptedNotifier(Notifier):
    """Answers from a script; the dispatcher's logic is what is under test here."""

    kind = "scripted"

    def __init__(self, script: list[SendResult]) -> None:
        super().__init__("phone")
        self.script = script
        self.sent: list[Notification] = []

    @classmethod
    async def create(cls, name: str, config: Any) -> ScriptedNotifier:
        return cls([])

    async def send(self, notification: Notification) -> SendResult:
        self.sent.append(notification)
        return self.script.pop(0) if self.script else SendResult.delivered()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'o.db'}")
    await create_schema(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def add_registration(db: async_sessionmaker[AsyncSession]) -> int:
    async with db() as s, s.begin():
        reg = await registrations.register(
            s,
            account="alice@example.test",
            device_id="d1",
            muc="",
            token="tok-123456789",
            channel="phone",
            max_per_account=5,
        )
        return reg.id


def item(reg_id: int | None, key: str = "k1", delay: float = 0) -> OutboxItem:
    return OutboxItem(
        dedup_key=key,
        event="offline_message",
        account="alice@example.test",
        channel="phone",
        registration_id=reg_id,
        conversation="bob@example.test",
        payload={"message_count": 1},
        due_at=utcnow() + dt.timedelta(seconds=delay),
    )


def config_for(tmp: Path) -> Config:
    sa = tmp / "sa.json"
    sa.write_text("{}")
    text = f"""
xmpp: {{jid: push.example.test, secret: x}}
channels:
  phone: {{type: fcm, project_id: p, service_account_file: {sa}}}
rules:
  - {{event: offline_message, channel: phone}}
"""
    return parse_config(text, "test", {})


async def run_until_settled(
    db: async_sessionmaker[AsyncSession], notifier: Notifier, config: DeliveryConfig, rounds: int
) -> list[OutboxItem]:
    committer = GroupCommitter(db)
    committer.start()
    composer = Composer(config_for(Path(tempfile.mkdtemp())))
    dispatcher = Dispatcher(db, committer, {"phone": notifier}, config, composer, idle_poll=0.05)
    task = asyncio.create_task(dispatcher.run())
    try:
        for _ in range(rounds * 20):
            await asyncio.sleep(0.05)
            async with db() as s:
                rows = list((await s.execute(select(OutboxItem))).scalars())
            if rows and all(r.status != "pending" for r in rows):
                break
    finally:
        await dispatcher.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await committer.stop()
    return rows


FAST = DeliveryConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)


async def test_enqueue_drops_duplicates(db: async_sessionmaker[AsyncSession]) -> None:
    async with db() as s, s.begin():
        first = await outbox.enqueue(s, [item(None, "same")])
        second = await outbox.enqueue(s, [item(None, "same"), item(None, "other")])
    assert len(first) == 1 and len(second) == 1


async def test_delivered_and_logged(db: async_sessionmaker[AsyncSession]) -> None:
    reg = await add_registration(db)
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(reg)])
    notifier = ScriptedNotifier([])
    [row] = await run_until_settled(db, notifier, FAST, 5)
    assert row.status == "delivered" and row.attempts == 1
    assert notifier.sent[0].target == "tok-123456789"
    async with db() as s:
        [entry] = (await s.execute(select(DeliveryLogEntry))).scalars()
    assert (entry.status, entry.attempt, entry.outbox_id) == ("delivered", 1, row.id)
    assert "tok-123456789" not in entry.target  # shown shortened only


async def test_retry_then_give_up_with_reason(db: async_sessionmaker[AsyncSession]) -> None:
    reg = await add_registration(db)
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(reg)])
    notifier = ScriptedNotifier([SendResult.retry("UNAVAILABLE (HTTP 503)")] * 5)
    [row] = await run_until_settled(db, notifier, FAST, 10)
    assert row.status == "failed" and row.attempts == 3
    assert row.last_error == "gave up after 3 attempts: UNAVAILABLE (HTTP 503)"
    async with db() as s:
        statuses = [e.status for e in (await s.execute(select(DeliveryLogEntry))).scalars()]
    assert statuses == ["retry", "retry", "failed"]
    async with db() as s, s.begin():
        assert await outbox.requeue_failed(s, account="alice@example.test") == 1
    [row] = await run_until_settled(db, ScriptedNotifier([]), FAST, 5)
    assert row.status == "delivered"


async def test_retry_after_is_honoured(db: async_sessionmaker[AsyncSession]) -> None:
    reg = await add_registration(db)
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(reg)])
    notifier = ScriptedNotifier([SendResult.retry("QUOTA_EXCEEDED", retry_after=0.6)])
    sent_at: list[dt.datetime] = []
    original = notifier.send

    async def timed(n: Notification) -> SendResult:
        sent_at.append(utcnow())
        return await original(n)

    notifier.send = timed  # type: ignore[method-assign]
    [row] = await run_until_settled(db, notifier, FAST, 10)
    assert row.status == "delivered" and len(sent_at) == 2
    assert (sent_at[1] - sent_at[0]).total_seconds() >= 0.6


async def test_target_invalid_disables_registration(db: async_sessionmaker[AsyncSession]) -> None:
    reg = await add_registration(db)
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(reg, "a")])
    await run_until_settled(
        db, ScriptedNotifier([SendResult.target_invalid("UNREGISTERED")]), FAST, 5
    )
    async with db() as s:
        registration = await s.get(Registration, reg)
        assert registration is not None and registration.disabled_at is not None
    # Later notifications for the dead registration are skipped, not sent.
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(reg, "b")])
    notifier = ScriptedNotifier([])
    rows = await run_until_settled(db, notifier, FAST, 5)
    assert notifier.sent == []
    assert {r.dedup_key: r.status for r in rows} == {"a": "failed", "b": "failed"}
    async with db() as s:
        last = list((await s.execute(select(DeliveryLogEntry))).scalars())[-1]
    assert (last.status, last.error) == ("skipped", "registration disabled (UNREGISTERED)")


async def test_lease_hides_claimed_rows_until_it_expires(
    db: async_sessionmaker[AsyncSession],
) -> None:
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(None)])
    now = utcnow()
    async with db() as s, s.begin():
        assert len(await outbox.claim_due(s, 10, lease=30, now=now)) == 1
    async with db() as s, s.begin():
        assert await outbox.claim_due(s, 10, lease=30, now=now + dt.timedelta(seconds=10)) == []
    # The claimer died: after the lease the row is due again (at-least-once).
    async with db() as s, s.begin():
        assert len(await outbox.claim_due(s, 10, lease=30, now=now + dt.timedelta(seconds=31))) == 1


async def test_delayed_rows_wait(db: async_sessionmaker[AsyncSession]) -> None:
    async with db() as s, s.begin():
        await outbox.enqueue(s, [item(None, delay=60)])
    async with db() as s, s.begin():
        assert await outbox.claim_due(s, 10, lease=30) == []


def test_backoff_grows_caps_and_respects_retry_after() -> None:
    config = DeliveryConfig(backoff_initial=2, backoff_max=60)
    assert 1 <= backoff(1, config, None) <= 2
    assert 4 <= backoff(3, config, None) <= 8
    assert 30 <= backoff(20, config, None) <= 60
    assert backoff(1, config, 45) >= 45


async def test_registration_is_stable_and_limited(db: async_sessionmaker[AsyncSession]) -> None:
    async with db() as s, s.begin():
        first = await registrations.register(
            s, account="a@x", device_id="d", muc="", token="t1", channel="phone", max_per_account=2
        )
        node, secret = first.node, first.secret
    async with db() as s, s.begin():
        again = await registrations.register(
            s, account="a@x", device_id="d", muc="", token="t2", channel="phone", max_per_account=2
        )
        assert (again.node, again.secret, again.token) == (node, secret, "t2")
        await registrations.register(
            s, account="a@x", device_id="d2", muc="", token="t", channel="phone", max_per_account=2
        )
    with pytest.raises(registrations.TooManyRegistrations):
        async with db() as s, s.begin():
            await registrations.register(
                s,
                account="a@x",
                device_id="d3",
                muc="",
                token="t",
                channel="phone",
                max_per_account=2,
            )
    async with db() as s, s.begin():
        assert await registrations.unregister(s, account="other@x", device_id="d", muc=None) == []
        assert await registrations.unregister(s, account="a@x", device_id="d", muc=None) == [node]


async def test_rows_due_now_are_leased_at_insert_and_sent_without_a_claim(
    db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Ingest hands rows due now to the dispatcher with the insert (leased to it), and
    leaves later or surplus rows to the claim loop."""
    reg = await add_registration(db)
    config = config_for(tmp_path)
    committer = GroupCommitter(db)
    committer.start()
    notifier = ScriptedNotifier([])
    # A long idle poll: only a hand-over (or a wake-up) can make this fast.
    dispatcher = Dispatcher(
        db,
        committer,
        {"phone": notifier},
        DeliveryConfig(batch_size=2),
        Composer(config),
        idle_poll=3600,
    )
    claims: list[int] = []
    original_claim = dispatcher._claim

    async def counting_claim(limit: int) -> list[OutboxItem]:
        rows = await original_claim(limit)
        claims.extend(row.id for row in rows)
        return rows

    dispatcher._claim = counting_claim  # type: ignore[method-assign]
    ingest = Ingest(
        committer, Policy(config), dispatcher.wake, include_body=False, direct=dispatcher
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.1)  # the loop's first claim found nothing and sleeps
        event = OfflineMessage(
            account="alice@example.test",
            dedup_key="push:1:a",
            sender="bob@example.test",
            registration_id=reg,
            source="xep0357",
        )
        [row_id] = await ingest.publish(event, "phone")
        async with db() as s:
            stored = await s.get(OutboxItem, row_id)
            assert stored is not None and stored.lease_until is not None  # leased at insert
        for _ in range(100):
            if notifier.sent:
                break
            await asyncio.sleep(0.02)
        assert [n.outbox_id for n in notifier.sent] == [row_id]
        assert claims == []  # never claimed: handed over
        for _ in range(100):
            async with db() as s:
                stored = await s.get(OutboxItem, row_id)
            if stored is not None and stored.status == "delivered":
                break
            await asyncio.sleep(0.02)
        assert stored is not None and stored.status == "delivered"
        assert stored.lease_until is None
    finally:
        await dispatcher.stop(1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await committer.stop()


async def test_no_hand_over_when_the_dispatcher_is_full_or_not_running(
    db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    reg = await add_registration(db)
    config = config_for(tmp_path)
    committer = GroupCommitter(db)
    committer.start()
    dispatcher = Dispatcher(
        db, committer, {"phone": ScriptedNotifier([])}, DeliveryConfig(), Composer(config)
    )
    woken: list[bool] = []
    ingest = Ingest(
        committer,
        Policy(config),
        lambda: woken.append(True),
        include_body=False,
        direct=dispatcher,
    )
    try:
        # Not running yet (e.g. waiting for the watcher to catch up): nothing is leased.
        event = OfflineMessage(
            account="alice@example.test",
            dedup_key="push:1:b",
            registration_id=reg,
            source="xep0357",
        )
        [row_id] = await ingest.publish(event, "phone")
        async with db() as s:
            stored = await s.get(OutboxItem, row_id)
        assert stored is not None and stored.lease_until is None
        assert woken == [True]  # the claim loop will pick it up
    finally:
        await committer.stop()
