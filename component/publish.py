"""Reading an XEP-0357 publish, whatever server sent it.

Shapes seen in the wild (see tests/unit/test_publish.py for each):
- Prosody mod_cloud_notify: summary form `type='form'` with `message-count`;
- ejabberd mod_push: summary form `type='submit'`, no `message-count`;
- ejabberd without a body, or any server hiding details: `<notification/>` alone;
- Openfire's Push Notification plugin: `type='form'`, `message-count` 1.
Publish options (with the secret) may be absent entirely.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

PUBSUB = "http://jabber.org/protocol/pubsub"
PUSH = "urn:xmpp:push:0"
DATAFORM = "jabber:x:data"

MAX_FIELD_CHARS = 4096  # a summary is a hint, not the message: cap what we keep
# Nodes are ours (`registrations.node`, String(64)): a longer one cannot exist, and must
# not reach the node cache, which would hold it (30 s, up to 100,000 entries) for anyone.
MAX_NODE_CHARS = 64


class PublishError(ValueError):
    """The IQ is not a usable publish; `condition` is the XMPP error to answer."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class Publish:
    node: str
    secret: str | None
    message_count: int
    sender: str | None
    body: str | None


def _form_fields(form: ET.Element | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    if form is None:
        return fields
    for field in form.findall(f"{{{DATAFORM}}}field"):
        var = field.get("var")
        if not var:
            continue
        values = [v.text or "" for v in field.findall(f"{{{DATAFORM}}}value")]
        fields[var] = "\n".join(values)[:MAX_FIELD_CHARS]
    return fields


def parse_publish(iq: ET.Element) -> Publish:
    pubsub = iq.find(f"{{{PUBSUB}}}pubsub")
    if pubsub is None:
        raise PublishError("bad-request", "no pubsub element")
    publish = pubsub.find(f"{{{PUBSUB}}}publish")
    if publish is None:
        raise PublishError("bad-request", "no publish element")
    node = publish.get("node") or ""
    if not node:
        raise PublishError("bad-request", "publish without node")
    if len(node) > MAX_NODE_CHARS:
        raise PublishError("item-not-found", "no such node")
    item = publish.find(f"{{{PUBSUB}}}item")
    notification = item.find(f"{{{PUSH}}}notification") if item is not None else None
    if notification is None:
        raise PublishError("bad-request", "no urn:xmpp:push:0 notification")
    summary = _form_fields(notification.find(f"{{{DATAFORM}}}x"))
    options_el = pubsub.find(f"{{{PUBSUB}}}publish-options")
    options = _form_fields(options_el.find(f"{{{DATAFORM}}}x") if options_el is not None else None)
    return Publish(
        node=node,
        secret=options.get("secret") or None,
        message_count=_count(summary.get("message-count")),
        sender=summary.get("last-message-sender") or None,
        body=summary.get("last-message-body") or None,
    )


def _count(value: str | None) -> int:
    try:
        return max(1, min(int(value or 1), 1_000_000))
    except ValueError:
        return 1
