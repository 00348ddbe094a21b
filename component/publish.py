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
PUBSUB_EL = f"{{{PUBSUB}}}pubsub"
PUBLISH_EL = f"{{{PUBSUB}}}publish"
ITEM_EL = f"{{{PUBSUB}}}item"
OPTIONS_EL = f"{{{PUBSUB}}}publish-options"
NOTIFICATION_EL = f"{{{PUSH}}}notification"
FORM_EL = f"{{{DATAFORM}}}x"
FIELD = f"{{{DATAFORM}}}field"
VALUE = f"{{{DATAFORM}}}value"

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
    for field in form:
        var = field.get("var")
        if field.tag != FIELD or not var:
            continue
        values = [v.text or "" for v in field if v.tag == VALUE]
        fields[var] = "\n".join(values)[:MAX_FIELD_CHARS]
    return fields


def _child(parent: ET.Element | None, tag: str) -> ET.Element | None:
    # A plain scan: ElementPath's `find` costs more than the handful of children here.
    if parent is not None:
        for child in parent:
            if child.tag == tag:
                return child
    return None


def parse_publish(iq: ET.Element) -> Publish:
    pubsub = _child(iq, PUBSUB_EL)
    if pubsub is None:
        raise PublishError("bad-request", "no pubsub element")
    publish = _child(pubsub, PUBLISH_EL)
    if publish is None:
        raise PublishError("bad-request", "no publish element")
    node = publish.get("node") or ""
    if not node:
        raise PublishError("bad-request", "publish without node")
    if len(node) > MAX_NODE_CHARS:
        raise PublishError("item-not-found", "no such node")
    notification = _child(_child(publish, ITEM_EL), NOTIFICATION_EL)
    if notification is None:
        raise PublishError("bad-request", "no urn:xmpp:push:0 notification")
    summary = _form_fields(_child(notification, FORM_EL))
    options = _form_fields(_child(_child(pubsub, OPTIONS_EL), FORM_EL))
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
