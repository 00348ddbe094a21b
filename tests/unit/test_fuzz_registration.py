"""Hostile input for `register-push-fcm` / `unregister-push-fcm` (XEP-0050 ad-hoc commands).

Everything goes through slixmpp's ad-hoc command plugin, as on the wire. A command ends
in a result form or in exactly one error (bad-request, not-acceptable, forbidden,
item-not-found, resource-constraint); nothing is raised past the handlers, one account
cannot reach another's registrations, and open command sessions do not pile up.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slixmpp import JID
from slixmpp.xmlstream import StanzaBase

from component.appserver import MAX_ID_CHARS, MAX_TOKEN_CHARS
from component.store import OutboxItem, Registration
from tests.support.component_harness import (
    REGISTER_NODE,
    UNREGISTER_NODE,
    ComponentHarness,
    FieldValue,
    command_fields,
    command_xml,
    component_harness,
    harness_config,
    outcome,
    publish_xml,
)
from tests.support.fuzzing import xml_text

MB = 1024 * 1024
ALICE = "alice@example.test/phone"
MALLORY = "mallory@example.test/laptop"
FIELDS = {"token": "fcm-token-alice", "device-id": "device-1"}

TEXT = xml_text(20, whitespace="\t\n ")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ComponentHarness]:
    async with component_harness(tmp_path) as h:
        yield h


# -- driving the commands ------------------------------------------------------------------


async def two_step(
    h: ComponentHarness,
    command: str,
    sender: str,
    fields: Mapping[str, FieldValue] | None,
    action: str = "complete",
) -> StanzaBase:
    """Ask for the form, then submit it (most clients); returns the last reply."""
    [form] = await h.receive(command_xml(command, sender=sender))
    assert outcome(form) == "result" and form["command"]["status"] == "executing", str(form)
    assert h.unexpected == []
    [reply] = await h.receive(
        command_xml(
            command,
            sender=sender,
            fields=fields,
            action=action,
            sessionid=form["command"]["sessionid"],
            stanza_id="command-2",
        )
    )
    assert h.unexpected == [], f"handler raised: {h.unexpected!r}"
    return reply


async def single_stage(
    h: ComponentHarness, command: str, sender: str, fields: Mapping[str, FieldValue]
) -> StanzaBase:
    """The submitted form rides on `execute` (Conversations, and the README's step 1)."""
    [reply] = await h.receive(command_xml(command, sender=sender, fields=fields))
    assert h.unexpected == [], f"handler raised: {h.unexpected!r}"
    return reply


def registered(reply: StanzaBase) -> dict[str, str]:
    assert outcome(reply) == "result", str(reply)
    assert reply["command"]["status"] == "completed"
    fields = command_fields(reply)
    assert set(fields) == {"jid", "node", "secret"} and fields["jid"] == "push.example.test"
    return fields


def first(value: FieldValue | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return value[0] if value else ""


def expected_registration(sender: str, fields: Mapping[str, FieldValue]) -> str:
    """What `register-push-fcm` must answer, from the protocol's rules."""
    if not JID(sender).user:
        return "forbidden"
    token = first(fields.get("token")).strip()
    device = (first(fields.get("device-id")) or first(fields.get("android-id"))).strip()
    muc = first(fields.get("muc")).strip()
    if not token or not device:
        return "bad-request"
    if len(token) > MAX_TOKEN_CHARS or len(device) > MAX_ID_CHARS or len(muc) > 3071:
        return "not-acceptable"
    if muc:
        try:
            JID(muc)
        except ValueError:
            return "bad-request"
    return "result"


# -- registering ---------------------------------------------------------------------------


async def test_register_twice_gives_the_same_node_and_a_new_token(
    harness: ComponentHarness,
) -> None:
    first_time = registered(await two_step(harness, REGISTER_NODE, ALICE, FIELDS))
    again = registered(
        await two_step(harness, REGISTER_NODE, ALICE, {**FIELDS, "token": "fcm-token-new"})
    )
    assert (again["node"], again["secret"]) == (first_time["node"], first_time["secret"])
    [reg] = await harness.rows(Registration)
    assert (reg.account, reg.token, reg.device_id) == (
        "alice@example.test",
        "fcm-token-new",
        "device-1",
    )


async def test_the_conversations_single_stage_flow_registers_and_unregisters(
    harness: ComponentHarness,
) -> None:
    """README step 1: execute `register-push-fcm` *with* the fields, one round trip."""
    fields = registered(await single_stage(harness, REGISTER_NODE, ALICE, FIELDS))
    assert fields["node"]
    reply = await single_stage(harness, UNREGISTER_NODE, ALICE, {"device-id": "device-1"})
    assert outcome(reply) == "result" and reply["command"]["status"] == "completed"
    assert await harness.rows(Registration) == []


async def test_a_registration_works_for_publishes_from_its_own_server_only(
    harness: ComponentHarness,
) -> None:
    fields = registered(await two_step(harness, REGISTER_NODE, ALICE, FIELDS))
    node, secret = fields["node"], fields["secret"]
    [reply] = await harness.receive(publish_xml(node, secret))
    assert outcome(reply) == "result"
    [reply] = await harness.receive(publish_xml(node, secret, sender="other.test"))
    assert outcome(reply) == "forbidden"
    [reply] = await harness.receive(publish_xml(node, secret, sender=ALICE))
    assert outcome(reply) == "forbidden"
    assert await harness.count(OutboxItem) == 1


_accounts = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one harness, many commands
)
@given(
    st.dictionaries(
        st.sampled_from(["token", "device-id", "android-id", "muc", "FORM_TYPE"]) | TEXT,
        TEXT
        | st.lists(TEXT, max_size=3)
        | st.sampled_from(
            [
                "t" * (MAX_TOKEN_CHARS + 1),
                "d" * (MAX_ID_CHARS + 1),
                "📱" * MAX_ID_CHARS,
                "room@conference.example.test/nick",
                "a@b@c",
                "-bad-",
                "  ",
            ]
        ),
        max_size=5,
    ),
    st.sampled_from(["", "/phone", "/مرحبا", "/a/b"]),
)
async def test_any_registration_form_gets_the_right_answer(
    harness: ComponentHarness, fields: dict[str, Any], resource: str
) -> None:
    fields.pop("", None)
    sender = f"user{next(_accounts)}@example.test{resource}"
    expected = expected_registration(sender, fields)
    reply = await two_step(harness, REGISTER_NODE, sender, fields)
    assert outcome(reply) == expected, (fields, str(reply))
    if expected == "result":
        node = registered(reply)["node"]
        [reg] = [r for r in await harness.rows(Registration) if r.node == node]
        assert reg.account == JID(sender).bare
        assert reg.token == first(fields.get("token")).strip()


@pytest.mark.parametrize("sender", ["example.test", "example.test/x", "push.example.test"])
async def test_only_user_accounts_can_register(harness: ComponentHarness, sender: str) -> None:
    reply = await two_step(harness, REGISTER_NODE, sender, FIELDS)
    assert outcome(reply) == "forbidden" and reply["error"]["type"] == "auth"
    assert await harness.count(Registration) == 0


@pytest.mark.parametrize(
    "fields,expected",
    [
        pytest.param({"token": "t" * MB, "device-id": "d"}, "not-acceptable", id="1mb-token"),
        pytest.param({"token": "t", "device-id": "📱" * MB}, "not-acceptable", id="1mb-device"),
        pytest.param(
            {"token": "t", "device-id": "d", "muc": "m" * MB}, "not-acceptable", id="1mb-muc"
        ),
        pytest.param(
            {"token": "t", "device-id": "d", **{f"f{i}": "v" for i in range(5_000)}},
            "result",
            id="5k-fields",
        ),
        pytest.param({"token": ["t"] * 50_000, "device-id": "d"}, "result", id="50k-token-values"),
    ],
)
async def test_huge_forms_are_answered_in_bounded_memory(
    harness: ComponentHarness, fields: dict[str, Any], expected: str
) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        reply = await two_step(harness, REGISTER_NODE, ALICE, fields)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome(reply) == expected
    assert peak < 48 * MB, f"{peak / MB:.1f} MB"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("<x xmlns='jabber:x:data' type='cancel'/>", id="cancel-form"),
        pytest.param("<x xmlns='jabber:x:data' type='result'/>", id="result-form"),
        pytest.param("<x xmlns='jabber:x:oob'><url>x</url></x>", id="other-namespace"),
        pytest.param(
            "<x xmlns='jabber:x:data' type='submit'>" + "<a>" * 10_000 + "</a>" * 10_000 + "</x>",
            id="10k-nested",
        ),
        pytest.param("<note type='error'>hi</note>", id="note"),
    ],
)
async def test_odd_payloads_on_execute_get_the_form(
    harness: ComponentHarness, payload: str
) -> None:
    xml = command_xml(REGISTER_NODE, sender=ALICE).replace("</command>", payload + "</command>")
    [reply] = await harness.receive(xml)
    assert harness.unexpected == []
    if outcome(reply) == "result":  # not a submitted form: the blank form is the answer
        assert reply["command"]["status"] == "executing"
        assert set(command_fields(reply)) == {"token", "device-id", "muc"}
    else:  # a submitted form without fields
        assert outcome(reply) == "bad-request"


