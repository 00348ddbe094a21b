"""Hostile input for the stanza parser and for messages sent to the component.

`parse_message` reads Openfire's offline rows (anything a client managed to send to an
offline user); `parse_element` also reads what reaches `AppServer.on_message`. Either
a `ParsedMessage` comes out or a `StanzaError`; never another exception, never a hang,
and memory in proportion to the (capped) input.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from component import readstate
from component.ingest import SeenMessage, WatcherBatch
from component.stanzas import (
    CHATSTATES,
    DELAY,
    HINTS,
    MARKERS,
    MAX_BODY_CHARS,
    MAX_ID_CHARS,
    MAX_STANZA_CHARS,
    RECEIPTS,
    ParsedMessage,
    StanzaError,
    parse_element,
    parse_message,
)
from component.store import MessageState, MissedMessage, UTCDateTime
from tests.support import fuzzing
from tests.support.component_harness import ComponentHarness, component_harness, marker_xml
from tests.support.fuzzing import peak_bytes

MB = 1024 * 1024
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
ROOT_NAMESPACES = ["", "jabber:client", "jabber:server", "jabber:component:accept"]

# -- strategies -------------------------------------------------------------------

# What people type: emoji (with joiners), right-to-left text and its overrides, full
# width forms, combining marks. All legal in XML.
HUMAN_SAMPLES = [
    *fuzzing.HUMAN_SAMPLES,
    "\uff46\uff55\uff4c\uff4c",  # full width
    "e\u0301",
    "<&>'\"",
]


def xml_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return fuzzing.xml_text(max_size, samples=HUMAN_SAMPLES)


TEXT = xml_text()
SHORT_TEXT = xml_text(12)
ILLEGAL_CHARS = [chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\ufffe", "\uffff"]

# Stands for "the namespace of the message around it", resolved by `messages()`.
SAME_AS_STANZA = "urn:test:same-as-stanza"
NAMESPACES = [
    SAME_AS_STANZA,
    SAME_AS_STANZA,
    "",
    "jabber:client",
    "jabber:component:accept",
    "jabber:server",
    MARKERS,
    RECEIPTS,
    HINTS,
    DELAY,
    CHATSTATES,
    "urn:xmpp:eme:0",
    "eu.siacs.conversations.axolotl",
    "urn:xmpp:omemo:2",
    "urn:xmpp:openpgp:0",
    "jabber:x:encrypted",
    "urn:xmpp:chat-markers:1",  # near misses
    "JABBER:CLIENT",
    "urn:example:other",
]
NAMES = [
    "body",
    "thread",
    "markable",
    "received",
    "displayed",
    "acknowledged",
    "request",
    "no-store",
    "store",
    "delay",
    "composing",
    "active",
    "encrypted",
    "encryption",
    "openpgp",
    "x",
    "message",
    "subject",
]
ATTRIBUTES = ["id", "stamp", "from", "to", "type", XML_LANG, "namespace"]
STAMPS = [
    "2026-11-21T10:00:00Z",
    "2026-11-21T10:00:00.123456+05:30",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59Z",
    "2026-02-30T00:00:00Z",
    "not a date",
    "ZZZZ",
    "",
]


def tag(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}" if ns else name


@st.composite
def _elements(draw: st.DrawFn, children: st.SearchStrategy[list[ET.Element]]) -> ET.Element:
    """Children a message may carry: known payloads in right and wrong namespaces."""
    ns = draw(st.sampled_from(NAMESPACES))
    element = ET.Element(tag(ns, draw(st.sampled_from(NAMES))))
    for name in draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=3, unique=True)):
        element.set(name, draw(SHORT_TEXT | st.sampled_from(STAMPS)))
    element.text = draw(st.none() | TEXT)
    element.extend(draw(children))
    element.tail = draw(st.none() | SHORT_TEXT)
    return element


LEAVES = _elements(st.just([]))
ELEMENTS = _elements(st.lists(LEAVES, max_size=2))


@st.composite
def _messages(draw: st.DrawFn) -> ET.Element:
    ns = draw(st.sampled_from(ROOT_NAMESPACES))
    root = ET.Element(tag(ns, "message"))
    for name in draw(st.lists(st.sampled_from(["from", "to", "id", "type"]), unique=True)):
        root.set(name, draw(TEXT))
    root.extend(draw(st.lists(ELEMENTS, max_size=5)))
    for element in root.iter():
        if element.tag.startswith(f"{{{SAME_AS_STANZA}}}"):
            element.tag = tag(ns, element.tag.partition("}")[2])
    return root


MESSAGES = _messages()


# Example counts keep the whole file to seconds; CI runs add up over time.
FUZZ = settings(max_examples=100, deadline=None)
FUZZ_TREES = settings(max_examples=30, deadline=None)  # generated stanzas are costlier


# -- invariants -----------------------------------------------------------------------


def check_invariants(parsed: ParsedMessage) -> None:
    """What the rest of ofnotify relies on, whatever the input was."""
    assert parsed.body is None or len(parsed.body) <= MAX_BODY_CHARS
    assert not (parsed.encrypted and parsed.body is not None)
    assert parsed.is_content == (parsed.body is not None or parsed.encrypted)
    assert not (parsed.chat_state_only and parsed.is_content)
    for stanza_id in (parsed.id, parsed.receipt_for, parsed.marker and parsed.marker.id):
        assert stanza_id is None or len(stanza_id) <= MAX_ID_CHARS  # missed_messages.stanza_id
    if parsed.marker is not None:
        assert parsed.marker.kind in ("received", "displayed", "acknowledged")
        assert parsed.marker.id
    if parsed.delay is not None:
        # It is stored as is: it must be UTC and have a UTC representation.
        assert parsed.delay.utcoffset() == dt.timedelta(0)
        UTCDateTime().process_bind_param(parsed.delay, None)  # type: ignore[arg-type]
    assert isinstance(parsed.sender_bare, str) and isinstance(parsed.recipient_bare, str)


def parse_or_refuse(stanza: str | bytes) -> ParsedMessage | None:
    try:
        parsed = parse_message(stanza)
    except StanzaError as exc:
        assert "malformed" in str(exc) or "too large" in str(exc) or "not a message" in str(exc)
        return None
    check_invariants(parsed)
    return parsed


# -- anything at all --------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(text: str) -> None:
    parse_or_refuse(text)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    parse_or_refuse(data)


@FUZZ_TREES
@given(MESSAGES)
def test_generated_messages_keep_the_invariants(root: ET.Element) -> None:
    from_element = parse_element(root)
    check_invariants(from_element)
    # The same stanza through the text path says the same things.
    from_text = parse_message(ET.tostring(root, encoding="unicode"))
    assert from_text == from_element


@FUZZ_TREES
@given(MESSAGES, st.data())
def test_truncated_stanzas_are_refused(root: ET.Element, data: st.DataObject) -> None:
    text = ET.tostring(root, encoding="unicode")
    cut = data.draw(st.integers(0, len(text) - 1), label="cut")
    with pytest.raises(StanzaError):
        parse_message(text[:cut])


@FUZZ_TREES
@given(MESSAGES, st.data())
def test_mutated_stanzas_parse_or_are_refused(root: ET.Element, data: st.DataObject) -> None:
    text = ET.tostring(root, encoding="unicode")
    at = data.draw(st.integers(0, len(text)), label="at")
    junk = data.draw(
        st.sampled_from(["<", ">", "&", "'", '"', "</message>", "<body>", "&lt", "]]>", "\x00"])
        | xml_text(4),
        label="junk",
    )
    parse_or_refuse(text[:at] + junk + text[at:])


@FUZZ_TREES
@given(MESSAGES, st.data())
def test_control_characters_are_refused(root: ET.Element, data: st.DataObject) -> None:
    text = ET.tostring(root, encoding="unicode")
    at = data.draw(st.integers(0, len(text)), label="at")
    char = data.draw(st.sampled_from(ILLEGAL_CHARS), label="char")
    with pytest.raises(StanzaError):
        parse_message(text[:at] + char + text[at:])
    with pytest.raises(StanzaError):
        parse_message((text[:at] + char + text[at:]).encode())


@pytest.mark.parametrize("reference", ["&#0;", "&#1;", "&#x1F;", "&#xD800;", "&#xFFFE;"])
def test_character_references_to_illegal_characters_are_refused(reference: str) -> None:
    with pytest.raises(StanzaError):
        parse_message(f"<message><body>a{reference}b</body></message>")


# -- body text as people write it ----------------------------------------------------------


@FUZZ
@given(
    st.sampled_from(ROOT_NAMESPACES),
    xml_text(200),
    st.sampled_from(["utf-8", "utf-16", "unicode"]),
)
def test_body_text_comes_back_as_written(ns: str, body: str, encoding: str) -> None:
    root = ET.Element(tag(ns, "message"), {"from": "a@example.test/r", "to": "b@example.test"})
    ET.SubElement(root, tag(ns, "body")).text = body
    raw: str | bytes = (
        ET.tostring(root, encoding="unicode")
        if encoding == "unicode"
        else ET.tostring(root, encoding=encoding, xml_declaration=True)
    )
    parsed = parse_message(raw)
    assert parsed.body == body[:MAX_BODY_CHARS]
    assert parsed.is_content and not parsed.encrypted


def test_the_body_without_xml_lang_wins() -> None:
    parsed = parse_message(
        '<message><body xml:lang="he">שלום</body><body>hello</body><body>later</body></message>'
    )
    assert parsed.body == "hello"


# -- namespaces ------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from([*NAMESPACES, "jabber:iq:roster", "urn:ietf:params:xml:ns:xmpp-streams"]))
def test_message_in_a_foreign_namespace_is_refused(ns: str) -> None:
    text = f'<message xmlns="{ns}"><body>hi</body></message>'
    if ns in ROOT_NAMESPACES:
        assert parse_message(text).body == "hi"
    else:
        with pytest.raises(StanzaError, match="not a message"):
            parse_message(text)


@pytest.mark.parametrize("name", ["iq", "presence", "stream:stream", "Message", "messages"])
def test_other_stanzas_are_refused(name: str) -> None:
    with pytest.raises(StanzaError):
        parse_message(f"<{name} xmlns:stream='http://etherx.jabber.org/streams'/>")


@pytest.mark.parametrize(
    "child",
    [
        '<body xmlns="urn:example:other">not a body</body>',
        '<displayed xmlns="urn:xmpp:chat-markers:1" id="m1"/>',
        '<displayed xmlns="urn:xmpp:chat-markers:0"/>',  # no id
        '<displayed xmlns="urn:xmpp:chat-markers:0" id=""/>',
        '<encrypted xmlns="eu.siacs.conversations.axolotl.x"/>',
        '<delay xmlns="urn:xmpp:delay:1" stamp="2026-01-01T00:00:00Z"/>',
    ],
)
def test_look_alikes_in_other_namespaces_are_ignored(child: str) -> None:
    parsed = parse_message(f'<message xmlns="jabber:client" from="a@x/r">{child}</message>')
    assert (parsed.body, parsed.marker, parsed.encrypted, parsed.delay) == (None, None, False, None)


def test_body_in_the_wrong_stanza_namespace_is_not_a_body() -> None:
    # Offline rows carry no namespace; a jabber:client body inside one is someone's payload.
    parsed = parse_message('<message><body xmlns="jabber:client">x</body></message>')
    assert parsed.body is None and not parsed.is_content


# -- DTDs, entities --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        '<!DOCTYPE message [<!ENTITY x "boom">]><message><body>&x;</body></message>',
        "<!DOCTYPE message SYSTEM 'http://127.0.0.1:9/x.dtd'><message/>",
        '<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><message><body>&x;</body></message>',
        '<!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        "]><message><body>&d;&d;&d;&d;&d;&d;&d;&d;</body></message>",
        "<message><body>&undefined;</body></message>",
    ],
)
def test_dtds_and_entities_are_refused(document: str) -> None:
    with pytest.raises(StanzaError):
        parse_message(document)


@pytest.mark.parametrize(
    "raw",
    [
        b'<?xml version="1.0" encoding="no-such-encoding"?><message/>',  # was a LookupError
        b'<?xml version="1.0" encoding="utf-32"?><message/>',
        b"\xef\xbb\xbf\xff\xfe<message/>",
        b"<message><body>\xed\xa0\x80</body></message>",  # an encoded surrogate
        b"<message><body>\xc3</body></message>",
    ],
)
def test_undecodable_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(StanzaError):
        parse_message(raw)


def test_utf16_with_a_byte_order_mark_is_read() -> None:
    raw = '<message from="a@x/r"><body>مرحبا 📱</body></message>'.encode("utf-16")
    assert parse_message(raw).body == "مرحبا 📱"


@pytest.mark.parametrize("text", ["\ud800", "<message><body>\udfff</body></message>"])
def test_lone_surrogates_in_text_are_refused(text: str) -> None:
    with pytest.raises(StanzaError):
        parse_message(text)


# -- elements not from a parser ---------------------------------------------------------------


def test_comments_and_processing_instructions_are_skipped() -> None:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
    parser.feed(
        "<message><!-- c --><?pi x?><composing xmlns='http://jabber.org/protocol/chatstates'/>"
        "</message>"
    )
    parsed = parse_element(parser.close())
    assert parsed.chat_state_only and parsed.body is None
    with pytest.raises(StanzaError):
        parse_element(ET.Comment("message"))  # type: ignore[arg-type]


# -- delay stamps ---------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.sampled_from(STAMPS), xml_text(40), st.datetimes().map(str)))
def test_any_delay_stamp_is_utc_or_ignored(stamp: str) -> None:
    root = ET.Element("message")
    ET.SubElement(root, f"{{{DELAY}}}delay", stamp=stamp)
    check_invariants(parse_element(root))


@pytest.mark.parametrize(
    "stamp,expected",
    [
        ("2026-11-21T10:00:00+05:30", dt.datetime(2026, 11, 21, 4, 30, tzinfo=dt.UTC)),
        ("2026-11-21T10:00:00", dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)),
        ("9999-12-31T23:59:59-05:00", None),  # would be year 10000 in UTC
        ("0001-01-01T00:00:00+14:00", None),  # would be year 0 in UTC
        ("2026-02-30T00:00:00Z", None),
    ],
)
def test_delay_stamps_at_the_edges(stamp: str, expected: dt.datetime | None) -> None:
    parsed = parse_message(f'<message><delay xmlns="{DELAY}" stamp="{stamp}"/></message>')
    assert parsed.delay == expected


async def test_a_hostile_delay_stamp_does_not_wedge_the_watcher(tmp_path: Path) -> None:
    """A client puts a stamp with no UTC equivalent into a message to someone offline.

    The watcher stores it with the batch; a batch that cannot be written is retried on
    every poll, so a stamp that breaks the write would stop the watcher for everyone.
    """
    parsed = parse_message(
        '<message type="chat" from="mallory@example.test/x" to="alice@example.test" id="m1">'
        '<body>hi</body><delay xmlns="urn:xmpp:delay" stamp="9999-12-31T23:59:59-05:00"/>'
        "</message>"
    )
    stored_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with component_harness(tmp_path) as h:
        batch = WatcherBatch(
            messages=[SeenMessage("alice@example.test", "of:alice:1", parsed, stored_at)]
        )
        await h.ingest.watcher(batch)
        [missed] = await h.rows(MissedMessage)
    assert missed.sent_at == stored_at


async def test_an_overlong_stanza_id_can_be_stored_and_marked(tmp_path: Path) -> None:
    """Ids are cut to the column width, the same way for the message and its marker."""
    long_id = "i" * 5000
    parsed = parse_message(
        f'<message type="chat" from="bob@example.test/x" to="alice@example.test" id="{long_id}">'
        "<body>hi</body></message>"
    )
    assert parsed.id == long_id[:MAX_ID_CHARS]
    async with component_harness(tmp_path) as h:
        seen = SeenMessage("alice@example.test", "of:alice:1", parsed, dt.datetime.now(dt.UTC))
        await h.ingest.watcher(WatcherBatch(messages=[seen]))
        assert await h.receive(marker_xml("alice@example.test/phone", long_id)) == []
        [missed] = await h.rows(MissedMessage)
        assert missed.state == MessageState.READ
        assert h.unexpected == []


# -- size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param("x", id="ascii"),
        pytest.param("📱مرحبا\u202e", id="emoji-rtl"),
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_a_1mb_body_is_capped_in_bounded_memory(unit: str, as_bytes: bool) -> None:
    body = unit * (MB // len(unit.encode()))
    text = f"<message from='a@example.test/r' to='b@example.test'><body>{body}</body></message>"
    raw = text.encode() if as_bytes else text
    result: list[ParsedMessage] = []
    peak = peak_bytes(lambda: result.append(parse_message(raw)))
    assert result[0].body == body[:MAX_BODY_CHARS]
    assert peak < 24 * MB, f"{peak / MB:.1f} MB to parse a 1 MB body"


def test_an_oversized_stanza_is_refused_before_parsing() -> None:
    text = "<message><body>" + "x" * MAX_STANZA_CHARS + "</body></message>"
    with pytest.raises(StanzaError, match="too large"):
        parse_message(text)

    def refuse() -> None:
        with pytest.raises(StanzaError):
            parse_message(text)

    # Refused by its length alone: nothing the size of the input is allocated.
    assert peak_bytes(refuse) < MB


def nested(depth: int, inner: str = "") -> str:
    return "<a>" * depth + inner + "</a>" * depth


@pytest.mark.parametrize("depth", [10_000, 30_000])
def test_deep_nesting_neither_recurses_nor_balloons(depth: int) -> None:
    text = f"<message><body>ok</body><x xmlns='urn:example'>{nested(depth)}</x></message>"
    result: list[ParsedMessage] = []
    peak = peak_bytes(lambda: result.append(parse_message(text)))
    assert result[0].body == "ok" and not result[0].chat_state_only
    # An element costs some tens of bytes; what matters is that it stays proportional.
    assert peak < 60 * len(text), f"{peak / MB:.1f} MB for {len(text) / MB:.1f} MB of input"


def test_deeply_nested_messages_inside_a_message() -> None:
    text = "<message>" * 10_000 + "<body>inner</body>" + "</message>" * 10_000
    parsed = parse_message(text)
    assert parsed.body is None  # only direct children count


def test_many_children_and_attributes_are_bounded() -> None:
    children = "<no-store xmlns='urn:xmpp:hints'/><markable xmlns='urn:xmpp:chat-markers:0'/>"
    attributes = " ".join(f"a{i}='{i}'" for i in range(10_000))
    text = f"<message {attributes}>{children * 5_000}<body>b</body></message>"
    result: list[ParsedMessage] = []
    peak = peak_bytes(lambda: result.append(parse_message(text)))
    assert result[0].hints == {"no-store"} and result[0].markable and result[0].body == "b"
    assert peak < 60 * len(text)


# -- messages sent to the component (AppServer.on_message) ---------------------------------


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ComponentHarness]:
    async with component_harness(tmp_path) as h:
        yield h


async def add_missed(h: ComponentHarness, account: str, sender: str, stanza_id: str) -> None:
    async def work(session: AsyncSession) -> None:
        await readstate.record_missed(
            session,
            account=account,
            conversation=sender,
            source_key=f"of:{account}:{stanza_id}",
            stanza_id=stanza_id,
            body=None,
            encrypted=False,
            sent_at=dt.datetime.now(dt.UTC),
        )

    await h.committer.run(work)


async def states(h: ComponentHarness) -> dict[str, str]:
    return {m.stanza_id or "": m.state for m in await h.rows(MissedMessage)}


async def test_a_displayed_marker_marks_read_only_the_readers_messages(
    harness: ComponentHarness,
) -> None:
    await add_missed(harness, "alice@example.test", "bob@example.test", "m1")
    await add_missed(harness, "carol@example.test", "bob@example.test", "m1")
    # Another account naming alice's message id: only its own messages are touched.
    await harness.receive(marker_xml("mallory@example.test/x", "m1"))
    unread = [m.state for m in await harness.rows(MissedMessage)]
    assert unread == [MessageState.UNREAD, MessageState.UNREAD]
    assert await harness.receive(marker_xml("alice@example.test/phone", "m1")) == []
    read = {m.account: m.state for m in await harness.rows(MissedMessage)}
    assert read == {"alice@example.test": MessageState.READ, "carol@example.test": "unread"}
    assert harness.unexpected == []


SENDERS = [
    "alice@example.test/phone",
    "alice@example.test",
    "example.test",
    "mallory@evil.test/x",
    "مرحبا@example.test/r",
    "",
]


@st.composite
def messages_to_component(draw: st.DrawFn) -> ET.Element:
    root = draw(MESSAGES)
    root.tag = "{jabber:component:accept}message"
    root.set("from", draw(st.sampled_from(SENDERS)))
    root.set("to", "push.example.test")
    kinds = ["chat", "normal", "error", "groupchat", "headline", "bogus", ""]
    root.set("type", draw(st.sampled_from(kinds)))
    return root


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one harness, many stanzas
)
@given(messages_to_component())
async def test_garbage_messages_are_ignored_quietly(
    harness: ComponentHarness, root: ET.Element
) -> None:
    before = await states(harness)
    assert await harness.receive(root) == []  # the component never answers a message
    assert harness.unexpected == []
    assert await states(harness) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"<body>{'x' * MB}</body>", id="1mb-body"),
        pytest.param(f"<displayed xmlns='{MARKERS}' id='{'m' * MB}'/>", id="1mb-marker-id"),
        pytest.param(nested(10_000), id="10k-nested"),
        pytest.param(f"<displayed xmlns='{MARKERS}' id='\u202e📱'/>" * 10_000, id="10k-markers"),
    ],
)
async def test_huge_messages_to_the_component(harness: ComponentHarness, body: str) -> None:
    text = (
        "<message xmlns='jabber:component:accept' from='alice@example.test/phone'"
        f" to='push.example.test'>{body}</message>"
    )
    assert await harness.receive(text) == []
    assert harness.unexpected == []


@pytest.mark.parametrize(
    "sender",
    [
        # slixmpp 1.17 cannot parse these (resourceprep predates emoji; a second @),
        # though servers that implement RFC 7622 route the first one.
        "alice@example.test/📱",
        "a@b@example.test",
        "-bad-domain-",
    ],
)
async def test_a_marker_from_an_unparsable_jid_is_ignored(
    harness: ComponentHarness, sender: str
) -> None:
    replies = await harness.receive(marker_xml(sender, "m1"))
    assert harness.unexpected == [], "AppServer.on_message raised"
    assert replies == []
