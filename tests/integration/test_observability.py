"""Issue 5.3: /metrics counts what happened, /healthz tells ready from not, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from component.logsetup import JsonFormatter
from tests.support.fake_fcm import FakeFcm, FcmReply
from tests.support.ofnotify_service import running_service, wait_for, write_config
from tests.support.ports import free_port
from tests.support.push_client import offline_with_push
from tests.support.xmpp_client import connect_client
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def health(port: int) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status, await r.json()


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_and_health_follow_reality(
    prosody: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    for user in ("alice", "carol", "bob"):
        prosody.register(user, "pw")
    fake_fcm.always("tok-carol", FcmReply.unregistered())
    port = free_port()
    config = write_config(
        tmp_path / "of.yaml", prosody, fake_fcm, http={"listen": f"127.0.0.1:{port}"}
    )
    async with running_service(config):
        before = await scrape(port)
        status, body = await health(port)
        assert status == 200 and body["checks"] == {"xmpp": True, "storage": True}
        for user in ("alice", "carol"):
            await offline_with_push(prosody, user, f"tok-{user}")
        bob = await connect_client(prosody, "bob", "pw")
        await bob.send_chat("alice@example.test", "one")
        await bob.send_chat("alice@example.test", "two")
        await bob.send_chat("carol@example.test", "three")
        await fake_fcm.wait_for_requests(3, timeout=10)

        async def settled() -> bool:
            now = await scrape(port)
            return (
                value(
                    now,
                    "ofnotify_notifications_failed_total",
                    channel="phone",
                    reason="target_invalid",
                )
                - value(
                    before,
                    "ofnotify_notifications_failed_total",
                    channel="phone",
                    reason="target_invalid",
                )
                >= 1
                and value(now, "ofnotify_notifications_sent_total", channel="phone")
                - value(before, "ofnotify_notifications_sent_total", channel="phone")
                >= 2
            )

        await wait_for(settled, what="the counters")
        await bob.send_chat("carol@example.test", "to a disabled node")
        await asyncio.sleep(0.5)
        after = await scrape(port)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("ofnotify_notifications_sent_total", channel="phone") == 2
        assert (
            delta("ofnotify_notifications_failed_total", channel="phone", reason="target_invalid")
            == 1
        )
        assert delta("ofnotify_notifications_decided_total", channel="phone", source="xep0357") == 3
        assert delta("ofnotify_publishes_total", outcome="accepted") == 3
        assert delta("ofnotify_publishes_total", outcome="item-not-found") >= 1
        assert delta("ofnotify_send_latency_seconds_count", channel="phone") == 3
        assert value(after, "ofnotify_xmpp_connected") == 1
        assert value(after, "process_resident_memory_bytes") > 0

        await asyncio.to_thread(prosody.stop)  # the XMPP stream goes down: not ready
        await wait_for(lambda: _status(port, 503), what="an unhealthy answer")
        status, body = await health(port)
        assert body["checks"]["xmpp"] is False and body["checks"]["storage"] is True
        assert value(await scrape(port), "ofnotify_xmpp_connected") == 0
        await bob.go_offline()


async def _status(port: int, expected: int) -> bool:
    return (await health(port))[0] == expected


def test_json_log_lines() -> None:
    record = logging.LogRecord(
        "component.x", logging.WARNING, __file__, 1, "hello %s", ("wörld",), None
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "hello wörld" and entry["level"] == "warning"
    assert entry["logger"] == "component.x" and entry["time"].endswith("+00:00")
