"""The watcher against a misbehaving Openfire database."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.integration.test_watcher_email import mails_to, text_part, watcher_caught_up
from tests.support.ofnotify_service import running_service, wait_for
from tests.support.openfire_db import chat_stanza, of_date
from tests.support.postgres import PostgresServer
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


async def test_openfire_database_outage_then_catch_up(
    stack: Stack, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="component.watcher")
    config = stack.configure(delay="0s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        await asyncio.to_thread(postgres_server.stop)
        await wait_for(lambda: "watcher poll failed" in caplog.text, what="a logged failure")
        await asyncio.sleep(1.0)  # several failed polls: the service must stay up
        assert service.connection is not None and service.connection.connected
        await asyncio.to_thread(postgres_server.start)
        stack.openfire_db.store_chat("jenny", "michael", "after the outage", "o1")
        await wait_for(
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=30, what="the mail"
        )
    assert "after the outage" in text_part(mails_to(stack.smtp, "jenny@mail.example")[0])
    assert "caught up" in caplog.text
    assert "postgres@" not in caplog.text  # no connection URLs in logs


async def test_ids_below_the_high_water_mark_are_still_seen(stack: Stack) -> None:
    """Clustered Openfire: each node draws IDs from its own block."""
    config = stack.configure(delay="0s")
    async with running_service(config) as service:
        await watcher_caught_up(service)
        stack.openfire_db.execute(
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
            lambda: mails_to(stack.smtp, "jenny@mail.example"), timeout=15, what="node A's mail"
        )
        stack.openfire_db.execute(
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
            lambda: mails_to(stack.smtp, "michael@mail.example"), timeout=15, what="node B's mail"
        )
    assert "node B" in text_part(mails_to(stack.smtp, "michael@mail.example")[0])
