"""Accepted publishes are answered from the raw element (AppServer's fast path);
everything it would refuse takes slixmpp's normal path, which words the refusal."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from component import appserver
from component.store import OutboxItem
from tests.support.component_harness import (
    COMPONENT_JID,
    SERVER_DOMAIN,
    ComponentHarness,
    component_harness,
    outcome,
    publish_xml,
)

ALICE = "alice@example.test"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ComponentHarness]:
    async with component_harness(tmp_path) as h:
        yield h


def count_normal_path(h: ComponentHarness) -> list[Any]:
    """Record the publishes that reach slixmpp's publish handler."""
    calls: list[Any] = []
    for handler in h.xmpp._XMLStream__handlers:  # type: ignore[attr-defined]
        if handler.name == "xep-0357 publish":
            original = handler._pointer  # slixmpp's wrapper: turns errors into replies

            async def counting(iq: Any, original: Any = original) -> None:
                calls.append(iq)
                await original(iq)

            handler._pointer = counting
    return calls


@pytest.mark.parametrize("stanza_id", ["p-1", "a'b\"c<d>&e", "ünï 📱"])
async def test_accepted_publish_reply_mirrors_the_request(
    harness: ComponentHarness, stanza_id: str
) -> None:
    reg = await harness.register(ALICE)
    normal = count_normal_path(harness)
    [reply] = await harness.receive(publish_xml(reg.node, reg.secret, stanza_id=stanza_id))
    assert outcome(reply) == "result"
    assert reply["id"] == stanza_id
    assert (reply["to"].full, reply["from"].full) == (SERVER_DOMAIN, COMPONENT_JID)
    assert normal == []  # answered without slixmpp's stanza objects
    [row] = await harness.rows(OutboxItem)
    assert (row.account, row.registration_id) == (ALICE, reg.id)
    assert harness.app.publish_outcomes["accepted"] == 1


@pytest.mark.parametrize(
    "sender,secret,expected",
    [
        (SERVER_DOMAIN, "wrong", "not-authorized"),
        ("EXAMPLE.test", None, "not-authorized"),  # other spelling: judged by JID parsing
        ("mallory@example.test", "right", "forbidden"),
        ("other.test", "right", "forbidden"),
    ],
)
async def test_anything_else_takes_the_normal_path(
    harness: ComponentHarness, sender: str, secret: str | None, expected: str
) -> None:
    reg = await harness.register(ALICE)
    normal = count_normal_path(harness)
    chosen = reg.secret if secret == "right" else secret
    [reply] = await harness.receive(publish_xml(reg.node, chosen, sender=sender))
    assert outcome(reply) == expected
    assert len(normal) == 1
    assert await harness.count(OutboxItem) == 0


async def test_same_domain_in_other_case_is_still_accepted(harness: ComponentHarness) -> None:
    reg = await harness.register(ALICE)
    normal = count_normal_path(harness)
    [reply] = await harness.receive(publish_xml(reg.node, reg.secret, sender="EXAMPLE.test"))
    assert outcome(reply) == "result"
    assert len(normal) == 1  # declined by the fast path, accepted by JID comparison


class RecordingTransport:
    """Stands in for the stream's transport: records flow control only."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def test_a_flood_of_publishes_pauses_reading_until_it_drains(
    harness: ComponentHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(appserver, "MAX_PUBLISHES_IN_FLIGHT", 3)
    monkeypatch.setattr(appserver, "RESUME_INPUT_BELOW", 1)
    transport = RecordingTransport()
    harness.xmpp.transport = transport  # type: ignore[assignment]
    reg = await harness.register(ALICE)
    first = len(harness.sent)
    # Five publishes read in one go, as from one network read: none answered yet.
    for n in range(5):
        harness.xmpp._spawn_event(
            ET.fromstring(publish_xml(reg.node, reg.secret, stanza_id=f"p{n}"))
        )
    assert transport.calls == ["pause"] and harness.xmpp.input_paused
    for _ in range(200):
        if len(harness.sent) - first == 5 and not harness.xmpp.input_paused:
            break
        await asyncio.sleep(0.01)
    assert sorted(outcome(r) for r in harness.sent[first:]) == ["result"] * 5
    assert transport.calls == ["pause", "resume"] and not harness.xmpp.input_paused
    assert await harness.count(OutboxItem) == 5
