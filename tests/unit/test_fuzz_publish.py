"""Hostile XEP-0357 publishes: the parser, and the whole handler on a real database.

Anyone on the XMPP network can address an IQ to the component. Whatever arrives, the
answer is a result only for the account's own server with the node's secret; else
exactly one of bad-request, item-not-found, forbidden or not-authorized, with nothing
queued and nothing raised past the handler.
"""

from __future__ import annotations

import gc
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slixmpp import JID
from sqlalchemy import update

from component.publish import (
    DATAFORM,
    MAX_FIELD_CHARS,
    MAX_NODE_CHARS,
    PUBSUB,
    PUSH,
    Publish,
    PublishError,
    parse_publish,
)
from component.store import OutboxItem, Registration, utcnow
from tests.support.component_harness import (
    ComponentHarness,
    component_harness,
    outcome,
    publish_xml,
)
from tests.support.fuzzing import peak_bytes, xml_text

MB = 1024 * 1024
ALICE = "alice@example.test"
BOB_ELSEWHERE = "bob@other.test"
PUBLISH_CONDITIONS = {"bad-request", "item-not-found", "forbidden", "not-authorized"}
# The error type each condition is sent with: servers disable a registration on
# `cancel`/`auth` errors and keep it on `wait`.
ERROR_TYPES = {
    "bad-request": "modify",
    "item-not-found": "cancel",
    "forbidden": "auth",
    "not-authorized": "auth",
}

# Text XML can carry, with emoji and right-to-left runs mixed in.
TEXT = xml_text(30)

# -- the parser alone --------------------------------------------------------------------

WRONG_NAMESPACES = [
    "",
    "jabber:client",
    "http://jabber.org/protocol/pubsub#owner",
    "http://jabber.org/protocol/pubsub#event",
    "urn:xmpp:push:1",
    "HTTP://JABBER.ORG/PROTOCOL/PUBSUB",
]
FIELD_NAMES = [
    "FORM_TYPE",
    "message-count",
    "last-message-sender",
    "last-message-body",
    "pending-subscription-count",
    "secret",
    "",
]


@st.composite
def _forms(draw: st.DrawFn) -> ET.Element:
    form = ET.Element(f"{{{draw(st.sampled_from([DATAFORM, DATAFORM, 'jabber:x:oob']))}}}x")
    form.set("type", draw(st.sampled_from(["form", "submit", "result", "cancel", "", "bogus"])))
    for _ in range(draw(st.integers(0, 5))):
        field = ET.SubElement(form, f"{{{DATAFORM}}}field")
        var = draw(st.sampled_from(FIELD_NAMES) | TEXT)
        if draw(st.booleans()) or var:
            field.set("var", var)
        for value in draw(st.lists(TEXT | st.sampled_from(["0", "-1", "9" * 40, "3"]), max_size=3)):
            ET.SubElement(field, f"{{{DATAFORM}}}value").text = value
    return form


FORMS = _forms()


@dataclass(frozen=True)
class PublishCase:
    iq: ET.Element
    well_formed: bool  # every required part present, in its namespace, with a node
    node: str | None  # the publish element's node, if there is a publish element


@st.composite
def _publish_iqs(draw: st.DrawFn) -> PublishCase:
    """A publish IQ with every part present or not, in the right namespace or not."""
    ok = True

    def ns(right: str) -> str:
        nonlocal ok
        if draw(st.integers(0, 5)) == 0:
            ok = False
            return draw(st.sampled_from(WRONG_NAMESPACES))
        return right

    def present() -> bool:
        nonlocal ok
        if draw(st.integers(0, 7)) == 0:
            ok = False
            return False
        return True

    iq = ET.Element("{jabber:component:accept}iq", {"type": "set", "from": "example.test"})
    node: str | None = None
    if not present():
        return PublishCase(iq, False, None)
    pubsub = ET.SubElement(iq, f"{{{ns(PUBSUB)}}}pubsub")
    if present():
        publish = ET.SubElement(pubsub, f"{{{ns(PUBSUB)}}}publish")
        node = draw(st.none() | TEXT | st.text("n", min_size=60, max_size=70))
        if node is not None:
            publish.set("node", node)
        ok = ok and bool(node)
        if present():
            item = ET.SubElement(publish, f"{{{ns(PUBSUB)}}}item")
            if present():
                notification = ET.SubElement(item, f"{{{ns(PUSH)}}}notification")
                if draw(st.booleans()):
                    notification.append(draw(FORMS))
    if draw(st.booleans()):
        options = ET.SubElement(pubsub, f"{{{PUBSUB}}}publish-options")
        options.append(draw(FORMS))
    return PublishCase(iq, ok, node)