async def test_the_second_stage_without_a_form_is_a_bad_request(harness: ComponentHarness) -> None:
    reply = await two_step(harness, REGISTER_NODE, ALICE, None)
    assert outcome(reply) == "bad-request"


async def test_too_many_registrations_are_refused(tmp_path: Path) -> None:
    config = harness_config(tmp_path, registrations={"max_per_account": 3})
    async with component_harness(tmp_path, config) as h:
        for device in range(3):
            registered(
                await two_step(h, REGISTER_NODE, ALICE, {"token": "t", "device-id": str(device)})
            )
        reply = await two_step(h, REGISTER_NODE, ALICE, {"token": "t", "device-id": "3"})
        assert outcome(reply) == "resource-constraint" and reply["error"]["type"] == "wait"
        # Another account is not affected, and re-registering a known device still works.
        registered(await two_step(h, REGISTER_NODE, MALLORY, {"token": "t", "device-id": "3"}))
        registered(await two_step(h, REGISTER_NODE, ALICE, {"token": "t2", "device-id": "0"}))


# -- other accounts ----------------------------------------------------------------------------


async def test_the_same_device_id_in_another_account_is_another_registration(
    harness: ComponentHarness,
) -> None:
    alice = registered(await two_step(harness, REGISTER_NODE, ALICE, FIELDS))
    mallory = registered(await two_step(harness, REGISTER_NODE, MALLORY, FIELDS))
    assert alice["node"] != mallory["node"] and alice["secret"] != mallory["secret"]
    # Mallory's secret does not open alice's node.
    [reply] = await harness.receive(publish_xml(alice["node"], mallory["secret"]))
    assert outcome(reply) == "not-authorized"


