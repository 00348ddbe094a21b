"""Proof that the XMPP test infrastructure works against real Prosody and ejabberd.

The product's component is not used here: a throwaway slixmpp component stands in for
it, just enough to drive a full XEP-0357 round trip through each server.

What each server publishes to the app server when alice (push enabled, offline) gets a
chat message from bob, as captured on the component's wire by this setup (one line on
the wire; wrapped here; ids, node and secret vary per run).  The publish-options form is
the one the client sent in <enable/>, echoed back.

Prosody 0.12.3 + mod_cloud_notify (push_notification_with_body/_with_sender = true).
Note the summary form is type='form', carries message-count=1 and an empty
pending-subscription-count, and the id is a 64-hex-digit SHA-256:

    <iq id='9c70c00658c5bc0f987cc5d7a274cd35e3a4162ada8c735b454bbd2e25009290'
        from='example.test' to='push.example.test' type='set'>
      <pubsub xmlns='http://jabber.org/protocol/pubsub'>
        <publish node='fcm-e3b98a4da31a127d'><item>
          <notification xmlns='urn:xmpp:push:0'>
            <x xmlns='jabber:x:data' type='form'>
              <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>
              <field type='text-single' var='message-count'><value>1</value></field>
              <field type='text-single' var='pending-subscription-count'/>
              <field type='jid-single' var='last-message-sender'>
                <value>bob@example.test/tests</value></field>
              <field type='text-single' var='last-message-body'><value>hello alice</value></field>
            </x>
          </notification>
        </item></publish>
        <publish-options>
          <x xmlns='jabber:x:data' type='submit'>
            <field type='hidden' var='FORM_TYPE'>
              <value>http://jabber.org/protocol/pubsub#publish-options</value></field>
            <field var='secret'><value>c6f86608e4b796dc</value></field>
          </x>
        </publish-options>
      </pubsub>
    </iq>

ejabberd 23.01 + mod_push (include_body/include_sender = true).  The summary form is
type='submit', has no message-count, has labels, and the body is the real body text:

    <iq to='push.example.test' from='example.test' type='set'
        id='rr-1795302049082-9931925095965153943-9laWHhkgCVG7ISWzRJFUVlvm7Qw=-38478708'>
      <pubsub xmlns='http://jabber.org/protocol/pubsub'>
        <publish node='fcm-e3b98a4da31a127d'><item>
          <notification xmlns='urn:xmpp:push:0'>
            <x type='submit' xmlns='jabber:x:data'>
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field>
              <field var='last-message-sender' type='jid-single'
                     label='The sender of the last received message'>
                <value>bob@example.test/tests</value></field>
              <field var='last-message-body' type='text-single'
                     label='The body text of the last received message'>
                <value>hello alice</value></field>
            </x>
          </notification>
        </item></publish>
        <publish-options>
          <x type='submit' xmlns='jabber:x:data'>
            <field var='FORM_TYPE' type='hidden'>
              <value>http://jabber.org/protocol/pubsub#publish-options</value></field>
            <field var='secret'><value>138b6420da9c0fea</value></field>
          </x>
        </publish-options>
      </pubsub>
    </iq>
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from slixmpp import ComponentXMPP, Iq
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from tests.support.xmpp_client import PUBLISH_OPTIONS_FORM_TYPE, PUSH_NS, connect_client
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration

TOY_COMMAND = "register-push-fcm"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
DATA_NS = "jabber:x:data"


class ToyPushComponent:
    """Stand-in app server: one ad-hoc command and a recorder for pubsub publishes."""

    timeout = 10.0

    def __init__(self, server: XmppServer, *, secret: str | None = None) -> None:
        self.server = server
        self.xmpp = ComponentXMPP(
            server.component_jid,
            server.component_secret if secret is None else secret,
            server.host,
            server.component_port,
        )
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0060"):
            self.xmpp.register_plugin(plugin)
        self.publishes: asyncio.Queue[Iq] = asyncio.Queue()
        self.xmpp.register_handler(
            Callback("toy push publish", StanzaPath("iq@type=set/pubsub/publish"), self._on_publish)
        )
        # slixmpp's session_bind wipes registered ad-hoc commands, so (re)add them on
        # every session start, including after a reconnect.
        self.xmpp.add_event_handler("session_start", self._add_commands)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[None] = loop.create_future()

        def settle(error: str | None) -> Any:
            def handler(event: Any) -> None:
                if outcome.done():
                    return
                if error is None:
                    outcome.set_result(None)
                else:
                    outcome.set_exception(ConnectionError(f"{error}: {event}"))

            return handler

        handlers = {
            "session_start": settle(None),
            "stream_error": settle("stream error"),
            "disconnected": settle("disconnected before handshake"),
            "connection_failed": settle("connection failed"),
        }
        for name, handler in handlers.items():
            self.xmpp.add_event_handler(name, handler)
        try:
            self.xmpp.connect()
            await asyncio.wait_for(outcome, self.timeout)
        except BaseException:
            self.xmpp.cancel_connection_attempt()
            self.xmpp.abort()
            raise
        finally:
            for name, handler in handlers.items():
                self.xmpp.del_event_handler(name, handler)

    async def disconnect(self) -> None:
        if self.xmpp.transport is not None:
            await asyncio.wait_for(self.xmpp.disconnect(wait=2), 3)
        self.xmpp.abort()

    async def wait_disconnected(self) -> None:
        if self.xmpp.transport is not None:
            await self.xmpp.wait_until("disconnected", self.timeout)

    async def next_publish(self) -> Iq:
        return await asyncio.wait_for(self.publishes.get(), self.timeout)

    def _on_publish(self, iq: Iq) -> None:
        self.publishes.put_nowait(iq)
        iq.reply().send()

    def _add_commands(self, _: Any) -> None:
        self.xmpp.plugin["xep_0050"].add_command(
            node=TOY_COMMAND, name="Register an FCM token", handler=self._command_start
        )

    def _command_start(self, iq: Iq, session: dict[str, Any]) -> dict[str, Any]:
        submitted = session["payload"]
        if isinstance(submitted, Form) and submitted["type"] == "submit":
            # Single-stage use: the submit form came along with the execute request.
            return self._command_submit(submitted, session)
        form: Form = self.xmpp.plugin["xep_0004"].make_form(
            ftype="form", title="Register FCM token"
        )
        form.add_field(var="FORM_TYPE", ftype="hidden", value="urn:ofnotify:toy:register")
        form.add_field(var="token", ftype="text-single", label="FCM token", required=True)
        session.update(payload=form, next=self._command_submit, has_next=False)
        return session

    def _command_submit(
        self, payload: Form | list[Form], session: dict[str, Any]
    ) -> dict[str, Any]:
        form = payload[0] if isinstance(payload, list) else payload
        token = form.get_values().get("token")
        if not token:
            raise XMPPError("bad-request", text="token is required")
        result: Form = self.xmpp.plugin["xep_0004"].make_form(ftype="result", title="Registered")
        result.add_field(var="jid", ftype="jid-single", value=self.server.component_jid)
        node = "fcm-" + hashlib.sha256(token.encode()).hexdigest()[:16]
        result.add_field(var="node", ftype="text-single", value=node)
        result.add_field(var="secret", ftype="text-private", value=secrets.token_hex(8))
        session.update(payload=result, next=None)
        return session


def form_values(x: ET.Element | None) -> dict[str, str]:
    if x is None:
        return {}
    return {
        field.get("var", ""): field.findtext(f"{{{DATA_NS}}}value", "")
        for field in x.iter(f"{{{DATA_NS}}}field")
    }


def parse_publish(iq: Iq) -> tuple[str, dict[str, str], dict[str, str]]:
    """(node, notification summary fields, publish-options fields) of a push publish."""
    pubsub = iq.xml.find(f"{{{PUBSUB_NS}}}pubsub")
    assert pubsub is not None
    publish = pubsub.find(f"{{{PUBSUB_NS}}}publish")
    assert publish is not None
    summary = publish.find(f"{{{PUBSUB_NS}}}item/{{{PUSH_NS}}}notification/{{{DATA_NS}}}x")
    options = pubsub.find(f"{{{PUBSUB_NS}}}publish-options/{{{DATA_NS}}}x")
    return publish.get("node", ""), form_values(summary), form_values(options)


async def assert_no_more_publishes(component: ToyPushComponent, quiet: float = 0.5) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(quiet):
            extra = await component.publishes.get()
        pytest.fail(f"unexpected extra publish: {extra}")


async def test_component_needs_the_right_secret(xmpp_server: XmppServer) -> None:
    intruder = ToyPushComponent(xmpp_server, secret="wrong-" + xmpp_server.component_secret)
    # Both servers answer a bad handshake with a <not-authorized/> stream error.
    with pytest.raises(ConnectionError, match="not-authorized"):
        await intruder.connect()

    component = ToyPushComponent(xmpp_server)
    await component.connect()
    await component.disconnect()


async def test_push_round_trip_survives_restart(
    xmpp_server: XmppServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = xmpp_server
    server.register("alice", "alice-pw")
    server.register("bob", "bob-pw")
    alice_jid = f"alice@{server.domain}"

    component = ToyPushComponent(server)
    await component.connect()
    alice = await connect_client(server, "alice", "alice-pw")

    with pytest.raises(Exception, match="bad-request") as excinfo:
        await alice.run_command(server.component_jid, TOY_COMMAND, {"token": ""})
    assert getattr(excinfo.value, "condition", None) == "bad-request"

    registration = await alice.run_command(server.component_jid, TOY_COMMAND, {"token": "tok-1"})
    assert registration["status"] == "completed"
    fields = registration["fields"]
    assert fields["jid"] == server.component_jid
    push_jid, push_node, push_secret = (
        str(fields["jid"]),
        str(fields["node"]),
        str(fields["secret"]),
    )

    await alice.enable_push(push_jid, push_node, push_secret)
    await alice.go_offline()

    bob = await connect_client(server, "bob", "bob-pw")
    await bob.send_chat(alice_jid, "hello alice")

    publish = await component.next_publish()
    assert publish["from"] == server.domain
    assert publish["to"] == server.component_jid
    node, summary, options = parse_publish(publish)
    assert node == push_node
    assert options.get("FORM_TYPE") == PUBLISH_OPTIONS_FORM_TYPE
    assert options.get("secret") == push_secret
    assert summary.get("FORM_TYPE") == "urn:xmpp:push:summary"
    assert summary.get("last-message-body") == "hello alice"
    assert summary.get("last-message-sender", "").startswith(f"bob@{server.domain}")
    await assert_no_more_publishes(component)
    with capsys.disabled():
        print(f"\n--- {server.name} publish ---\n{publish}")

    await bob.go_offline()
    await asyncio.to_thread(server.restart)
    assert not server.last_stop_forced, server.log_tail()
    await component.wait_disconnected()

    await component.connect()
    bob = await connect_client(server, "bob", "bob-pw")
    await bob.send_chat(alice_jid, "second message")

    node, summary, options = parse_publish(await component.next_publish())
    assert node == push_node
    assert options.get("secret") == push_secret
    assert summary.get("last-message-body") == "second message"
    await assert_no_more_publishes(component)

    # The remaining helpers: offline delivery into the message queue, a single-stage
    # command, and disable_push actually stopping notifications.
    alice = await connect_client(server, "alice", "alice-pw")
    assert (await alice.next_message())["body"] == "hello alice"
    assert (await alice.next_message())["body"] == "second message"
    single = await alice.run_command(
        server.component_jid, TOY_COMMAND, {"token": "tok-2"}, single_stage=True
    )
    assert single["status"] == "completed"
    assert single["fields"]["node"] not in (None, push_node)
    await alice.disable_push(push_jid, push_node)
    await alice.go_offline()
    await bob.send_chat(alice_jid, "nobody is told about this one")
    await assert_no_more_publishes(component)

    await bob.go_offline()
    await component.disconnect()
