"""The watcher against a misbehaving Openfire database."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.integration.test_watcher_email import configure, mails_to, text_part, watcher_caught_up
from tests.support.fake_fcm import FakeFcm
from tests.support.ofnotify_service import running_service, wait_for
from tests.support.openfire_db import OpenfireDb, chat_stanza, of_date
from tests.support.postgres import PostgresServer
from tests.support.smtp_server import SmtpServer
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration


async def test_openfire_database_outage_then_catch_up(
    tmp_path: Path,
    prosody: XmppServer,
    fake_fcm: FakeFcm,
    smtp: SmtpServer,
    postgres_db: str,
    openfire_db: OpenfireDb,
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="component.watcher")
    config = configure(tmp_path, prosody, fake_fcm, smtp, postgres_db, delay="0s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        await asyncio.to_thread(postgres_server.stop)
        await wait_for(lambda: "watcher poll failed" in caplog.text, what="a logged failure")
        await asyncio.sleep(1.0)  # several failed polls: the service must stay up
        assert service.connection is not None and service.connection.connected
        await asyncio.to_thread(postgres_server.start)
        openfire_db.store_chat("jenny", "michael", "after the outage", "o1")
        await wait_for(lambda: mails_to(smtp, "jenny@mail.example"), timeout=30, what="the mail")
    assert "after the outage" in text_part(mails_to(smtp, "jenny@mail.example")[0])
    assert "caught up" in caplog.text
    assert "postgres@" not in caplog.text  # no connection URLs in logs


async def test_ids_below_the_high_water_mark_are_still_seen(
    tmp_path: Path,
    prosody: XmppServer,
    fake_fcm: FakeFcm,
    smtp: SmtpServer,
    postgres_db: str,
    openfire_db: OpenfireDb,
) -> None:
    """Clustered Openfire: each node draws IDs from its own block."""
    config = configure(tmp_path, prosody, fake_fcm, smtp, postgres_db, delay="0s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        openfire_db.execute(
            "INSERT INTO ofOffline VALUES (%s, %s, %s, %s, %s)",
            (
                "jenny",
                5000,
                of_date(),
                10,
                chat_stanza("jenny@example.test", "michael@example.test/a", "node A", "a1"),
            ),
        )
        await wait_for(
            lambda: mails_to(smtp, "jenny@mail.example"), timeout=15, what="node A's mail"
        )
        openfire_db.execute(
            "INSERT INTO ofOffline VALUES (%s, %s, %s, %s, %s)",
            (
                "michael",
                2001,
                of_date(),
                10,
                chat_stanza("michael@example.test", "jenny@example.test/b", "node B", "b1"),
            ),
        )
        await wait_for(
            lambda: mails_to(smtp, "michael@mail.example"), timeout=15, what="node B's mail"
        )
    assert "node B" in text_part(mails_to(smtp, "michael@mail.example")[0])
