"""An `AppServer` wired as `component/service.py` wires it, minus the network.

The slixmpp component is built but never connected: what it would send is recorded in
`ComponentHarness.sent`, and stanzas "arrive" through slixmpp's own dispatch
(`receive`), so handler matching, ad-hoc command sessions and the error replies slixmpp
makes from exceptions are the real ones. Storage is a real SQLite file behind the real
`GroupCommitter`, `NodeCache`, `Policy` and `Ingest`.

    async with component_harness(tmp_path) as h:
        reg = await h.register("alice@example.test")
        [reply] = await h.receive(publish_xml(reg.node, reg.secret))
        assert outcome(reply) == "result"

Handlers can also be called directly (`await h.app.on_publish(h.iq(xml))`);
`publish_outcome` does that and returns the `XMPPError` condition it raised, as slixmpp
would have answered it.

Everything slixmpp would hand to its global exception hook (an exception a handler did
not turn into an `XMPPError`), and every handler task that ended in an exception, is
collected in `ComponentHarness.unexpected`: a hostile stanza must leave it empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape, quoteattr

import yaml
from slixmpp import Iq, Message
from slixmpp.exceptions import XMPPError
from slixmpp.xmlstream import StanzaBase
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from component import registrations
from component.appserver import REGISTER_NODE, UNREGISTER_NODE, AppServer
from component.committer import GroupCommitter
from component.config import Config, parse_config
from component.ingest import Ingest
from component.policy import Policy
from component.registrations import NodeCache
from component.store import Base, Registration, create_schema, make_engine, make_sessionmaker
from component.xmpp import Component

__all__ = [
    "COMPONENT_JID",
    "REGISTER_NODE",
    "SERVER_DOMAIN",
    "UNREGISTER_NODE",
    "ComponentHarness",
    "FieldValue",
    "command_fields",
    "command_xml",
    "component_harness",
    "harness_config",
    "marker_xml",
    "outcome",
    "publish_xml",
]

COMPONENT_JID = "push.example.test"
SERVER_DOMAIN = "example.test"

COMMANDS_NS = "http://jabber.org/protocol/commands"
DATAFORM_NS = "jabber:x:data"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
PUSH_NS = "urn:xmpp:push:0"
MARKERS_NS = "urn:xmpp:chat-markers:0"

FieldValue = str | Sequence[str]
ModelT = TypeVar("ModelT", bound=Base)


def harness_config(tmp_path: Path, **sections: Any) -> Config:
    """A valid configuration with one FCM channel `phone` and SQLite in `tmp_path`.

    Keyword arguments add or replace whole top-level sections, e.g.
    ``registrations={"max_per_account": 3}``.
    """
    service_account = tmp_path / "service-account.json"
    service_account.write_text("{}")
    data: dict[str, Any] = {
        "xmpp": {"jid": COMPONENT_JID, "secret": "component-secret"},
        "storage": {"url": f"sqlite:///{tmp_path / 'ofnotify.db'}"},
        "channels": {
            "phone": {
                "type": "fcm",
                "project_id": "test-project",
                "service_account_file": str(service_account),
            }
        },
        "rules": [{"event": "offline_message", "channel": "phone"}],
    }
    data.update(sections)
    return parse_config(yaml.safe_dump(data, sort_keys=False), "harness", {})


class ComponentHarness:
    """The component side of ofnotify with a recording, never-connected stream."""

    def __init__(self, config: Config, engine: AsyncEngine) -> None:
        self.config = config
        self.engine = engine
        self.sessionmaker = make_sessionmaker(engine)
        self.committer = GroupCommitter(self.sessionmaker)
        self.nodes = NodeCache(self.sessionmaker)
        self.ingest = Ingest(
            self.committer,
            Policy(config),
            self._wake,
            include_body=config.privacy.include_body,
        )
        self.xmpp = Component(config.xmpp)
        self.app = AppServer(self.xmpp, config, self.committer, self.nodes, self.ingest)
        # Every stanza the component sent, oldest first.
        self.sent: list[StanzaBase] = []
        # Exceptions no handler turned into an XMPP error (see the module docstring).
        self.unexpected: list[BaseException] = []
        # How often the dispatcher would have been woken (an outbox row was queued).
        self.wakeups = 0
        self.xmpp.send = self._record  # type: ignore[method-assign]
        self.xmpp.exception = self.unexpected.append  # type: ignore[method-assign]

    async def start(self) -> None:
        """What a new stream does: start committing, announce the ad-hoc commands."""
        self.committer.start()
        await self._settle(lambda: self.xmpp.event("session_start"))

    async def stop(self) -> None:
        await self.committer.stop()

    # -- stanzas in -----------------------------------------------------------------

    def stanza(self, xml: str | ET.Element) -> StanzaBase:
        """The stanza object slixmpp would build from this XML on the component stream."""
        element = ET.fromstring(xml) if isinstance(xml, str) else xml
        return self.xmpp._build_stanza(element)

    def iq(self, xml: str | ET.Element) -> Iq:
        stanza = self.stanza(xml)
        assert isinstance(stanza, Iq), f"not an iq: {type(stanza).__name__}"
        return stanza

    def message(self, xml: str | ET.Element) -> Message:
        stanza = self.stanza(xml)
        assert isinstance(stanza, Message), f"not a message: {type(stanza).__name__}"
        return stanza

    async def receive(self, xml: str | ET.Element) -> list[StanzaBase]:
        """Deliver a stanza as if read from the stream; return what was sent in reply.

        Waits until every handler the stanza started has finished.
        """
        element = ET.fromstring(xml) if isinstance(xml, str) else xml
        first = len(self.sent)
        await self._settle(lambda: self.xmpp._spawn_event(element))
        return self.sent[first:]

    async def publish_outcome(self, iq: Iq) -> str:
        """Call `AppServer.on_publish` directly: "accepted" or the error condition."""
        try:
            await self.app.on_publish(iq)
        except XMPPError as exc:
            return exc.condition
        return "accepted"

    # -- state ----------------------------------------------------------------------

    async def register(
        self,
        account: str,
        device_id: str = "device-1",
        *,
        muc: str = "",
        token: str = "fcm-token-1",
    ) -> Registration:
        """A registration as `register-push-fcm` would store it (no stanza involved)."""

        async def work(session: AsyncSession) -> Registration:
            return await registrations.register(
                session,
                account=account,
                device_id=device_id,
                muc=muc,
                token=token,
                channel=self.config.registration_channel(),
                max_per_account=self.config.registrations.max_per_account,
            )

        registration = await self.committer.run(work)
        self.nodes.invalidate(registration.node)
        return registration

    async def rows(self, model: type[ModelT]) -> list[ModelT]:
        async with self.sessionmaker() as session:
            return list((await session.execute(select(model))).scalars())

    async def count(self, model: type[Base]) -> int:
        async with self.sessionmaker() as session:
            return int(
                (await session.execute(select(func.count()).select_from(model))).scalar_one()
            )

    @property
    def command_sessions(self) -> dict[str, Any]:
        """slixmpp's store of open ad-hoc command sessions (XEP-0050)."""
        sessions: dict[str, Any] = self.xmpp.plugin["xep_0050"].sessions
        return sessions

    # -- internals ------------------------------------------------------------------

    def _record(self, data: StanzaBase | str, use_filters: bool = True) -> None:
        if isinstance(data, str):
            # The publish fast path answers with serialized XML (one or more stanzas):
            # read it back as the server would, in the stream's namespace.
            wrapped = ET.fromstring(f"<stream xmlns='jabber:component:accept'>{data}</stream>")
            assert len(wrapped) >= 1, f"no stanza: {data!r}"
            self.sent.extend(self.xmpp._build_stanza(element) for element in wrapped)
            return
        self.sent.append(data)

    def _wake(self) -> None:
        self.wakeups += 1

    async def _settle(self, trigger: Callable[[], object]) -> None:
        """Run `trigger` and wait for the tasks it scheduled (slixmpp's handlers)."""
        before = asyncio.all_tasks()
        trigger()
        seen: set[asyncio.Task[Any]] = set()
        # Tasks may start more tasks (a declined fast-path publish goes on to slixmpp's
        # handlers): wait until no new ones appear.
        while started := asyncio.all_tasks() - before - seen - {asyncio.current_task()}:
            seen |= started
            for result in await asyncio.gather(*started, return_exceptions=True):
                if isinstance(result, BaseException):
                    self.unexpected.append(result)


