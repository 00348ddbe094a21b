"""The XMPP server's side of one XEP-0114 component stream, played by the benchmark.

Why it exists: `python -m bench.push_throughput --server prosody|ejabberd` measures the
whole chain (clients → server → ofnotify → FCM). On the 2-core benchmark VM Prosody alone
needs ~1.15 ms of CPU per message, so that chain can never show what ofnotify itself
sustains. With `--server direct` the benchmark accepts ofnotify's component connection
on 127.0.0.1 itself and writes XEP-0357 publishes, shaped like Prosody's
mod_cloud_notify, straight into the stream: the only XMPP work left on the machine is
ofnotify's own, plus what this peer costs, which is kept small.

What it does, and no more:

- one listening socket on a free 127.0.0.1 port; each connection expects a
  `jabber:component:accept` stream header addressed to the component JID, answers with a
  stream header carrying a fresh id, and checks `<handshake>` = hex SHA-1(id + secret)
  (`<handshake/>` on success; a `not-authorized` stream error otherwise);
- `write()` puts pre-serialized stanza bytes on the stream; `writable`/`drain()` expose
  the transport's flow control so a load generator can wait when ofnotify stops reading;
- what ofnotify sends is parsed incrementally (expat via `XMLPullParser`), one top-level
  element at a time, and dropped once looked at. IQ results and errors are recorded by
  id as (arrival time, type, error condition), or handed to a waiting `request()`;
  IQ get/set addressed to anyone (keepalive pings, disco) are answered — ping with a
  result, anything else with `service-unavailable` — so ofnotify never waits on us;
  messages and presences are counted and ignored; whitespace keepalives are ignored.

It routes nothing: stanzas ofnotify addresses to users go nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
import xml.etree.ElementTree as ET
from collections import Counter
from typing import NamedTuple
from xml.sax.saxutils import quoteattr

STREAM_NS = "http://etherx.jabber.org/streams"
ACCEPT_NS = "jabber:component:accept"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAMS_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
PING_NS = "urn:xmpp:ping"

_STREAM_TAG = f"{{{STREAM_NS}}}stream"
_HANDSHAKE_TAG = f"{{{ACCEPT_NS}}}handshake"
_IQ_TAG = f"{{{ACCEPT_NS}}}iq"
_ERROR_TAG = f"{{{ACCEPT_NS}}}error"
_PING_TAG = f"{{{PING_NS}}}ping"


class IqReply(NamedTuple):
    """How ofnotify answered one IQ the peer sent."""

    at: float  # time.monotonic() when the chunk holding the reply was read
    type: str  # "result" or "error"
    condition: str | None  # the error's defined condition, for type "error"


class ComponentPeer:
    """Accepts ofnotify's XEP-0114 connection and exchanges stanzas with it.

    Its attributes `host`, `component_port`, `component_jid`, `component_secret` and
    `domain` mirror `tests.support.xmpp_servers.XmppServer`, so the test suite's
    `write_config` can point ofnotify at it.
    """

    name = "direct"

    def __init__(
        self,
        *,
        component_jid: str = "push.example.test",
        component_secret: str = "s3cret",
        domain: str = "example.test",
        host: str = "127.0.0.1",
    ) -> None:
        self.component_jid = component_jid
        self.component_secret = component_secret
        self.domain = domain
        self.host = host
        self.component_port = 0
        # id -> how ofnotify answered, for IQs nobody awaits with request().
        self.replies: dict[str, IqReply] = {}
        # What else ofnotify sent or asked, by kind ("iq get answered", "message", ...).
        self.received: Counter[str] = Counter()
        self.connections = 0  # streams that completed the handshake
        self.rejected = 0  # handshakes refused
        self.connected = asyncio.Event()
        self._stream: _Stream | None = None
        self._server: asyncio.Server | None = None
        self._waiters: dict[str, asyncio.Future[ET.Element]] = {}
        self._writable = asyncio.Event()
        self._writable.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on a free port of `host` (then in `component_port`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Stream(self), self.host, 0)
        self.component_port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def __repr__(self) -> str:
        return (
            f"ComponentPeer({self.component_jid} on {self.host}:{self.component_port}, "
            f"{'connected' if self.connected.is_set() else 'not connected'})"
        )

    # -- sending -------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is above its high-water mark."""
        return self._writable.is_set()

    async def drain(self) -> None:
        """Wait until the transport takes more data (ofnotify reads again)."""
        await self._writable.wait()

    def write(self, data: bytes) -> None:
        """Put serialized stanzas on the component stream."""
        stream = self._stream
        if stream is None or not self.connected.is_set():
            raise ConnectionError("ofnotify's component is not connected")
        stream.transport.write(data)

    async def request(self, stanza: bytes, iq_id: str, timeout: float = 30.0) -> ET.Element:
        """Send one IQ and return ofnotify's reply element (result or error)."""
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._waiters[iq_id] = future
        try:
            self.write(stanza)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiters.pop(iq_id, None)

    # -- called by the stream ------------------------------------------------------------

    def _stream_up(self, stream: _Stream) -> None:
        if self._stream is not None and self._stream is not stream:
            self._stream.close()  # the newest component connection wins
        self._stream = stream
        self.connections += 1
        self._writable.set()
        self.connected.set()

    def _stream_down(self, stream: _Stream) -> None:
        if self._stream is not stream:
            return
        self._stream = None
        self.connected.clear()
        self._writable.set()  # nobody is to wait on a closed transport
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ConnectionError("component stream closed"))

    def _reply(self, iq: ET.Element, at: float) -> None:
        iq_id = iq.get("id", "")
        waiter = self._waiters.get(iq_id)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(iq)
            return
        kind = iq.get("type", "")
        condition = None
        if kind == "error":
            error = iq.find(_ERROR_TAG)
            if error is not None:
                for child in error:
                    if child.tag.startswith(f"{{{STANZAS_NS}}}"):
                        condition = child.tag.rpartition("}")[2]
                        break
        self.replies[iq_id] = IqReply(at, kind, condition)


