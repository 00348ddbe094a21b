"""A small asyncio XMPP client for integration tests, built on slixmpp.

Every operation has a bounded wait, so a misbehaving server or component fails the test
with a TimeoutError instead of hanging it.  Connections are plain TCP to the test
server's loopback c2s port: no TLS, PLAIN/SCRAM over the unencrypted stream.

    client = await connect_client(server, "alice", "pw")
    result = await client.run_command(server.component_jid, "register-push-fcm", {...})
    await client.enable_push(result["fields"]["jid"], result["fields"]["node"], secret)
    await client.go_offline()
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from slixmpp import JID, ClientXMPP, Iq, Message
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0004 import Form

if TYPE_CHECKING:
    from tests.support.xmpp_servers import XmppServer

__all__ = [
    "PUBLISH_OPTIONS_FORM_TYPE",
    "PUSH_NS",
    "Client",
    "CommandResult",
    "FieldValue",
    "XmppError",
    "connect_client",
]

PUSH_NS = "urn:xmpp:push:0"
PUBLISH_OPTIONS_FORM_TYPE = "http://jabber.org/protocol/pubsub#publish-options"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"

DEFAULT_TIMEOUT = 10.0
# Guards against a command that never completes: no real workflow needs more stages.
MAX_COMMAND_STAGES = 5

FieldValue = str | list[str] | None


class XmppError(Exception):
    """An XMPP error reply; ``condition`` is the RFC 6120 condition, e.g. ``bad-request``."""

    def __init__(self, condition: str, text: str = "", error_type: str = "", stanza: Any = None):
        self.condition = condition
        self.text = text
        self.error_type = error_type
        self.stanza = stanza
        super().__init__(f"{condition} ({error_type}): {text}" if text else condition)

    @classmethod
    def from_iq_error(cls, exc: IqError) -> XmppError:
        error = exc.iq["error"]
        return cls(error["condition"], error["text"], error["type"], exc.iq)


class CommandResult(TypedDict):
    status: str  # "completed", "canceled" or (only if stages ran out) "executing"
    fields: dict[str, FieldValue]
    notes: list[tuple[str, str]]  # (type, text)
    sessionid: str


def form_values(form: Form) -> dict[str, FieldValue]:
    """Field values as sent on the wire: strings, lists for multi-value fields."""
    return {var: field.get_value(convert=False) for var, field in form.get_fields().items() if var}


class Client:
    """A connected, available XMPP client. Create it with :func:`connect_client`."""

    def __init__(
        self, xmpp: ClientXMPP, server: XmppServer, op_timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.xmpp = xmpp
        self.server = server
        #: Bound, in seconds, on every wait of every operation (IQ replies, queues...).
        self.timeout = op_timeout
        #: Every message stanza received (chat, normal, error, headline ...), in order.
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        xmpp.add_event_handler("message", self.messages.put_nowait)

    @property
    def jid(self) -> JID:
        """The bound full JID."""
        return self.xmpp.boundjid

    @property
    def bare_jid(self) -> str:
        return self.xmpp.boundjid.bare

    @property
    def connected(self) -> bool:
        return self.xmpp.transport is not None

    async def _send(self, iq: Iq) -> Iq:
        # slixmpp's own IQ timeout (rather than an outer asyncio.timeout) also drops the
        # pending reply handler.
        try:
            return await iq.send(timeout=self.timeout)
        except IqError as exc:
            raise XmppError.from_iq_error(exc) from exc
        except IqTimeout as exc:
            raise TimeoutError(f"no reply within {self.timeout} s to {iq}") from exc

    async def round_trip(self) -> None:
        """Wait until the server has processed everything this client sent so far.

        A server handles one client stream in order, so once it answers a disco#info
        query, every earlier stanza (e.g. a chat message) has been routed, stored
        offline or pushed.
        """
        iq = self.xmpp.make_iq_get(queryxmlns=DISCO_INFO_NS, ito=self.server.domain)
        await self._send(iq)

    # -- XEP-0050 ad-hoc commands ---------------------------------------------------------

    async def run_command(
        self,
        jid: str,
        node: str,
        fields: Mapping[str, str | Sequence[str]] | None = None,
        *,
        single_stage: bool = False,
    ) -> CommandResult:
        """Execute an ad-hoc command and return its final result.

        By default the command is executed, the given fields are submitted in the first
        form it returns (FORM_TYPE is copied over), and later stages, if any, get the
        given fields that they ask for.  With ``single_stage=True`` the submit form rides
        on the initial ``execute`` request instead, for commands that complete at once.

        Raises :class:`XmppError` (``.condition`` e.g. ``bad-request``, ``forbidden``)
        if the command answers with an IQ error.
        """
        given = dict(fields or {})
        if single_stage:
            reply = await self._command_iq(
                jid, node, "execute", payload=self._submit_form(None, given)
            )
        else:
            reply = await self._command_iq(jid, node, "execute")
            for stage in range(MAX_COMMAND_STAGES):
                command = reply["command"]
                if command["status"] != "executing":
                    break
                received = self._command_form(reply)
                if stage == 0 or received is None:
                    answer = given
                else:
                    wanted = received.get_fields()
                    answer = {var: value for var, value in given.items() if var in wanted}
                actions = set(command["actions"])
                action = "complete" if "complete" in actions or not actions else "next"
                reply = await self._command_iq(
                    jid,
                    node,
                    action,
                    payload=self._submit_form(received, answer),
                    sessionid=command["sessionid"],
                )
        command = reply["command"]
        form = self._command_form(reply)
        return CommandResult(
            status=command["status"],
            fields=form_values(form) if form is not None else {},
            notes=[(note_type, text) for note_type, text in command["notes"]],
            sessionid=command["sessionid"],
        )

    async def _command_iq(
        self,
        jid: str,
        node: str,
        action: str,
        *,
        payload: Form | None = None,
        sessionid: str | None = None,
    ) -> Iq:
        try:
            return await self.xmpp.plugin["xep_0050"].send_command(
                jid,
                node,
                action=action,
                payload=payload,
                sessionid=sessionid,
                timeout=self.timeout,
            )
        except IqError as exc:
            raise XmppError.from_iq_error(exc) from exc
        except IqTimeout as exc:
            raise TimeoutError(
                f"ad-hoc command {node!r} on {jid}: no reply in {self.timeout} s"
            ) from exc

    @staticmethod
    def _command_form(reply: Iq) -> Form | None:
        forms = [item for item in reply["command"]["substanzas"] if isinstance(item, Form)]
        return forms[0] if forms else None

    def _submit_form(
        self, received: Form | None, values: Mapping[str, str | Sequence[str]]
    ) -> Form:
        form: Form = self.xmpp.plugin["xep_0004"].make_form(ftype="submit")
        declared = received.get_fields() if received is not None else {}
        if "FORM_TYPE" in declared and "FORM_TYPE" not in values:
            form.add_field(
                var="FORM_TYPE", ftype="hidden", value=declared["FORM_TYPE"].get_value(False)
            )
        for var, value in values.items():
            # Reusing the declared type makes slixmpp serialise multi-value fields right.
            ftype = declared[var]["type"] if var in declared else None
            form.add_field(var=var, ftype=ftype, value=value)
        return form

    # -- XEP-0357 push ------------------------------------------------------------------

    async def enable_push(
        self,
        jid: str,
        node: str,
        secret: str | None,
        *,
        extra_options: Mapping[str, str] | None = None,
    ) -> None:
        """Register ``jid``/``node`` as this account's XEP-0357 app server.

        ``secret`` (and ``extra_options``) go into the publish-options form that the
        server copies into every notification it publishes.
        """
        enable = ET.Element(f"{{{PUSH_NS}}}enable", {"jid": jid, "node": node})
        options = {**({"secret": secret} if secret is not None else {}), **(extra_options or {})}
        if options:
            form: Form = self.xmpp.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS_FORM_TYPE)
            for var, value in options.items():
                form.add_field(var=var, value=value)
            enable.append(form.xml)
        await self._send(self.xmpp.make_iq_set(enable))

    async def disable_push(self, jid: str, node: str | None = None) -> None:
        """Unregister one node of ``jid`` or, with ``node=None``, all of them."""
        attrs = {"jid": jid, **({"node": node} if node is not None else {})}
        disable = ET.Element(f"{{{PUSH_NS}}}disable", attrs)
        await self._send(self.xmpp.make_iq_set(disable))

    # -- messages and presence ------------------------------------------------------------

    async def send_chat(self, to: str, body: str) -> None:
        """Send a chat message and wait until the server has routed it."""
        self.xmpp.send_message(mto=to, mbody=body, mtype="chat")
        await self.round_trip()

    async def next_message(self, *, with_body: bool = True) -> Message:
        """Next received message (by default skipping body-less ones such as chat states)."""
        async with asyncio.timeout(self.timeout):
            while True:
                message = await self.messages.get()
                if not with_body or message["body"]:
                    return message

    async def go_offline(self) -> None:
        """Close the stream cleanly and wait until the server has closed its side.

        Once the server's closing tag has arrived the session is gone, so new messages
        for this account go to offline storage (and trigger push).
        """
        if not self.connected:
            return
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=self.timeout), self.timeout + 1)
        finally:
            self.xmpp.abort()

    disconnect = go_offline


async def connect_client(
    server: XmppServer,
    user: str,
    password: str,
    *,
    resource: str = "tests",
    send_presence: bool = True,
    op_timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """Log in as ``user@server.domain`` over plain TCP and become available.

    Must be awaited inside the running event loop (slixmpp binds to it on creation).
    ``op_timeout`` bounds the login and becomes the returned client's ``timeout``.
    Raises ``ConnectionError`` if authentication fails or the stream is refused, and
    ``TimeoutError`` if no session starts within ``op_timeout`` seconds.
    """
    xmpp = ClientXMPP(
        f"{user}@{server.domain}/{resource}",
        password,
        plugin_config={
            # The test servers offer no TLS, so allow the mechanisms slixmpp
            # otherwise only uses on encrypted streams.
            "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True},
        },
    )
    # No direct TLS and no STARTTLS attempts: just the plain stream on the c2s port.
    xmpp.enable_direct_tls = False
    xmpp.enable_starttls = False
    xmpp.enable_plaintext = True
    for plugin in ("xep_0030", "xep_0004", "xep_0050"):
        xmpp.register_plugin(plugin)

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()

    def succeed(_: Any) -> None:
        if not outcome.done():
            outcome.set_result(None)

    def fail(reason: str) -> Any:
        def handler(event: Any) -> None:
            if not outcome.done():
                detail = f" ({event})" if event else ""
                outcome.set_exception(ConnectionError(f"{user}@{server.domain}: {reason}{detail}"))

        return handler

    xmpp.add_event_handler("session_start", succeed)
    xmpp.add_event_handler("failed_all_auth", fail("authentication failed"))
    xmpp.add_event_handler("stream_error", fail("stream error"))
    xmpp.add_event_handler("connection_failed", fail("connection failed"))
    xmpp.add_event_handler("disconnected", fail("disconnected before session start"))
    xmpp.connect(server.host, server.c2s_port)
    try:
        await asyncio.wait_for(outcome, op_timeout)
    except BaseException:
        # Stop slixmpp's background reconnect loop as well as the connection.
        xmpp.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            xmpp.abort()
        raise
    client = Client(xmpp, server, op_timeout)
    if send_presence:
        xmpp.send_presence()
        await client.round_trip()
    return client