@contextlib.asynccontextmanager
async def component_harness(
    tmp_path: Path, config: Config | None = None
) -> AsyncIterator[ComponentHarness]:
    """Must be entered inside the running event loop (an async test or fixture)."""
    config = config or harness_config(tmp_path)
    engine = make_engine(config.storage.url)
    try:
        await create_schema(engine)
        harness = ComponentHarness(config, engine)
        await harness.start()
        try:
            yield harness
        finally:
            await harness.stop()
    finally:
        await engine.dispose()


# -- stanza builders ----------------------------------------------------------------
# Values are escaped for XML; characters XML cannot carry at all (most C0 controls)
# make the result unparsable, which is what a test of such input wants to see.


def publish_xml(
    node: str,
    secret: str | None,
    *,
    sender: str = SERVER_DOMAIN,
    to: str = COMPONENT_JID,
    stanza_id: str = "publish-1",
    summary: Mapping[str, FieldValue] | None = None,
    summary_type: str = "form",
) -> str:
    """An XEP-0357 publish as a server sends it; `secret=None` leaves out publish-options."""
    notification = (
        f"<notification xmlns='{PUSH_NS}'>"
        + (_form(summary, summary_type, "urn:xmpp:push:summary") if summary is not None else "")
        + "</notification>"
    )
    options = (
        "<publish-options>"
        + _form(
            {"secret": secret},
            "submit",
            "http://jabber.org/protocol/pubsub#publish-options",
        )
        + "</publish-options>"
        if secret is not None
        else ""
    )
    return (
        f"<iq xmlns='jabber:component:accept' type='set' from={quoteattr(sender)}"
        f" to={quoteattr(to)} id={quoteattr(stanza_id)}>"
        f"<pubsub xmlns='{PUBSUB_NS}'><publish node={quoteattr(node)}>"
        f"<item>{notification}</item></publish>{options}</pubsub></iq>"
    )


