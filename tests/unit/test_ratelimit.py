"""Per-account push rate limit: tokens, waits, and folding of excess pushes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from component import registrations
from component.committer import GroupCommitter
from component.events import OfflineMessage
from component.ingest import Ingest
from component.policy import Policy
from component.ratelimit import TokenBuckets
from component.store import OutboxItem, create_schema, make_engine, make_sessionmaker, utcnow
from tests.unit.test_outbox_dispatcher import config_for


def test_burst_then_rate() -> None:
    buckets = TokenBuckets(rate=5, burst=5)
    assert [buckets.take("a", now=0.0) for _ in range(5)] == [0.0] * 5
    assert abs(buckets.take("a", now=0.0) - 0.2) < 1e-9
    assert buckets.take("b", now=0.0) == 0.0  # accounts are independent
    assert buckets.take("a", now=1.0) == 0.0  # refilled


def test_memory_is_bounded() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        buckets.take(f"account-{i}", now=0.0)
    assert len(buckets._buckets) == 100


async def test_excess_pushes_fold_into_one_row_per_conversation(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    await create_schema(engine)
    sessionmaker = make_sessionmaker(engine)
    committer = GroupCommitter(sessionmaker)
    committer.start()
    woken: list[None] = []
    ingest = Ingest(
        committer,
        Policy(config_for(tmp_path)),
        lambda: woken.append(None),
        include_body=False,
        buckets=TokenBuckets(rate=0.001, burst=5),  # no refill while the test runs
    )
    async with sessionmaker() as session, session.begin():
        await registrations.register(
            session,
            account="alice@x",
            device_id="d",
            muc="",
            token="t",
            channel="phone",
            max_per_account=5,
        )
    try:
        for i in range(50):
            sender = "bob@x" if i % 2 else "carol@x"
            event = OfflineMessage(
                account="alice@x",
                dedup_key=f"p{i}",
                source="xep0357",
                sender=sender,
                registration_id=1,
            )
            await ingest.publish(event, "phone")
        async with sessionmaker() as session:
            rows = list((await session.execute(select(OutboxItem))).scalars())
    finally:
        await committer.stop()
        await engine.dispose()
    immediate = [r for r in rows if not r.dedup_key.endswith(":open")]
    folded = [r for r in rows if r.dedup_key.endswith(":open")]
    assert len(immediate) == 5  # the burst
    assert sorted(r.conversation for r in folded) == ["bob@x", "carol@x"]  # one per conversation
    assert all(r.due_at > utcnow() for r in folded)  # they wait for the next slot
