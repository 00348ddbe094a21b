"""The XEP-0114 connection to the XMPP server, kept up forever.

slixmpp reconnects only while first connecting; after an established stream drops it
does nothing. `ComponentConnection.run` owns that loop: exponential backoff with
jitter, a ping keepalive that notices dead TCP connections, and a hard stop when the
server rejects the secret (looping would only fill the server's logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from slixmpp import JID, ComponentXMPP, Iq
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.stanza import StreamError

from . import metrics
from .config import XmppConfig
from .errors import ComponentAuthError

log = logging.getLogger(__name__)

# Stream errors after which the same credentials can never succeed.
FATAL_STREAM_ERRORS = {"not-authorized", "host-unknown", "invalid-namespace"}

CONNECT_TIMEOUT = 30.0

# Sees a stanza before slixmpp builds stanza objects for it; True = taken.
RawHandler = Callable[[ET.Element], bool]


class Component(ComponentXMPP):
    """ComponentXMPP with the plugins ofnotify relies on."""

    def __init__(self, config: XmppConfig) -> None:
        super().__init__(config.jid, config.secret.get_secret_value(), config.host, config.port)
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0060", "xep_0199"):
            self.register_plugin(plugin)
        self.plugin["xep_0030"].add_identity(category="pubsub", itype="push", name="ofnotify")
        self.plugin["xep_0030"].add_feature("urn:xmpp:push:0")
        self.plugin["xep_0030"].add_feature("http://jabber.org/protocol/commands")
        # We run our own keepalive; slixmpp's whitespace pings can't detect dead peers.
        self.whitespace_keepalive = False
        self.last_inbound = time.monotonic()
        self.add_filter("in", self._inbound)
        self._raw_handlers: list[RawHandler] = []
        self.input_paused = False
        self.add_event_handler("disconnected", self._forget_pause)

    def pause_input(self) -> None:
        """Stop reading from the server until `resume_input`: backpressure."""
        if not self.input_paused and self.transport is not None:
            self.transport.pause_reading()
            self.input_paused = True
            metrics.INPUT_PAUSES.inc()
            log.debug("reading from the XMPP server paused: too much work in flight")

    def resume_input(self) -> None:
        if self.input_paused:
            self.input_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
            log.debug("reading from the XMPP server resumed")

    def _forget_pause(self, _event: object) -> None:
        self.input_paused = False  # a new stream starts unpaused

    def add_raw_handler(self, handler: RawHandler) -> None:
        """For the stanza that arrives by the thousand (XEP-0357 publishes): building
        slixmpp's stanza objects and matching them against every handler costs more
        CPU than handling the publish. A raw handler reads the element instead and
        hands back, through `process_normally`, whatever it will not answer itself."""
        self._raw_handlers.append(handler)

    def _spawn_event(self, xml: ET.Element) -> None:
        # slixmpp's hook between the XML parser and stanza objects (XMLStream).
        xml = self.incoming_filter(xml)
        self.last_inbound = time.monotonic()
        for handler in self._raw_handlers:
            if handler(xml):
                return
        super()._spawn_event(xml)

    def process_normally(self, xml: ET.Element) -> None:
        """The usual slixmpp path (filters, stanza objects, handlers) for a stanza a raw
        handler took and then declined."""
        super()._spawn_event(xml)

    def _inbound(self, stanza: Any) -> Any:
        # Any stanza proves the stream alive: under a backlog the answer to a ping waits
        # behind thousands of publishes, and aborting then would drop them all.
        self.last_inbound = time.monotonic()
        return self._refuse_unparsable_sender(stanza)

    def _refuse_unparsable_sender(self, stanza: Any) -> Any:
        """slixmpp raises deep inside its handlers on a `from` it cannot parse (e.g. an
        emoji resource, valid under RFC 7622); answer such IQs here and drop the rest."""
        raw = stanza.xml.get("from")
        if raw is None:
            return stanza
        try:
            JID(raw)
        except InvalidJID:
            if stanza.xml.tag.endswith("}iq") and stanza.xml.get("type") in ("get", "set"):
                reply = Iq(stream=self)
                reply["type"] = "error"
                reply["id"] = stanza.xml.get("id") or ""
                reply.xml.set("to", raw)  # set raw: it cannot be parsed into a JID
                reply["error"]["type"] = "modify"
                reply["error"]["condition"] = "jid-malformed"
                self.send(reply)
            log.info("dropped a stanza from an unparsable JID")
            return None
        return stanza


class ComponentConnection:
    def __init__(
        self,
        xmpp: Component,
        config: XmppConfig,
        *,
        on_state: Callable[[bool], None] | None = None,
        initial_backoff: float = 1.0,
    ) -> None:
        self.xmpp = xmpp
        self._config = config
        self._on_state = on_state or (lambda up: None)
        self._initial_backoff = initial_backoff
        self._stream_error: str | None = None
        self._session_started = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self.connected = False
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        xmpp.add_event_handler("stream_error", self._on_stream_error)

    def _on_session_start(self, _event: object) -> None:
        self._session_started.set()

    def _on_disconnected(self, _event: object) -> None:
        self._disconnected.set()

    def _on_connection_failed(self, event: object) -> None:
        log.debug("connection attempt failed: %s", event)
        self._disconnected.set()

    def _on_stream_error(self, error: StreamError) -> None:
        self._stream_error = error["condition"]
        text = error["text"]
        log.error(
            "XMPP server closed the component stream: %s%s",
            self._stream_error,
            f" ({text})" if text else "",
        )

    async def run(self) -> None:
        """Connect and stay connected until `stop()`. Raises ComponentAuthError."""
        failures = 0
        where = f"{self._config.host}:{self._config.port}"
        while not self._stopping:
            self._session_started.clear()
            self._disconnected.clear()
            self._stream_error = None
            log.info("connecting to %s as %s", where, self._config.jid)
            self.xmpp.connect(self._config.host, self._config.port)
            started = await self._first_of(self._session_started, self._disconnected)
            if started:
                failures = 0
                self._set_state(True)
                log.info("component %s is online", self._config.jid)
                keepalive = asyncio.create_task(self._keepalive(), name="xmpp-keepalive")
                try:
                    await self._disconnected.wait()
                finally:
                    keepalive.cancel()
                self._set_state(False)
                if not self._stopping:
                    log.warning("component stream to %s dropped", where)
            else:
                # slixmpp schedules its own retry on failure; ours has jitter and a cap.
                self.xmpp.cancel_connection_attempt()
                self.xmpp.abort()
            if self._stream_error in FATAL_STREAM_ERRORS:
                raise ComponentAuthError(
                    f"{where} rejected component {self._config.jid}: {self._stream_error}. "
                    "Check xmpp.jid and xmpp.secret against the server's component settings."
                )
            if self._stream_error == "conflict":
                log.warning(
                    "another component is connected as %s; standing by and retrying",
                    self._config.jid,
                )
            if self._stopping:
                break
            failures += 1
            delay = self._backoff(failures)
            log.info("reconnecting in %.1fs (attempt %d)", delay, failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), timeout=delay)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._config.reconnect_max_delay, self._initial_backoff * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _first_of(self, started: asyncio.Event, ended: asyncio.Event) -> bool:
        waits = {
            asyncio.create_task(started.wait()): True,
            asyncio.create_task(ended.wait()): False,
        }
        done, pending = await asyncio.wait(
            waits, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        return bool(done) and started.is_set()

    async def _keepalive(self) -> None:
        interval = self._config.keepalive_interval
        server = self._config.jid.partition(".")[2] or self._config.jid
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self.xmpp.last_inbound < interval:
                continue  # traffic is flowing: no need to ask
            if self.xmpp.input_paused:
                continue  # we stopped reading, so no answer could arrive: busy, not dead
            sent = time.monotonic()
            try:
                await self.xmpp.plugin["xep_0199"].send_ping(
                    server, timeout=min(interval, 30.0), ifrom=self._config.jid
                )
            except IqError:
                pass  # any answer, even an error, proves the stream is alive
            except IqTimeout:
                if self.xmpp.last_inbound > sent:
                    continue  # busy, not dead
                log.warning("no answer to keepalive ping from %s; reconnecting", server)
                self.xmpp.abort()
                return

    def _set_state(self, up: bool) -> None:
        self.connected = up
        self._on_state(up)

    async def stop(self) -> None:
        self._stopping = True
        self._stop_event.set()
        if self.connected:
            await self.xmpp.disconnect(wait=2.0)
        else:
            self.xmpp.cancel_connection_attempt()