def command_xml(
    command: str,
    *,
    sender: str,
    fields: Mapping[str, FieldValue] | None = None,
    action: str = "execute",
    sessionid: str | None = None,
    to: str = COMPONENT_JID,
    stanza_id: str = "command-1",
    form_type: str = "submit",
) -> str:
    """An XEP-0050 command request; `fields=None` sends no form (asks for one)."""
    session = f" sessionid={quoteattr(sessionid)}" if sessionid is not None else ""
    form = _form(fields, form_type) if fields is not None else ""
    return (
        f"<iq xmlns='jabber:component:accept' type='set' from={quoteattr(sender)}"
        f" to={quoteattr(to)} id={quoteattr(stanza_id)}>"
        f"<command xmlns='{COMMANDS_NS}' node={quoteattr(command)}"
        f" action={quoteattr(action)}{session}>{form}</command></iq>"
    )


def marker_xml(
    sender: str, marker_id: str, *, kind: str = "displayed", to: str = COMPONENT_JID
) -> str:
    """A XEP-0333 chat marker sent to the component."""
    return (
        f"<message xmlns='jabber:component:accept' from={quoteattr(sender)} to={quoteattr(to)}>"
        f"<{kind} xmlns='{MARKERS_NS}' id={quoteattr(marker_id)}/></message>"
    )


def _form(fields: Mapping[str, FieldValue], form_type: str, form_kind: str | None = None) -> str:
    parts = [f"<x xmlns='{DATAFORM_NS}' type={quoteattr(form_type)}>"]
    if form_kind is not None:
        parts.append(f"<field var='FORM_TYPE' type='hidden'><value>{form_kind}</value></field>")
    for var, value in fields.items():
        values = [value] if isinstance(value, str) else list(value)
        parts.append(f"<field var={quoteattr(var)}>")
        parts.extend(f"<value>{escape(v)}</value>" for v in values)
        parts.append("</field>")
    parts.append("</x>")
    return "".join(parts)


# -- reading replies ----------------------------------------------------------------


def outcome(stanza: StanzaBase) -> str:
    """The reply's type ("result"), or its error condition (e.g. "bad-request")."""
    if stanza["type"] == "error":
        return str(stanza["error"]["condition"])
    return str(stanza["type"])


def command_fields(stanza: StanzaBase) -> dict[str, str]:
    """The fields of the form in an ad-hoc command reply (first value of each)."""
    form = stanza["command"]["form"]
    out: dict[str, str] = {}
    for var, field in form.get_fields().items():
        value = field.get_value(convert=False)
        out[var] = value[0] if isinstance(value, list) and value else str(value or "")
    return out
