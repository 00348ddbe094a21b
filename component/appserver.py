"""XEP-0357 app server: registration commands and publish handling.

Registration speaks the protocol Conversations-style clients already use
(`register-push-fcm` / `unregister-push-fcm`, XEP-0050). A publish is answered only
after the resulting outbox row is committed; error texts sent back are generic.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from xml.sax.saxutils import quoteattr

from slixmpp import JID, Iq
from slixmpp.exceptions import XMPPError
from slixmpp.jid import InvalidJID
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import StanzaPath
from sqlalchemy.ext.asyncio import AsyncSession

from . import metrics, registrations
from .adhoc_sessions import CommandSessions
from .committer import GroupCommitter
from .config import Config
from .events import OfflineMessage
from .ingest import Ingest
from .publish import PUBSUB_EL, Publish, PublishError, parse_publish
from .redact import shorten
from .registrations import NodeCache, NodeInfo, TooManyRegistrations
from .stanzas import StanzaError, parse_element
from .xmpp import Component

log = logging.getLogger(__name__)

REGISTER_NODE = "register-push-fcm"
UNREGISTER_NODE = "unregister-push-fcm"
MAX_TOKEN_CHARS = 4096
MAX_ID_CHARS = 255
COMPONENT_IQ = "{jabber:component:accept}iq"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
# A flood of publishes (~12 KB each while in flight) must not grow memory without
# bound: past this many, stop reading the stream; the server waits (TCP backpressure)
# and nothing is lost.
MAX_PUBLISHES_IN_FLIGHT = 500
RESUME_INPUT_BELOW = 250


class AppServer:
    def __init__(
        self,
        xmpp: Component,
        config: Config,
        committer: GroupCommitter,
        nodes: NodeCache,
        ingest: Ingest,
    ) -> None:
        self.xmpp = xmpp
        self._config = config
        self._committer = committer
        self._nodes = nodes
        self._ingest = ingest
        # Publishes by how they were answered: "accepted" or the error condition.
        self.publish_outcomes: Counter[str] = Counter()
        self._channel = config.registration_channel()
        # Publish dedup keys: unique per process run (random) and within it (counter);
        # cheaper than a uuid4 per publish.
        self._run_id = uuid.uuid4().hex[:12]
        self._sequence = itertools.count(1)
        self._fast_tasks: set[asyncio.Task[None]] = set()
        self._replies: list[str] = []  # fast-path answers not yet written
        xmpp.add_raw_handler(self._take_publish)
        xmpp.register_handler(
            CoroutineCallback(
                "xep-0357 publish", StanzaPath("iq@type=set/pubsub/publish"), self.on_publish
            )
        )
        xmpp.register_handler(
            CoroutineCallback("xep-0333 marker", StanzaPath("message"), self.on_message)
        )
        # session_bind wipes ad-hoc commands: add them for every new stream.
        xmpp.add_event_handler("session_start", self._add_commands)

    def _add_commands(self, _event: object) -> None:
        adhoc = self.xmpp.plugin["xep_0050"]
        if not isinstance(adhoc.sessions, CommandSessions):
            adhoc.set_backend(CommandSessions())
        adhoc.add_command(node=REGISTER_NODE, name="Register FCM push", handler=self._register)
        adhoc.add_command(
            node=UNREGISTER_NODE, name="Unregister FCM push", handler=self._unregister
        )

    # -- registration ------------------------------------------------------------

    async def _register(self, iq: Iq, session: dict[str, Any]) -> dict[str, Any]:
        return await self._two_step(session, self._register_submit, ["token", "device-id", "muc"])

    async def _unregister(self, iq: Iq, session: dict[str, Any]) -> dict[str, Any]:
        return await self._two_step(session, self._unregister_submit, ["device-id", "muc"])

    async def _two_step(
        self,
        session: dict[str, Any],
        submit: Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]],
        fields: list[str],
    ) -> dict[str, Any]:
        """Conversations submits the form with `execute`; other clients ask for it first."""
        form = _submitted_form(session.get("payload"))
        if form is not None:
            return await self._submit_or_forget(submit, form, session)
        blank = Form()
        blank["type"] = "form"
        for var in fields:
            blank.add_field(var=var, ftype="text-single", required=var != "muc")
        session.update(
            payload=blank,
            # A partial of a coroutine function: slixmpp awaits only what looks async.
            next=functools.partial(self._submit_or_forget, submit),
            has_next=False,
        )
        return session

    async def _submit_or_forget(
        self,
        submit: Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]],
        payload: Any,
        session: dict[str, Any],
    ) -> dict[str, Any]:
        """An error ends the command; slixmpp would keep its session around regardless."""
        try:
            return await submit(payload, session)
        except XMPPError:
            self.xmpp.plugin["xep_0050"].sessions.pop(session.get("id"), None)
            raise

    async def _register_submit(self, payload: Any, session: dict[str, Any]) -> dict[str, Any]:
        account = _account_of(session["from"])
        values = _values(_submitted_form(payload))
        token = values.get("token", "").strip()
        device = (values.get("device-id") or values.get("android-id") or "").strip()
        muc = values.get("muc", "").strip()
        if not token or not device:
            raise XMPPError("bad-request", "token and device-id are required")
        if len(token) > MAX_TOKEN_CHARS or len(device) > MAX_ID_CHARS or len(muc) > 3071:
            raise XMPPError("not-acceptable", "field too long")
        if muc:
            try:
                muc = JID(muc).bare
            except Exception:
                raise XMPPError("bad-request", "muc is not a JID") from None

        async def work(db: AsyncSession) -> tuple[str, str]:
            reg = await registrations.register(
                db,
                account=account,
                device_id=device,
                muc=muc,
                token=token,
                channel=self._channel,
                max_per_account=self._config.registrations.max_per_account,
            )
            return reg.node, reg.secret

        try:
            node, secret = await self._committer.run(work)
        except TooManyRegistrations:
            log.warning("registration refused for %s: limit reached", account)
            raise XMPPError("resource-constraint", "too many registrations", etype="wait") from None
        except Exception:
            log.exception("registration for %s could not be stored", account)
            raise XMPPError("internal-server-error", "try again later", etype="wait") from None
        self._nodes.invalidate(node)
        log.info("registered %s device=%s token=%s", account, shorten(device), shorten(token))
        result = Form()
        result["type"] = "result"
        result.add_field(var="jid", value=self._config.xmpp.jid)
        result.add_field(var="node", value=node)
        result.add_field(var="secret", value=secret)
        session.update(payload=result, next=None, has_next=False)
        return session

    async def _unregister_submit(self, payload: Any, session: dict[str, Any]) -> dict[str, Any]:
        account = _account_of(session["from"])
        values = _values(_submitted_form(payload))
        device = (values.get("device-id") or values.get("android-id") or "").strip()
        muc = values.get("muc", "").strip() or None
        if not device:
            raise XMPPError("bad-request", "device-id is required")

        async def work(db: AsyncSession) -> list[str]:
            return await registrations.unregister(db, account=account, device_id=device, muc=muc)

        try:
            nodes = await self._committer.run(work)
        except Exception:
            log.exception("unregistration for %s failed", account)
            raise XMPPError("internal-server-error", "try again later", etype="wait") from None
        if not nodes:
            raise XMPPError("item-not-found", "no such registration")
        for node in nodes:
            self._nodes.invalidate(node)
        log.info("unregistered %s device=%s (%d node(s))", account, shorten(device), len(nodes))
        session.update(payload=None, next=None, has_next=False)
        return session

    # -- publishes ---------------------------------------------------------------

    async def on_publish(self, iq: Iq) -> None:
        try:
            await self._publish(iq)
        except XMPPError as exc:
            self._answered(exc.condition)
            raise
        self._answered("accepted")

    def _answered(self, outcome: str) -> None:
        """Count a publish by its answer: "accepted" or the error condition."""
        self.publish_outcomes[outcome] += 1
        metrics.PUBLISHES.labels(outcome).inc()

    async def _publish(self, iq: Iq) -> None:
        try:
            publish = parse_publish(iq.xml)
        except PublishError as exc:
            raise XMPPError(exc.condition, exc.text) from None
        node = await self._nodes.get(publish.node)
        if node is None or node.disabled:
            # Also for disabled nodes: ejabberd/Prosody then stop publishing to it.
            raise XMPPError("item-not-found", "no such node", etype="cancel")
        try:
            sender_domain = iq["from"]
        except InvalidJID:
            raise XMPPError("forbidden", "not your node", etype="auth") from None
        if sender_domain.user or sender_domain.resource or sender_domain.domain != node.domain:
            # Only the account's own server may wake its devices.
            log.warning(
                "refused publish to node %s from %s (registered by %s)",
                shorten(publish.node),
                sender_domain.full,
                node.account,
            )
            raise XMPPError("forbidden", "not your node", etype="auth")
        if publish.secret is None or not hmac.compare_digest(
            publish.secret.encode(), node.secret.encode()
        ):
            log.warning("publish to node %s with a wrong or missing secret", shorten(publish.node))
            raise XMPPError("not-authorized", "bad secret", etype="auth")
        try:
            await self._queue(node, publish)
        except Exception:
            # `wait`: the servers tolerate it and keep the registration alive.
            raise XMPPError("internal-server-error", "try again later", etype="wait") from None
        iq.reply().send()

    async def _queue(self, node: NodeInfo, publish: Publish) -> None:
        """The publish's notification becomes an outbox row; returns once committed."""
        event = OfflineMessage(
            account=node.account,
            dedup_key=f"push:{node.registration_id}:{self._run_id}:{next(self._sequence)}",
            sender=_bare_or_none(publish.sender),
            body=publish.body,
            message_count=publish.message_count,
            registration_id=node.registration_id,
            source="xep0357",
        )
        try:
            ids = await self._ingest.publish(event, node.channel)
        except Exception:
            log.exception("could not queue the notification for %s", node.account)
            raise
        log.debug("publish for %s queued as outbox %s", node.account, ids)

    # The fast path: a publish that will be accepted is answered from the raw element.
    # Whatever it would refuse goes the normal way above, which explains refusals.

    def _take_publish(self, xml: ET.Element) -> bool:
        if xml.tag != COMPONENT_IQ or xml.get("type") != "set" or len(xml) != 1:
            return False
        if xml[0].tag != PUBSUB_EL:
            return False
        task = asyncio.create_task(self._fast_publish(xml))
        self._fast_tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._fast_done)
        if len(self._fast_tasks) >= MAX_PUBLISHES_IN_FLIGHT:
            self.xmpp.pause_input()
        return True

    def _fast_done(self, task: asyncio.Task[None]) -> None:
        self._fast_tasks.discard(task)
        if len(self._fast_tasks) <= RESUME_INPUT_BELOW:
            self.xmpp.resume_input()

    async def _fast_publish(self, xml: ET.Element) -> None:
        node_publish = await self._acceptable(xml)
        if node_publish is None:
            self.xmpp.process_normally(xml)
            return
        try:
            await self._queue(*node_publish)
        except Exception:
            self._raw_reply(
                xml, f"<error type='wait'><internal-server-error xmlns='{STANZA_ERRORS}'/></error>"
            )
            self._answered("internal-server-error")
            return
        self._raw_reply(xml)
        self._answered("accepted")

    async def _acceptable(self, xml: ET.Element) -> tuple[NodeInfo, Publish] | None:
        """The node and publish when every check of `_publish` passes at first sight."""
        sender = xml.get("from")
        if not sender or xml.get("id") is None:
            return None
        try:
            publish = parse_publish(xml)
        except PublishError:
            return None
        node = await self._nodes.get(publish.node)
        # The exact domain string: anything else (a user JID, odd case) is judged by
        # the normal path's JID parsing.
        if node is None or node.disabled or sender != node.domain:
            return None
        if publish.secret is None or not hmac.compare_digest(
            publish.secret.encode(), node.secret.encode()
        ):
            return None
        return node, publish

    def _raw_reply(self, xml: ET.Element, error: str = "") -> None:
        to = quoteattr(xml.get("from") or "")
        frm = quoteattr(xml.get("to") or self._config.xmpp.jid)
        iq_id = quoteattr(xml.get("id") or "")
        kind = "'error'" if error else "'result'"
        body = f">{error}</iq>" if error else "/>"
        self._replies.append(f"<iq type={kind} id={iq_id} to={to} from={frm}{body}")
        if len(self._replies) == 1:
            asyncio.get_running_loop().call_soon(self._flush_replies)

    def _flush_replies(self) -> None:
        # A commit batch answers all its publishes in the same turn of the loop: one
        # write (one system call) for all of them, through slixmpp's send queue.
        replies, self._replies = self._replies, []
        self.xmpp.send("".join(replies))

    async def on_message(self, msg: Any) -> None:
        """A client may tell us directly what it displayed (XEP-0333)."""
        try:
            sender = msg["from"]
            if msg["type"] == "error" or not sender.user:
                return
        except InvalidJID:
            return  # servers validate JIDs; an unparsable one is not worth an answer
        try:
            parsed = parse_element(msg.xml)
        except StanzaError:
            log.info("ignored a malformed message from %s", msg["from"].bare)
            return
        if parsed.marker is None or parsed.marker.kind not in ("displayed", "acknowledged"):
            return
        try:
            await self._ingest.marker(msg["from"].bare, parsed.marker.id)
        except Exception:
            log.warning("could not apply a marker from %s", msg["from"].bare, exc_info=True)


def _submitted_form(payload: Any) -> Form | None:
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        if isinstance(item, Form) and item["type"] in ("submit", ""):
            return item
    return None


def _values(form: Form | None) -> dict[str, str]:
    if form is None:
        return {}
    out: dict[str, str] = {}
    for var, field in form.get_fields().items():
        value = field.get_value(convert=False)
        # Hidden and multi-value fields come back as lists.
        out[var] = value[0] if isinstance(value, list) and value else (value or "")
        if not isinstance(out[var], str):
            out[var] = str(out[var])
    return out


def _account_of(jid: JID) -> str:
    if not jid.user:
        raise XMPPError("forbidden", "only user accounts can register", etype="auth")
    return jid.bare


def _bare_or_none(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return JID(value).bare or None
    except Exception:
        return None
