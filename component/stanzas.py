"""One parser for message stanzas: Openfire's offline rows and what reaches the component.

Openfire stores offline stanzas without `xmlns="jabber:client"`; stanzas routed to a
component arrive as `jabber:component:accept` (or `jabber:client`). Both parse here
into one `ParsedMessage`. Parsing never trusts the input: DTDs and entities are
refused (defusedxml), sizes are capped, and malformed XML raises `StanzaError`.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

STANZA_NAMESPACES = {"", "jabber:client", "jabber:server", "jabber:component:accept"}
MARKERS = "urn:xmpp:chat-markers:0"
RECEIPTS = "urn:xmpp:receipts"
HINTS = "urn:xmpp:hints"
DELAY = "urn:xmpp:delay"
CHATSTATES = "http://jabber.org/protocol/chatstates"
EME = "urn:xmpp:eme:0"
# Payloads that mean "the body, if any, is only a fallback for old clients".
ENCRYPTED_PAYLOADS = {
    "{eu.siacs.conversations.axolotl}encrypted",  # OMEMO (legacy)
    "{urn:xmpp:omemo:2}encrypted",  # OMEMO 2
    "{urn:xmpp:openpgp:0}openpgp",  # XEP-0373
    "{jabber:x:encrypted}x",  # XEP-0027
}
MAX_STANZA_CHARS = 2_000_000
MAX_BODY_CHARS = 4096
# Stanza ids are stored (missed_messages.stanza_id, String(255)) and matched against
# marker ids; both are cut the same way, so a longer id still matches its marker.
MAX_ID_CHARS = 255


class StanzaError(ValueError):
    """Not a usable message stanza; the text is safe to log (no content)."""


@dataclass(frozen=True)
class Marker:
    kind: str  # received | displayed | acknowledged
    id: str


@dataclass(frozen=True)
class ParsedMessage:
    sender: str  # full JID as written
    recipient: str
    id: str | None
    type: str  # normal when absent, as RFC 6121 says
    thread: str | None
    body: str | None  # None for encrypted messages: the body is a fallback text
    encrypted: bool
    markable: bool
    marker: Marker | None
    receipt_request: bool
    receipt_for: str | None
    hints: frozenset[str]
    delay: dt.datetime | None
    chat_state_only: bool

    @property
    def sender_bare(self) -> str:
        return bare(self.sender)

    @property
    def recipient_bare(self) -> str:
        return bare(self.recipient)

    @property
    def is_content(self) -> bool:
        """Something a person should be told about (not a marker, receipt or state)."""
        return self.body is not None or self.encrypted


def bare(jid: str) -> str:
    return jid.split("/", 1)[0].lower()


def _local(tag: object) -> tuple[str, str]:
    if not isinstance(tag, str):  # comments and processing instructions
        return "", ""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def parse_message(stanza: str | bytes) -> ParsedMessage:
    if len(stanza) > MAX_STANZA_CHARS:
        raise StanzaError(f"stanza too large ({len(stanza)} chars)")
    try:
        root = safe_fromstring(stanza, forbid_dtd=True)
    # LookupError: bytes declaring an encoding Python does not know (encoding="x").
    except (ET.ParseError, DefusedXmlException, ValueError, LookupError) as exc:
        raise StanzaError(f"malformed XML: {type(exc).__name__}") from None
    return parse_element(root)


def parse_element(root: ET.Element) -> ParsedMessage:
    ns, name = _local(root.tag)
    if name != "message" or ns not in STANZA_NAMESPACES:
        raise StanzaError(f"not a message stanza: <{name}>")
    body = thread = None
    body_without_lang = False
    encrypted = markable = receipt_request = False
    marker: Marker | None = None
    receipt_for: str | None = None
    hints: set[str] = set()
    delay: dt.datetime | None = None
    others = 0
    chat_states = 0
    for child in root:
        cns, cname = _local(child.tag)
        if not cname:
            continue
        if cns == ns and cname == "body":
            # First body without xml:lang wins; otherwise the first body.
            without_lang = child.get("{http://www.w3.org/XML/1998/namespace}lang") is None
            if body is None or (without_lang and not body_without_lang):
                body = (child.text or "")[:MAX_BODY_CHARS]
                body_without_lang = without_lang
            continue
        if cns == ns and cname == "thread":
            thread = (child.text or "").strip() or None
            continue
        if child.tag in ENCRYPTED_PAYLOADS or (cns == EME and cname == "encryption"):
            encrypted = True
        elif cns == MARKERS:
            if cname == "markable":
                markable = True
            elif cname in ("received", "displayed", "acknowledged") and child.get("id"):
                marker = Marker(cname, _id(child.get("id")) or "")
        elif cns == RECEIPTS:
            if cname == "request":
                receipt_request = True
            elif cname == "received":
                receipt_for = _id(child.get("id"))
        elif cns == HINTS:
            hints.add(cname)
        elif cns == DELAY and cname == "delay":
            delay = _stamp(child.get("stamp"))
        elif cns == CHATSTATES:
            chat_states += 1
            continue
        others += 1
    if encrypted:
        body = None
    return ParsedMessage(
        sender=root.get("from") or "",
        recipient=root.get("to") or "",
        id=_id(root.get("id")),
        type=root.get("type") or "normal",
        thread=thread,
        body=body,
        encrypted=encrypted,
        markable=markable,
        marker=marker,
        receipt_request=receipt_request,
        receipt_for=receipt_for,
        hints=frozenset(hints),
        delay=delay,
        chat_state_only=chat_states > 0 and others == 0 and body is None,
    )


def _id(value: str | None) -> str | None:
    return value[:MAX_ID_CHARS] if value is not None else None


def _stamp(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=dt.UTC)
        # In UTC, as stored; a stamp at the edge of the calendar (year 1 or 9999 with an
        # offset) has no UTC equivalent and would fail every write of its batch.
        return stamp.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None
