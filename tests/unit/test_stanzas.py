"""The one stanza parser, on Openfire's offline rows and component stanzas."""

from __future__ import annotations

import datetime as dt

import pytest

from component.stanzas import StanzaError, parse_message

OPENFIRE_ROW = (
    '<message type="chat" to="jenny@example.test" id="m1" xml:lang="en" '
    'from="michael@example.test/desk"><body>Hi</body>'
    '<thread>t-42</thread><markable xmlns="urn:xmpp:chat-markers:0"/>'
    '<request xmlns="urn:xmpp:receipts"/></message>'
)


def test_openfire_row_without_namespace() -> None:
    m = parse_message(OPENFIRE_ROW)
    assert (m.sender, m.recipient, m.id, m.type) == (
        "michael@example.test/desk",
        "jenny@example.test",
        "m1",
        "chat",
    )
    assert (m.sender_bare, m.recipient_bare) == ("michael@example.test", "jenny@example.test")
    assert (m.body, m.thread, m.markable, m.receipt_request) == ("Hi", "t-42", True, True)
    assert m.is_content and m.marker is None and not m.encrypted


@pytest.mark.parametrize("ns", ["jabber:client", "jabber:component:accept", "jabber:server"])
def test_stream_namespaces(ns: str) -> None:
    m = parse_message(f'<message xmlns="{ns}" from="a@x/r" to="b@x"><body>yo</body></message>')
    assert m.body == "yo" and m.type == "normal"


@pytest.mark.parametrize("kind", ["received", "displayed", "acknowledged"])
def test_chat_markers(kind: str) -> None:
    m = parse_message(
        f'<message type="chat" to="m@x" from="j@x/p"><{kind} xmlns="urn:xmpp:chat-markers:0" id="m7"/></message>'
    )
    assert m.marker is not None and (m.marker.kind, m.marker.id) == (kind, "m7")
    assert not m.is_content


def test_receipt_and_hints_and_delay() -> None:
    m = parse_message(
        '<message to="m@x" from="j@x/p"><received xmlns="urn:xmpp:receipts" id="m3"/>'
        '<no-store xmlns="urn:xmpp:hints"/><no-copy xmlns="urn:xmpp:hints"/>'
        '<delay xmlns="urn:xmpp:delay" from="x" stamp="2026-11-21T10:00:00.123Z"/></message>'
    )
    assert m.receipt_for == "m3"
    assert m.hints == {"no-store", "no-copy"}
    assert m.delay == dt.datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "payload",
    [
        '<encrypted xmlns="eu.siacs.conversations.axolotl"><payload>x</payload></encrypted>',
        '<encrypted xmlns="urn:xmpp:omemo:2"/>',
        '<openpgp xmlns="urn:xmpp:openpgp:0">x</openpgp>',
        '<x xmlns="jabber:x:encrypted">x</x>',
        '<encryption xmlns="urn:xmpp:eme:0" namespace="something-new"/>',
    ],
)
def test_encrypted_body_is_never_the_fallback(payload: str) -> None:
    m = parse_message(
        f'<message type="chat" to="m@x" from="j@x/p"><body>I sent you an OMEMO message</body>{payload}</message>'
    )
    assert m.encrypted and m.body is None and m.is_content


def test_chat_state_only() -> None:
    m = parse_message(
        '<message type="chat" to="m@x" from="j@x"><composing xmlns="http://jabber.org/protocol/chatstates"/></message>'
    )
    assert m.chat_state_only and not m.is_content


def test_body_without_lang_preferred_and_capped() -> None:
    m = parse_message(
        '<message to="m@x" from="j@x"><body xml:lang="de">Hallo</body><body>Hello</body></message>'
    )
    assert m.body == "Hello"
    long = parse_message(f'<message to="m@x" from="j@x"><body>{"x" * 100_000}</body></message>')
    assert long.body is not None and len(long.body) == 4096


def test_unicode_and_rtl_survive() -> None:
    text = "שלום 👋 안녕하세요 \u202eabc"
    assert parse_message(f'<message to="m@x" from="j@x"><body>{text}</body></message>').body == text


@pytest.mark.parametrize(
    "bad",
    [
        "<message><body>truncated",
        "not xml at all",
        "",
        '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaa">]><message><body>&a;</body></message>',
        '<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><message><body>&x;</body></message>',
        "<presence from='a@x'/>",
        "<message xmlns='urn:other'/>",
    ],
)
def test_malformed_or_hostile_input_is_a_stanza_error(bad: str) -> None:
    with pytest.raises(StanzaError):
        parse_message(bad)


def test_error_text_carries_no_content() -> None:
    with pytest.raises(StanzaError) as info:
        parse_message("<message><body>secret words")
    assert "secret" not in str(info.value)


def test_oversized_stanza_is_refused() -> None:
    with pytest.raises(StanzaError, match="too large"):
        parse_message("<message>" + "x" * 2_000_001 + "</message>")