PUBLISH_IQS = _publish_iqs()
PARSER_FUZZ = settings(max_examples=100, deadline=None)


def check(publish: Publish) -> None:
    assert publish.node and len(publish.node) <= MAX_NODE_CHARS
    assert 1 <= publish.message_count <= 1_000_000
    for value in (publish.secret, publish.sender, publish.body):
        assert value is None or 0 < len(value) <= MAX_FIELD_CHARS


@PARSER_FUZZ
@given(PUBLISH_IQS)
def test_any_publish_shape_parses_or_is_refused(case: PublishCase) -> None:
    try:
        publish = parse_publish(case.iq)
    except PublishError as exc:
        if exc.condition == "item-not-found":  # a node that cannot be one of ours
            assert case.node is not None and len(case.node) > MAX_NODE_CHARS
        else:
            assert exc.condition == "bad-request" and not case.well_formed
        return
    assert case.well_formed and publish.node == case.node
    check(publish)


@PARSER_FUZZ
@given(
    TEXT
    | st.integers().map(str)
    | st.sampled_from(["1e3", "0x10", "\uff11\uff12", " 7 ", "1_000", "-0"])
)
def test_any_message_count_is_a_sane_number(count: str) -> None:
    iq = ET.fromstring(publish_xml("n", "s", summary={"message-count": count}))
    parsed = parse_publish(iq)
    check(parsed)
    try:
        expected = max(1, min(int(count), 1_000_000))
    except ValueError:
        expected = 1
    assert parsed.message_count == expected


@pytest.mark.parametrize("wrong", WRONG_NAMESPACES)
@pytest.mark.parametrize("part", ["pubsub", "publish", "item", "notification"])
def test_each_part_in_a_wrong_namespace_is_a_bad_request(part: str, wrong: str) -> None:
    namespaces = {"pubsub": PUBSUB, "publish": PUBSUB, "item": PUBSUB, "notification": PUSH}
    namespaces[part] = wrong
    xml = (
        f"<iq xmlns='jabber:component:accept' type='set'>"
        f"<pubsub xmlns='{namespaces['pubsub']}'><publish xmlns='{namespaces['publish']}' node='n'>"
        f"<item xmlns='{namespaces['item']}'><notification xmlns='{namespaces['notification']}'/>"
        f"</item></publish></pubsub></iq>"
    )
    with pytest.raises(PublishError) as info:
        parse_publish(ET.fromstring(xml))
    assert info.value.condition == "bad-request"


def test_an_overlong_node_cannot_exist() -> None:
    with pytest.raises(PublishError) as info:
        parse_publish(ET.fromstring(publish_xml("n" * (MAX_NODE_CHARS + 1), "s")))
    assert info.value.condition == "item-not-found"
    assert parse_publish(ET.fromstring(publish_xml("n" * MAX_NODE_CHARS, "s"))).node