async def test_only_the_registering_account_can_unregister(harness: ComponentHarness) -> None:
    alice = registered(await two_step(harness, REGISTER_NODE, ALICE, FIELDS))
    for sender, fields, expected in [
        (MALLORY, {"device-id": "device-1"}, "item-not-found"),
        ("ALICE@example.test.evil/x", {"device-id": "device-1"}, "item-not-found"),
        ("example.test", {"device-id": "device-1"}, "forbidden"),
        (ALICE, {"device-id": "device-2"}, "item-not-found"),
        (ALICE, {"device-id": "device-1", "muc": "room@conference.example.test"}, "item-not-found"),
        (ALICE, {"device-id": "  "}, "bad-request"),
        (ALICE, {}, "bad-request"),
    ]:
        reply = await two_step(harness, UNREGISTER_NODE, sender, fields)
        assert outcome(reply) == expected, (sender, fields)
    assert [r.node for r in await harness.rows(Registration)] == [alice["node"]]

    # The owner can, from any of its resources, and the node is gone at once.
    reply = await two_step(
        harness, UNREGISTER_NODE, "Alice@Example.Test/other", {"device-id": "device-1"}
    )
    assert outcome(reply) == "result"
    assert await harness.rows(Registration) == []
    [reply] = await harness.receive(publish_xml(alice["node"], alice["secret"]))
    assert outcome(reply) == "item-not-found"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.dictionaries(
        st.sampled_from(["device-id", "android-id", "muc"]) | TEXT,
        TEXT | st.lists(TEXT, max_size=2),
        max_size=4,
    )
)
async def test_any_unregistration_form_from_another_account_removes_nothing(
    harness: ComponentHarness, fields: dict[str, Any]
) -> None:
    if not await harness.count(Registration):
        registered(await two_step(harness, REGISTER_NODE, ALICE, FIELDS))
    fields.pop("", None)
    reply = await two_step(harness, UNREGISTER_NODE, MALLORY, fields)
    device = (first(fields.get("device-id")) or first(fields.get("android-id"))).strip()
    assert outcome(reply) == ("item-not-found" if device else "bad-request")
    assert await harness.count(Registration) == 1


# -- command sessions ----------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["complete", "execute", "next"])
@pytest.mark.parametrize("fields", [FIELDS, {"token": "t"}], ids=["registered", "bad-request"])
async def test_finished_commands_leave_no_session_behind(
    harness: ComponentHarness, action: str, fields: dict[str, str]
) -> None:
    """XEP-0050 lets the second stage say `execute` or `next`; either way, and whether it
    ends in a result or an error, the command is over and its session must go."""
    for _ in range(20):
        await two_step(harness, REGISTER_NODE, ALICE, fields, action=action)
    assert len(harness.command_sessions) == 0


async def test_abandoned_commands_do_not_pile_up(harness: ComponentHarness) -> None:
    """Anyone can send `execute` and never come back; each open session holds memory."""
    requests = 1_500
    budget = 1_000  # open sessions this test tolerates; any fixed bound would do
    for i in range(requests):
        await harness.receive(
            command_xml(REGISTER_NODE, sender=f"user{i % 7}@example.test/r", stanza_id=str(i))
        )
    assert harness.unexpected == []
    assert len(harness.command_sessions) <= budget


@pytest.mark.parametrize(
    "sender",
    [
        # slixmpp 1.17 cannot parse these (resourceprep predates emoji; a second @);
        # servers that implement RFC 7622 route the first one from real clients.
        "alice@example.test/📱",
        "a@b@example.test",
    ],
)
async def test_a_command_from_an_unparsable_jid_gets_a_proper_answer(
    harness: ComponentHarness, sender: str
) -> None:
    [reply] = await harness.receive(command_xml(REGISTER_NODE, sender=sender))
    assert harness.unexpected == [], f"raised: {harness.unexpected!r}"
    assert outcome(reply) != "undefined-condition"
