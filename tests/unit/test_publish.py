"""The XEP-0357 publish shapes each server sends, and what is refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from component.publish import PublishError, parse_publish

OPTIONS = """<publish-options><x xmlns='jabber:x:data' type='submit'>
  <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>
  <field var='secret'><value>s3cret</value></field></x></publish-options>"""


def iq(notification: str, options: str = OPTIONS, node: str = "n1") -> ET.Element:
    return ET.fromstring(
        f"""<iq xmlns='jabber:component:accept' type='set' from='example.test' to='push.example.test' id='x'>
        <pubsub xmlns='http://jabber.org/protocol/pubsub'>
        <publish node='{node}'><item>{notification}</item></publish>{options}</pubsub></iq>"""
    )


PROSODY = """<notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'>
  <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>
  <field var='message-count'><value>3</value></field>
  <field var='pending-subscription-count'/>
  <field var='last-message-sender'><value>bob@example.test/phone</value></field>
  <field var='last-message-body'><value>Hi there</value></field></x></notification>"""

EJABBERD = """<notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>
  <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>
  <field type='text-single' label='Sender' var='last-message-sender'><value>bob@example.test/x</value></field>
  <field type='text-single' label='Body' var='last-message-body'><value>Yo</value></field></x></notification>"""

BARE = "<notification xmlns='urn:xmpp:push:0'/>"


def test_prosody_summary() -> None:
    p = parse_publish(iq(PROSODY))
    assert (p.node, p.secret, p.message_count) == ("n1", "s3cret", 3)
    assert (p.sender, p.body) == ("bob@example.test/phone", "Hi there")


def test_ejabberd_summary_without_count() -> None:
    p = parse_publish(iq(EJABBERD))
    assert (p.message_count, p.sender, p.body) == (1, "bob@example.test/x", "Yo")


def test_bare_notification() -> None:
    p = parse_publish(iq(BARE))
    assert (p.message_count, p.sender, p.body, p.secret) == (1, None, None, "s3cret")


def test_without_publish_options_has_no_secret() -> None:
    assert parse_publish(iq(PROSODY, options="")).secret is None


@pytest.mark.parametrize(
    "count,expected", [("0", 1), ("-5", 1), ("x", 1), ("10", 10), ("9" * 30, 1_000_000)]
)
def test_message_count_is_sane(count: str, expected: int) -> None:
    note = PROSODY.replace("<value>3</value>", f"<value>{count}</value>")
    assert parse_publish(iq(note)).message_count == expected


def test_huge_body_is_capped() -> None:
    note = PROSODY.replace("Hi there", "x" * 1_000_000)
    assert len(parse_publish(iq(note)).body or "") == 4096


@pytest.mark.parametrize(
    "element",
    [
        "<iq xmlns='jabber:component:accept' type='set'/>",
        "<iq xmlns='jabber:component:accept'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
        "<iq xmlns='jabber:component:accept'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item/></publish></pubsub></iq>",
        "<iq xmlns='jabber:component:accept'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish><item><notification xmlns='urn:xmpp:push:0'/></item></publish></pubsub></iq>",
        # Right element, wrong namespace.
        "<iq xmlns='jabber:component:accept'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><notification xmlns='urn:xmpp:push:1'/></item></publish></pubsub></iq>",
    ],
)
def test_malformed_publishes_are_bad_requests(element: str) -> None:
    with pytest.raises(PublishError) as info:
        parse_publish(ET.fromstring(element))
    assert info.value.condition == "bad-request"
