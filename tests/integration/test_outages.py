"""Issue 4.2: outages of everything ofnotify depends on, and how it comes back."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from component.cli import main as cli
from tests.integration.test_watcher_email import mails_to, watcher_caught_up
from tests.support.fake_fcm import FakeFcm, FcmReply
from tests.support.ofnotify_service import delivery_log, running_service, wait_for
from tests.support.openfire_db import OpenfireDb
from tests.support.postgres import PostgresServer
from tests.support.push_client import offline_with_push
from tests.support.smtp_server import SmtpServer
from tests.support.stack import Stack, configure
from tests.support.xmpp_client import Client, connect_client
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration

NO_LIMITS = {"pushes_per_second": 100000, "push_burst": 100000}


async def push_users(prosody: XmppServer, users: list[str], openfire_db: OpenfireDb) -> Client:
    prosody.register("bob", "pw")
    for user in users:
        prosody.register(user, "pw")
        await offline_with_push(prosody, user, f"tok-{user}")
        openfire_db.user_logged_out(user)
    return await connect_client(prosody, "bob", "pw")


async def test_xmpp_restart_under_traffic_loses_no_offline_message(stack: Stack) -> None:
    config = stack.configure(
        delay="0s",
        rules=[
            {"event": "offline_message", "channel": "mail"},
        ],
    )
    async with running_service(config) as service:
        await watcher_caught_up(service)
        restart = asyncio.create_task(asyncio.to_thread(stack.prosody.restart))
        for i in range(30):  # Openfire keeps storing while the component link is down
            stack.openfire_db.store_chat("jenny", "michael", f"during restart {i}", f"r{i}")
            await asyncio.sleep(0.05)
        await restart
        assert service.connection is not None
        await wait_for(lambda: service.connection.connected, timeout=30, what="reconnection")
        await wait_for(
            lambda: len(mails_to(stack.smtp, "jenny@mail.example")) == 30,
            timeout=30,
            what="30 mails",
        )


async def test_ofnotify_database_outage(
    stack: Stack, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    storage = postgres_server.create_database(f"ofn_{uuid.uuid4().hex[:12]}")
    config = stack.configure(
        storage_url=storage,
        rules=[{"event": "offline_message", "channel": "phone"}],
        limits=NO_LIMITS,
    )
    async with running_service(config) as service:
        bob = await push_users(stack.prosody, ["alice"], stack.openfire_db)
        await bob.send_chat("alice@example.test", "before")
        await stack.fake_fcm.wait_for_requests(1, timeout=10)
        await asyncio.to_thread(postgres_server.stop)
        await bob.send_chat("alice@example.test", "during the outage")  # answered 'wait'
        await wait_for(lambda: "could not queue" in caplog.text, what="a logged failure")
        await asyncio.sleep(1.5)
        assert service.connection is not None and service.connection.connected
        await asyncio.to_thread(postgres_server.start)
        await bob.send_chat("alice@example.test", "after")
        await stack.fake_fcm.wait_for_requests(2, timeout=20)
        await bob.go_offline()
    assert "postgres@" not in caplog.text  # no URLs with credentials in logs


async def test_smtp_down_for_a_while_then_sent_once(
    tmp_path: Path,
    prosody: XmppServer,
    fake_fcm: FakeFcm,
    postgres_db: str,
    openfire_db: OpenfireDb,
) -> None:
    smtp = SmtpServer()
    smtp.start()
    port = smtp.port
    smtp.stop()  # the mail server is down from the start
    config = configure(
        tmp_path,
        prosody,
        fake_fcm,
        smtp,
        postgres_db,
        delay="0s",
        delivery={"max_attempts": 30, "backoff_initial": "0.2s", "backoff_max": "1s"},
    )
    async with running_service(config) as service:
        await watcher_caught_up(service)
        openfire_db.store_chat("jenny", "michael", "queued while SMTP is down", "s1")
        await wait_for(lambda: _count(config, "retry", 3), timeout=20, what="three failed attempts")
        smtp = SmtpServer(port=port)
        smtp.start()
        try:
            await wait_for(
                lambda: mails_to(smtp, "jenny@mail.example"), timeout=20, what="the mail"
            )
            await asyncio.sleep(1.5)
            assert len(mails_to(smtp, "jenny@mail.example")) == 1
        finally:
            smtp.stop()


async def test_fcm_chaos_everything_delivered_retry_after_honoured(stack: Stack) -> None:
    rng = random.Random(7)
    users = ["u1", "u2", "u3"]
    for user in users:
        replies: list[FcmReply] = []
        while len(replies) < 200:
            roll = rng.random()
            if roll < 0.3:
                replies.append(FcmReply.unavailable())
            elif roll < 0.4:
                replies += [FcmReply.quota_exceeded(retry_after=1)] * 3  # a burst
            else:
                replies.append(FcmReply.ok())
        stack.fake_fcm.script(f"tok-{user}", replies)
    stack.fake_fcm.always("tok-doomed", FcmReply.internal())
    max_attempts = 30
    config = stack.configure(
        rules=[{"event": "offline_message", "channel": "phone"}],
        limits=NO_LIMITS,
        delivery={"max_attempts": max_attempts, "backoff_initial": "0.05s", "backoff_max": "0.3s"},
    )
    per_user = 15
    async with running_service(config):
        bob = await push_users(stack.prosody, [*users, "doomed"], stack.openfire_db)
        for i in range(per_user):
            for user in users:
                bob.xmpp.send_message(mto=f"{user}@example.test", mbody=f"m{i}", mtype="chat")
        await bob.send_chat("doomed@example.test", "never arrives")
        await wait_for(
            lambda: _settled(config, per_user * len(users)), timeout=90, what="everything settled"
        )
        await bob.go_offline()

    by_notification: dict[str, list[tuple[float, int, float | None]]] = defaultdict(list)
    for request in stack.fake_fcm.requests:
        retry_after = 1.0 if request.status == 429 else None
        by_notification[request.message["data"]["notification_id"]].append(
            (request.received_at, request.status, retry_after)
        )
    delivered = [n for n, attempts in by_notification.items() if attempts[-1][1] == 200]
    assert len(delivered) == per_user * len(users)
    for attempts in by_notification.values():
        assert len(attempts) <= max_attempts  # bounded
        for (at, _, retry_after), (next_at, _, _) in itertools.pairwise(attempts):
            if retry_after is not None:
                assert next_at - at >= retry_after - 0.01  # Retry-After never violated

    # The doomed one gave up with its reason; an operator sees it and re-queues it.
    runner = CliRunner()
    shown = await asyncio.to_thread(
        runner.invoke, cli, ["deliveries", "--config", str(config), "--status", "failed", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    [failed] = [json.loads(line) for line in shown.output.splitlines()]
    assert failed["account"] == "doomed@example.test"
    assert f"gave up after {max_attempts} attempts: INTERNAL (HTTP 500)" == failed["error"]
    stack.fake_fcm.always("tok-doomed", None)
    requeued = await asyncio.to_thread(
        runner.invoke, cli, ["requeue", "--config", str(config), "--user", "doomed@example.test"]
    )
    assert requeued.output.strip() == "requeued 1 notification(s)"
    before = len(stack.fake_fcm.requests)
    async with running_service(config):
        await wait_for(
            lambda: len(stack.fake_fcm.requests) > before, timeout=20, what="the re-queued push"
        )
        await wait_for(lambda: _count(config, "delivered", per_user * len(users) + 1), timeout=10)
    assert (
        stack.fake_fcm.requests[-1].token == "tok-doomed"
        and stack.fake_fcm.requests[-1].status == 200
    )


async def _settled(config: Path, delivered: int) -> bool:
    return await _count(config, "delivered", delivered) and await _count(config, "failed", 1)


async def _count(config: Path, status: str, at_least: int) -> bool:
    from component.config import load_config

    log = await delivery_log(load_config(config))
    return sum(1 for e in log if e.status == status) >= at_least


logging.getLogger("aiosmtpd").setLevel(logging.WARNING)