@pytest.mark.parametrize(
    "summary,options",
    [
        pytest.param({"last-message-body": "x" * MB}, {}, id="1mb-body"),
        pytest.param({"last-message-body": "📱مرحبا" * (MB // 16)}, {}, id="1mb-emoji-rtl"),
        pytest.param({"last-message-sender": "a" * MB}, {}, id="1mb-sender"),
        pytest.param({}, {"secret": "s" * MB}, id="1mb-secret"),
        pytest.param({f"f{i}": "v" for i in range(10_000)}, {}, id="10k-fields"),
        pytest.param({"last-message-body": ["v" * 10] * 50_000}, {}, id="50k-values"),
        pytest.param({}, {f"o{i}": "v" for i in range(10_000)}, id="10k-option-fields"),
    ],
)
def test_huge_publishes_parse_in_bounded_memory(
    summary: dict[str, Any], options: dict[str, Any]
) -> None:
    xml = publish_xml("node", None, summary=summary)
    if options:
        fields = "".join(
            f"<field var='{var}'><value>{value}</value></field>" for var, value in options.items()
        )
        xml = xml.replace(
            "</pubsub>",
            f"<publish-options><x xmlns='{DATAFORM}' type='submit'>{fields}</x>"
            "</publish-options></pubsub>",
        )
    result: list[Publish] = []
    peak = peak_bytes(lambda: result.append(parse_publish(ET.fromstring(xml))))
    check(result[0])
    assert peak < max(24 * MB, 12 * len(xml)), f"{peak / MB:.1f} MB for {len(xml) / MB:.1f} MB"


def test_deeply_nested_notification_parses() -> None:
    nested = "<a>" * 10_000 + "</a>" * 10_000
    xml = publish_xml("node", "s").replace(
        "<notification xmlns='urn:xmpp:push:0'>", f"<notification xmlns='urn:xmpp:push:0'>{nested}"
    )
    check(parse_publish(ET.fromstring(xml)))


# -- the handler, on a real database ---------------------------------------------------


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ComponentHarness]:
    async with component_harness(tmp_path) as h:
        yield h


async def expect(h: ComponentHarness, xml: str, expected: str) -> None:
    """Deliver `xml` through slixmpp; exactly one reply, with `expected` ("result" or an
    error condition), and a row in the outbox only for a result."""
    rows_before = await h.count(OutboxItem)
    wakeups_before = h.wakeups
    replies = await h.receive(xml)
    assert h.unexpected == [], f"handler raised: {h.unexpected!r}"
    assert len(replies) == 1, [str(r) for r in replies]
    [reply] = replies
    assert outcome(reply) == expected, str(reply)
    if expected in ERROR_TYPES:
        assert reply["error"]["type"] == ERROR_TYPES[expected]
        assert reply["error"]["text"] in {
            "no pubsub element",
            "no publish element",
            "publish without node",
            "no urn:xmpp:push:0 notification",
            "no such node",
            "not your node",
            "bad secret",
        }  # generic texts: nothing about the registration leaks
    queued = 1 if expected == "result" else 0
    assert await h.count(OutboxItem) == rows_before + queued
    assert h.wakeups == wakeups_before + queued


async def test_the_accounts_server_with_the_secret_is_accepted(harness: ComponentHarness) -> None:
    reg = await harness.register(ALICE)
    await expect(harness, publish_xml(reg.node, reg.secret), "result")
    [row] = await harness.rows(OutboxItem)
    assert (row.account, row.registration_id, row.channel) == (ALICE, reg.id, "phone")
    assert harness.app.publish_outcomes == {"accepted": 1}


async def test_forged_and_misdirected_publishes(harness: ComponentHarness) -> None:
    alice = await harness.register(ALICE)
    alice2 = await harness.register(ALICE, "device-2")
    bob = await harness.register(BOB_ELSEWHERE)
    disabled = await harness.register("carol@example.test")
    async with harness.sessionmaker() as session, session.begin():
        await session.execute(
            update(Registration)
            .where(Registration.id == disabled.id)
            .values(disabled_at=utcnow(), disabled_reason="token dead")
        )
    harness.nodes.invalidate()

    cases: list[tuple[str, str, str]] = [
        # (what, stanza, expected)
        ("secret of another device", publish_xml(alice.node, alice2.secret), "not-authorized"),
        ("secret of another account", publish_xml(alice.node, bob.secret), "not-authorized"),
        ("no publish-options", publish_xml(alice.node, None), "not-authorized"),
        ("empty secret", publish_xml(alice.node, ""), "not-authorized"),
        ("secret with a space", publish_xml(alice.node, alice.secret + " "), "not-authorized"),
        ("secret in upper case", publish_xml(alice.node, alice.secret.upper()), "not-authorized"),
        ("secret prefix", publish_xml(alice.node, alice.secret[:-1]), "not-authorized"),
        (
            "secret twice",
            publish_xml(alice.node, "").replace(
                "<value></value>", f"<value>{alice.secret}</value><value>{alice.secret}</value>"
            ),
            "not-authorized",
        ),
        # The secret is right, the sender is not the account's server.
        ("another domain", publish_xml(bob.node, bob.secret), "forbidden"),
        (
            "client full JID",
            publish_xml(alice.node, alice.secret, sender=ALICE + "/x"),
            "forbidden",
        ),
        ("client bare JID", publish_xml(alice.node, alice.secret, sender=ALICE), "forbidden"),
        (
            "server with a resource",
            publish_xml(alice.node, alice.secret, sender="example.test/push"),
            "forbidden",
        ),
        (
            "subdomain",
            publish_xml(alice.node, alice.secret, sender="sub.example.test"),
            "forbidden",
        ),
        ("parent domain", publish_xml(alice.node, alice.secret, sender="test"), "forbidden"),
        (
            "look-alike suffix",
            publish_xml(alice.node, alice.secret, sender="example.test.evil"),
            "forbidden",
        ),
        (
            "the component itself",
            publish_xml(alice.node, alice.secret, sender="push.example.test"),
            "forbidden",
        ),
        ("no sender", publish_xml(alice.node, alice.secret, sender=""), "forbidden"),
        # Nodes that are not (or no longer) ours.
        ("unknown node", publish_xml("no-such-node", alice.secret), "item-not-found"),
        ("disabled node", publish_xml(disabled.node, disabled.secret), "item-not-found"),
        ("node in upper case", publish_xml(alice.node.upper(), alice.secret), "item-not-found"),
        ("emoji node", publish_xml("📱\u202e", alice.secret), "item-not-found"),
        ("1 MB node", publish_xml("n" * MB, alice.secret), "item-not-found"),
        # Shapes.
        ("empty node", publish_xml("", alice.secret), "bad-request"),
        (
            "no notification",
            publish_xml(alice.node, alice.secret).replace(
                "<notification xmlns='urn:xmpp:push:0'></notification>", ""
            ),
            "bad-request",
        ),
        (
            "notification in push:1",
            publish_xml(alice.node, alice.secret).replace("urn:xmpp:push:0", "urn:xmpp:push:1"),
            "bad-request",
        ),
        # Domain names compare case-insensitively: this is the same server.
        (
            "server in upper case",
            publish_xml(alice.node, alice.secret, sender="EXAMPLE.TEST"),
            "result",
        ),
    ]
    for what, xml, expected in cases:
        try:
            await expect(harness, xml, expected)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
    refused = sum(1 for _, _, expected in cases if expected != "result")
    assert sum(harness.app.publish_outcomes.values()) == len(cases)
    assert harness.app.publish_outcomes["accepted"] == len(cases) - refused


async def test_direct_calls_raise_the_conditions(harness: ComponentHarness) -> None:
    """`on_publish` itself, as slixmpp calls it: errors are XMPPErrors, nothing else."""
    reg = await harness.register(ALICE)
    no_pubsub = "<iq xmlns='jabber:component:accept' type='set' from='example.test' id='1'/>"
    no_publish = (
        "<iq xmlns='jabber:component:accept' type='set' from='example.test' id='1'>"
        f"<pubsub xmlns='{PUBSUB}'/></iq>"
    )
    for xml, expected in [
        (publish_xml(reg.node, reg.secret), "accepted"),
        (publish_xml(reg.node, "wrong"), "not-authorized"),
        (publish_xml(reg.node, reg.secret, sender=ALICE + "/phone"), "forbidden"),
        (publish_xml("nope", reg.secret), "item-not-found"),
        (no_pubsub, "bad-request"),
        (no_publish, "bad-request"),
    ]:
        assert await harness.publish_outcome(harness.iq(xml)) == expected


async def test_an_iq_that_is_not_a_publish_set_is_not_handled(harness: ComponentHarness) -> None:
    reg = await harness.register(ALICE)
    for xml in [
        publish_xml(reg.node, reg.secret).replace("type='set'", "type='get'"),
        "<iq xmlns='jabber:component:accept' type='set' from='example.test' id='1'>"
        f"<pubsub xmlns='{PUBSUB}'/></iq>",
    ]:
        [reply] = await harness.receive(xml)
        assert outcome(reply) in {"feature-not-implemented", "service-unavailable"}
    assert await harness.count(OutboxItem) == 0 and harness.unexpected == []


HANDLER_FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one harness, many stanzas
)


@HANDLER_FUZZ
@given(secret=TEXT)
async def test_any_other_secret_is_not_authorized(harness: ComponentHarness, secret: str) -> None:
    reg = await harness.register(ALICE)
    await expect(harness, publish_xml(reg.node, secret), "not-authorized")


USERS = ["", "alice", "bob", "example.test", "Ünïcode"]
DOMAINS = [
    "example.test",
    "Example.Test",
    "other.test",
    "sub.example.test",
    "example.test.evil",
    "push.example.test",
    "xn--mgbh0fb.example",
    "127.0.0.1",
    "[::1]",
]
RESOURCES = ["", "phone", "push", "Conversations.x1Y2", "مرحبا", "a/b"]


@HANDLER_FUZZ
@given(
    st.sampled_from(USERS),
    st.sampled_from(DOMAINS),
    st.sampled_from(RESOURCES),
)
async def test_only_the_accounts_own_server_may_publish(
    harness: ComponentHarness, user: str, domain: str, resource: str
) -> None:
    reg = await harness.register(ALICE)
    sender = (f"{user}@" if user else "") + domain + (f"/{resource}" if resource else "")
    jid = JID(sender)
    own_server = not jid.user and not jid.resource and jid.domain == "example.test"
    await expect(
        harness,
        publish_xml(reg.node, reg.secret, sender=sender),
        "result" if own_server else "forbidden",
    )


@HANDLER_FUZZ
@given(st.dictionaries(st.sampled_from(FIELD_NAMES[1:]) | TEXT, TEXT | st.lists(TEXT), max_size=6))
async def test_any_summary_from_the_right_server_is_queued_without_the_body(
    harness: ComponentHarness, summary: dict[str, Any]
) -> None:
    reg = await harness.register(ALICE)
    summary.pop("", None)
    await expect(harness, publish_xml(reg.node, reg.secret, summary=summary), "result")
    rows = await harness.rows(OutboxItem)
    payload = rows[-1].payload
    assert "body" not in payload  # privacy.include_body is off
    assert 1 <= payload["message_count"] <= 1_000_000
    if "sender" in payload:
        assert JID(payload["sender"]).bare == payload["sender"]


@pytest.mark.parametrize(
    "sender",
    [
        # slixmpp 1.17 cannot parse these; servers implementing RFC 7622 route the first.
        "alice@example.test/📱",
        "a@b@example.test",
        "-bad-domain-",
        "example.test/",
    ],
)
async def test_a_publish_from_an_unparsable_jid_is_refused(
    harness: ComponentHarness, sender: str
) -> None:
    # Answered before any handler runs (component/xmpp.py), as RFC 6120 names it.
    reg = await harness.register(ALICE)
    await expect(harness, publish_xml(reg.node, reg.secret, sender=sender), "jid-malformed")


@pytest.mark.parametrize(
    "summary,secret",
    [
        pytest.param({"last-message-body": "x" * MB}, None, id="1mb-body"),
        pytest.param({"last-message-body": "📱مرحبا\u202e" * (MB // 20)}, None, id="1mb-emoji"),
        pytest.param({f"field-{i}": "📱" for i in range(10_000)}, None, id="10k-fields"),
        pytest.param({}, "s" * MB, id="1mb-wrong-secret"),
    ],
)
async def test_huge_publishes_are_answered_in_bounded_memory(
    harness: ComponentHarness, summary: dict[str, Any], secret: str | None
) -> None:
    reg = await harness.register(ALICE)
    xml = publish_xml(reg.node, secret or reg.secret, summary=summary)
    gc.collect()
    tracemalloc.start()
    try:
        await expect(harness, xml, "result" if secret is None else "not-authorized")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * MB, f"{peak / MB:.1f} MB to answer {len(xml) / MB:.1f} MB"


async def test_unknown_nodes_do_not_pile_up_in_memory(harness: ComponentHarness) -> None:
    """Anyone may publish to made-up nodes; what is remembered of them must stay small."""
    big = 100_000

    async def flood(start: int, count: int) -> None:
        for i in range(start, start + count):
            await harness.receive(publish_xml(f"{i:08d}" + "n" * big, "s", stanza_id=str(i)))

    await flood(0, 5)  # warm up caches that are not about the input
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await flood(5, 100)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2 * MB, f"{retained / MB:.1f} MB kept after 100 publishes of 100 kB nodes"
    assert harness.unexpected == []
