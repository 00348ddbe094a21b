"""Issue 4.1: at-least-once through SIGKILL, and a draining SIGTERM, on a real process.

ofnotify runs as a subprocess against real Prosody (publishes), Openfire's tables in
PostgreSQL (watcher), the FCM stand-in and aiosmtpd. It is killed at random moments
while it delivers, restarted, and at the end every notification must have reached the
wire at least once, at most once more per kill, with nothing left pending.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from component.config import load_config
from component.store import OutboxItem, make_engine
from tests.support.fake_fcm import FcmReply
from tests.support.ofnotify_process import OfnotifyProcess
from tests.support.ofnotify_service import wait_for
from tests.support.openfire_db import OpenfireDb
from tests.support.push_client import offline_with_push
from tests.support.smtp_server import SmtpServer
from tests.support.stack import Stack
from tests.support.xmpp_client import Client, connect_client
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration

MAIL_USERS = ["jenny", "michael", "soyeon"]


async def outbox_counts(config: Path) -> dict[tuple[str, str], int]:
    engine = make_engine(load_config(config).storage.url)
    try:
        async with engine.connect() as conn:
            stmt = select(OutboxItem.channel, OutboxItem.status, func.count()).group_by(
                OutboxItem.channel, OutboxItem.status
            )
            return {(c, s): n for c, s, n in (await conn.execute(stmt)).all()}
    finally:
        await engine.dispose()


async def outbox_ids(config: Path, channel: str) -> set[int]:
    engine = make_engine(load_config(config).storage.url)
    try:
        async with engine.connect() as conn:
            stmt = select(OutboxItem.id).where(OutboxItem.channel == channel)
            return set((await conn.execute(stmt)).scalars())
    finally:
        await engine.dispose()


def count(counts: dict[tuple[str, str], int], channel: str, status: str | None = None) -> int:
    return sum(
        n for (c, s), n in counts.items() if c == channel and (status is None or s == status)
    )


def crash_config(stack: Stack) -> Path:
    return stack.configure(
        rules=[
            {"event": "offline_message", "channel": "phone"},
            {"event": "offline_message", "channel": "mail"},
        ],
        limits={"pushes_per_second": 100000, "push_burst": 100000},
        delivery={
            "max_attempts": 50,
            "backoff_initial": "0.1s",
            "backoff_max": "0.5s",
            "lease": "3s",
        },
    )


async def start_and_wait(process: OfnotifyProcess, restarts: int) -> None:
    process.start()
    await wait_for(
        lambda: process.log().count("is online") > restarts, timeout=30, what="ofnotify online"
    )


async def setup_push_user(prosody: XmppServer, openfire_db: OpenfireDb) -> Client:
    for user in ("alice", "bob"):
        prosody.register(user, "pw")
    await offline_with_push(prosody, "alice", "tok-crash")
    openfire_db.user_logged_out("alice")  # Openfire would say: alice is offline
    return await connect_client(prosody, "bob", "pw")


async def send_burst(bob: Client, openfire_db: OpenfireDb, start: int, n: int) -> None:
    for i in range(start, start + n):
        bob.xmpp.send_message(mto="alice@example.test", mbody=f"push {i}", mtype="chat")
        openfire_db.store_chat(MAIL_USERS[i % 3], "bob", f"mail {i}", f"m{i}")
    await bob.round_trip()


def message_ids(smtp: SmtpServer) -> Counter[str]:
    found: Counter[str] = Counter()
    for received in smtp.messages:
        parsed: Any = email.message_from_bytes(received.data, policy=email.policy.default)
        found[parsed["Message-ID"]] += 1
    return found


async def test_sigkill_at_random_moments_loses_nothing(stack: Stack) -> None:
    rng = random.Random(4)
    stack.fake_fcm.set_default(
        FcmReply.ok().with_delay(0.02)
    )  # sends take time: kills land mid-send
    config = crash_config(stack)
    process = OfnotifyProcess(config, stack.tmp_path / "ofnotify.log")
    kills, bursts, per_burst = 0, 4, 250
    try:
        await start_and_wait(process, 0)
        bob = await setup_push_user(stack.prosody, stack.openfire_db)
        for burst in range(bursts):
            await send_burst(bob, stack.openfire_db, burst * per_burst, per_burst)
            sent = (burst + 1) * per_burst
            # Publishes are acknowledged only once queued; wait for all of them before
            # killing, because an XMPP server drops pushes for a missing component.
            await wait_for(
                lambda: _queued(config, "phone", sent),  # noqa: B023 - awaited in the loop
                timeout=30,
                what="publishes queued",
            )
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            process.kill()
            kills += 1
            await start_and_wait(process, kills)
        await wait_for(
            lambda: _settled(config, bursts * per_burst), timeout=120, what="all delivered"
        )
        assert process.terminate() == 0
    finally:
        process.kill()

    counts = await outbox_counts(config)
    total = bursts * per_burst
    assert count(counts, "phone") == total and count(counts, "phone", "delivered") == total
    assert count(counts, "mail") == total and count(counts, "mail", "delivered") == total

    pushes = Counter(
        int(r.message["data"]["notification_id"])
        for r in stack.fake_fcm.requests
        if r.status == 200
    )
    assert set(pushes) == await outbox_ids(config, "phone")  # every push at least once
    assert max(pushes.values()) <= 1 + kills  # at most one duplicate per kill

    mails = message_ids(stack.smtp)
    assert len(mails) == total  # every email at least once
    assert max(mails.values()) <= 1 + kills
    duplicates = sum(pushes.values()) - len(pushes) + sum(mails.values()) - len(mails)
    print(f"{kills} kills, {duplicates} duplicate deliveries out of {2 * total}")


async def test_sigterm_drains_and_exits(stack: Stack) -> None:
    stack.fake_fcm.set_default(FcmReply.ok().with_delay(0.05))
    config = crash_config(stack)
    process = OfnotifyProcess(config, stack.tmp_path / "ofnotify.log")
    try:
        await start_and_wait(process, 0)
        bob = await setup_push_user(stack.prosody, stack.openfire_db)
        await send_burst(bob, stack.openfire_db, 0, 300)
        await wait_for(lambda: _queued(config, "phone", 300), timeout=30, what="queued")
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(process.terminate, 60) == 0  # bounded, generously
        after_term = await outbox_counts(config)
        assert count(after_term, "phone", "delivered") < 300  # it really stopped mid-way
        assert "shutting down" in process.log()
        await start_and_wait(process, 1)
        await wait_for(lambda: _settled(config, 300), timeout=60, what="the rest delivered")
        assert process.terminate() == 0
    finally:
        process.kill()
    pushes = Counter(
        int(r.message["data"]["notification_id"])
        for r in stack.fake_fcm.requests
        if r.status == 200
    )
    assert len(pushes) == 300
    assert max(pushes.values()) == 1  # a clean stop sends nothing twice


async def _queued(config: Path, channel: str, n: int) -> bool:
    return count(await outbox_counts(config), channel) >= n


async def _settled(config: Path, n: int) -> bool:
    counts = await outbox_counts(config)
    return all(count(counts, ch, "delivered") >= n for ch in ("phone", "mail"))