class _Stream(asyncio.Protocol):
    """One component connection; parses what arrives, element by element."""

    def __init__(self, peer: ComponentPeer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.stream_id = secrets.token_hex(8)
        self.authenticated = False
        self.closing = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        try:
            self.parser.feed(data)
            for event, elem in self.parser.read_events():
                if self.closing:
                    break
                if event == "start":
                    self.depth += 1
                    if self.depth == 1:
                        self._stream_header(elem)
                    continue
                self.depth -= 1
                if self.depth == 1:
                    self._element(elem, now)
                    if self.root is not None:
                        self.root.remove(elem)  # done with it; keep memory flat
                elif self.depth == 0:
                    self._send(b"</stream:stream>")  # ofnotify closed its stream
                    self.close()
        except ET.ParseError as exc:
            self.peer.received[f"unparsable XML: {exc}"] += 1
            self._stream_error("not-well-formed")

    def pause_writing(self) -> None:
        if self.peer._stream is self:
            self.peer._writable.clear()

    def resume_writing(self) -> None:
        if self.peer._stream is self:
            self.peer._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.peer._stream_down(self)

    # -- the stream ----------------------------------------------------------------------

    def _stream_header(self, header: ET.Element) -> None:
        self.root = header
        peer = self.peer
        self._send(
            "<?xml version='1.0'?>"
            f"<stream:stream xmlns:stream='{STREAM_NS}' xmlns='{ACCEPT_NS}' "
            f"from={quoteattr(peer.component_jid)} id='{self.stream_id}'>".encode()
        )
        if header.tag != _STREAM_TAG:
            self._stream_error("invalid-namespace")
        elif header.get("to") != peer.component_jid:
            self._stream_error("host-unknown")

    def _element(self, elem: ET.Element, now: float) -> None:
        if not self.authenticated:
            self._handshake(elem)
            return
        if elem.tag == _IQ_TAG:
            kind = elem.get("type")
            if kind in ("result", "error"):
                self.peer._reply(elem, now)
            elif kind in ("get", "set"):
                self._answer(elem)
            else:
                self.peer.received["iq of unknown type"] += 1
        else:
            self.peer.received[elem.tag.rpartition("}")[2]] += 1

    def _handshake(self, elem: ET.Element) -> None:
        expected = hashlib.sha1(
            f"{self.stream_id}{self.peer.component_secret}".encode()
        ).hexdigest()
        given = (elem.text or "").strip().lower()
        if elem.tag != _HANDSHAKE_TAG or not hmac.compare_digest(given, expected):
            self.peer.rejected += 1
            self._stream_error("not-authorized")
            return
        self.authenticated = True
        self._send(b"<handshake/>")
        self.peer._stream_up(self)

    def _answer(self, iq: ET.Element) -> None:
        """Pings get a result, anything else service-unavailable: never leave one open."""
        ping = len(iq) == 1 and iq[0].tag == _PING_TAG
        self.peer.received["ping answered" if ping else "iq get/set refused"] += 1
        to, sender, iq_id = iq.get("to", ""), iq.get("from", ""), iq.get("id", "")
        head = (
            f"<iq type='{'result' if ping else 'error'}' from={quoteattr(to)} "
            f"to={quoteattr(sender)} id={quoteattr(iq_id)}"
        )
        if ping:
            self._send(f"{head}/>".encode())
        else:
            self._send(
                f"{head}><error type='cancel'><service-unavailable xmlns='{STANZAS_NS}'/>"
                "</error></iq>".encode()
            )

    def _stream_error(self, condition: str) -> None:
        self._send(
            f"<stream:error><{condition} xmlns='{STREAMS_ERROR_NS}'/></stream:error>"
            "</stream:stream>".encode()
        )
        self.close()

    def _send(self, data: bytes) -> None:
        if not self.closing:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()
