"""Push throughput and latency of ofnotify, on one machine.

    python -m bench.push_throughput [--n 5000] [--rate 500] [--server direct|prosody|ejabberd]

`--server direct` (the default) measures ofnotify alone: this script plays the XMPP
server's side of XEP-0114 itself (bench/component_peer.py) on a free 127.0.0.1 port.
It registers --recipients accounts the way Conversations does (`register-push-fcm`
executed with the submitted form, one IQ per account, `from` the account's full JID),
then writes N XEP-0357 publishes in Prosody mod_cloud_notify's shape (`from` the
accounts' domain, body "bench <seq>", the node's secret in publish-options) straight
into the component stream, paced at --rate publishes/s (0 = as fast as the socket takes
them). Printed besides the figures below: how ofnotify answered the publishes and the
latency from publish to IQ result (accepted: the outbox row is committed). No XMPP server
runs, so the figures are ofnotify's own capacity on this machine, not the whole chain's.

With `--server prosody|ejabberd`, a real XMPP server (Prosody or ejabberd from tests/support/xmpp_servers.py) publishes
XEP-0357 notifications to ofnotify, which runs as its own process
(`ofnotify run --config FILE`) and sends them with pyfcm to the local FCM HTTP v1
stand-in (tests/support/fake_fcm.py, running in this process). Sender clients send
N chat messages ("bench <seq>") to offline recipients who enabled push, paced at
--rate messages/s (0 = as fast as possible). Printed: notifications/s (first to last
FCM request), latency from message send to FCM request, FCM answers by status,
ofnotify's peak RSS and CPU time, and CPU time of every participant.

In every mode ofnotify gets the same config (SQLite, production defaults, per-account
push rate limit lifted, body included in pushes so FCM requests can be matched to what
was sent). Everything listens on 127.0.0.1. The XMPP server (if any), this load
generator (which also hosts the fake FCM) and ofnotify share the machine's cores, so
with a real server the figures are a floor for ofnotify alone, not a ceiling. This
script measures; it asserts nothing.

`--instrument` runs ofnotify through bench/instrument.py (stage timings, SQL per
notification); `--profile FILE` attaches py-spy to ofnotify for the measured phase (FILE ending in
.svg: flame graph; .json: speedscope; else collapsed stacks, which
`python -m bench.profile_summary FILE` condenses).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from xml.sax.saxutils import escape, quoteattr

import yaml

from bench.component_peer import ComponentPeer, IqReply
from bench.openfire_pipeline import code_version
from bench.stats import percentile
from tests.support.fake_fcm import FakeFcm, FcmRequest
from tests.support.ofnotify_service import write_config
from tests.support.xmpp_client import Client, XmppError, connect_client
from tests.support.xmpp_servers import EjabberdServer, ProsodyServer, XmppServer

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY_PREFIX = "bench "
WARMUP_PREFIX = "warmup "
PASSWORD = "pw"

# From the issue; printed next to the measured values, never asserted.
TARGET_RATE = 1000.0  # notifications/s sustained, with --rate 0
TARGET_P99_MS = 100.0  # at --rate 500
TARGET_P99_AT_RATE = 500.0
TARGET_RSS_MB = 150.0

# `ofnotify run`, started through the same interpreter as this script.
OFNOTIFY_CMD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'ofnotify'; from component.cli import main; main()",
]

# The same, with counters (bench/instrument.py); only with --instrument.
INSTRUMENTED_CMD = [sys.executable, "-m", "bench.instrument"]


class BenchProsody(ProsodyServer):
    """The test suite's Prosody, with a selectable log level.

    The suite logs at debug (every stanza, to a file), which costs Prosody a large
    share of its single core at these rates; a production server logs at info.
    """

    log_level = "info"

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        self.config_path.write_text(
            text.replace('levels = { min = "debug" }', f'levels = {{ min = "{self.log_level}" }}')
        )


# --------------------------------------------------------------------------- direct mode

DATA_NS = "jabber:x:data"
COMMANDS_NS = "http://jabber.org/protocol/commands"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
# Paced publishes are written at most every PACING_TICK s (bursts of rate * tick), so the
# generator wakes a few hundred times a second, not once per publish.
PACING_TICK = 0.005


def register_stanza(iq_id: str, account: str, component: str, token: str, device: str) -> bytes:
    """`register-push-fcm` as Conversations sends it: `execute` with the submitted form."""
    return (
        f"<iq type='set' from={quoteattr(account)} to={quoteattr(component)} "
        f"id={quoteattr(iq_id)}><command xmlns='{COMMANDS_NS}' node='register-push-fcm' "
        f"action='execute'><x xmlns='{DATA_NS}' type='submit'>"
        f"<field var='token'><value>{escape(token)}</value></field>"
        f"<field var='device-id'><value>{escape(device)}</value></field>"
        "</x></command></iq>"
    ).encode()


def publish_stanza(
    iq_id: str, domain: str, component: str, node: str, secret: str, sender: str, body: str
) -> bytes:
    """A XEP-0357 publish as Prosody's mod_cloud_notify sends it (sender and body included)."""
    return (
        f"<iq type='set' from={quoteattr(domain)} to={quoteattr(component)} "
        f"id={quoteattr(iq_id)}><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        f"<publish node={quoteattr(node)}><item><notification xmlns='urn:xmpp:push:0'>"
        f"<x xmlns='{DATA_NS}' type='form'>"
        "<field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>"
        "<field var='message-count'><value>1</value></field>"
        "<field var='pending-subscription-count'/>"
        f"<field var='last-message-sender'><value>{escape(sender)}</value></field>"
        f"<field var='last-message-body'><value>{escape(body)}</value></field>"
        "</x></notification></item></publish>"
        f"<publish-options><x xmlns='{DATA_NS}' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{PUBLISH_OPTIONS}</value></field>"
        f"<field var='secret'><value>{escape(secret)}</value></field>"
        "</x></publish-options></pubsub></iq>"
    ).encode()


def form_values(element: ET.Element) -> dict[str, str]:
    """var -> first value of every data-form field under `element`."""
    return {
        field.get("var", ""): field.findtext(f"{{{DATA_NS}}}value") or ""
        for field in element.iter(f"{{{DATA_NS}}}field")
    }


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state(3) ... utime(14) stime(15); index = field - 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return None


def group_cpu_seconds(pgrp: int) -> float:
    """CPU of every live process in a process group (the XMPP server and its helpers)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(stat[2]) == pgrp:
            total += (int(stat[11]) + int(stat[12])) / CLK_TCK
    return total


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- figures


def distribution(values_ms: Sequence[float]) -> str:
    if not values_ms:
        return "n/a"
    s = sorted(values_ms)
    return (
        f"p50 {percentile(s, 0.50):7.1f}  p95 {percentile(s, 0.95):7.1f}  "
        f"p99 {percentile(s, 0.99):7.1f}  max {s[-1]:7.1f}  (ms)"
    )


def seq_of(body: Any, prefix: str = BODY_PREFIX) -> int | None:
    if isinstance(body, str) and body.startswith(prefix):
        with contextlib.suppress(ValueError):
            return int(body[len(prefix) :])
    return None


def request_body(request: FcmRequest) -> Any:
    data = (request.message or {}).get("data") or {}
    return data.get("body")


@dataclass
class CpuSnapshot:
    at: float
    ofnotify: float
    server: float
    generator: float  # this whole process: load generator, fake FCM (its own thread)
    main_thread: float  # the load generator's event loop alone (clients or XEP-0114 peer)


@dataclass
class Results:
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, line: str = "") -> None:
        self.lines.append(line)


# --------------------------------------------------------------------------- the bench


class PushBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="ofnotify-bench-"))
        self.fake: FakeFcm | None = None
        self.server: XmppServer | None = None
        self.peer: ComponentPeer | None = None
        self.server_name = args.server
        self.proc: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.clients: list[Client] = []
        self.offline: list[Client] = []
        self.snapshots = 0
        self.samples: list[tuple[float, float, float, int]] = []
        self.rss_start_kb: int | None = None
        self.ofnotify_log = self.workdir / "ofnotify.log"
        self.config_path = self.workdir / "ofnotify.yaml"

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> Results:
        args = self.args
        self.progress(f"workdir {self.workdir}")
        self.fake = FakeFcm(project_id="bench-project")
        self.fake.write_service_account(self.workdir / "fcm-service-account.json")
        self.fake.start()
        if args.server == "direct":
            return await self.run_direct()

        server_cls: type[XmppServer] = BenchProsody if args.server == "prosody" else EjabberdServer
        self.server = server = server_cls(self.workdir / "server")
        self.server_name = server.name
        if isinstance(server, BenchProsody):
            server.log_level = args.server_log
        started = time.monotonic()
        await asyncio.to_thread(server.start)
        self.progress(f"{server.name} up in {time.monotonic() - started:.1f} s: {server!r}")
        recipients = [f"rcpt{i}" for i in range(args.recipients)]
        senders = [f"sender{i}" for i in range(args.senders)]
        started = time.monotonic()
        # ejabberdctl takes ~1 s per call: a few at a time. ProsodyServer.register
        # rewrites the config file on every call, so prosodyctl runs one at a time.
        gate = asyncio.Semaphore(1 if isinstance(server, ProsodyServer) else 4)

        async def create(user: str) -> None:
            async with gate:
                await asyncio.to_thread(server.register, user, PASSWORD)

        await asyncio.gather(*(create(user) for user in recipients + senders))
        self.progress(
            f"{len(recipients) + len(senders)} accounts created in "
            f"{time.monotonic() - started:.1f} s"
        )

        self.write_ofnotify_config(server)
        self.start_ofnotify()
        assert self.proc is not None

        # Recipients: register a device, enable push, go offline.
        started = time.monotonic()
        await self.register_recipient(recipients[0], 0, first=True)
        gate = asyncio.Semaphore(16)

        async def enroll(index: int, user: str) -> None:
            async with gate:
                await self.register_recipient(user, index, first=False)

        await asyncio.gather(*(enroll(i, u) for i, u in enumerate(recipients) if i))
        self.progress(
            f"{len(recipients)} recipient(s) registered and offline "
            f"({time.monotonic() - started:.1f} s after ofnotify started)"
        )
        for user in senders:
            self.clients.append(await connect_client(server, user, PASSWORD, op_timeout=30))
        rcpt_jids = [f"{user}@{server.domain}" for user in recipients]

        # Warm-up: OAuth token, SQLAlchemy statement caches, TCP connections.
        if args.warmup:
            self.progress(f"warm-up: {args.warmup} message(s)")
            warm = [
                self.stanza(rcpt_jids[i % len(rcpt_jids)], WARMUP_PREFIX, i)
                for i in range(args.warmup)
            ]
            for i, raw in enumerate(warm):
                self.clients[i % len(self.clients)].xmpp.send_raw(raw)
            await self.wait_for(
                lambda: self.count(WARMUP_PREFIX), args.warmup, idle=20.0, limit=60.0
            )
            await asyncio.sleep(1.0)  # let ofnotify record the last outcomes

        n = args.n
        stanzas = [self.stanza(rcpt_jids[i % len(rcpt_jids)], BODY_PREFIX, i) for i in range(n)]
        sent_mono = [0.0] * n
        sent_wall = [0.0] * n
        fake_before = len(self.fake.requests)
        if self.start_profiler():
            await asyncio.sleep(0.5)  # attached before the load starts
        counters_before = await self.counters()
        before = self.cpu_snapshot()
        self.rss_start_kb = status_kb(self.proc.pid, "VmRSS")
        self.progress(
            f"sending {n} messages at {'max speed' if args.rate <= 0 else f'{args.rate:g}/s'} "
            f"from {len(self.clients)} sender(s) to {len(rcpt_jids)} recipient(s)"
        )
        send_started = time.monotonic()
        sampler = asyncio.create_task(self.sample(send_started), name="sampler")
        if args.rate > 0:
            interval = 1.0 / args.rate
            for i in range(n):
                delay = send_started + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_mono[i], sent_wall[i] = time.monotonic(), time.time()
                self.clients[i % len(self.clients)].xmpp.send_raw(stanzas[i])
        else:
            for i in range(n):
                if i % args.burst == 0:
                    await asyncio.sleep(0)  # let the transports drain and the fake answer
                sent_mono[i], sent_wall[i] = time.monotonic(), time.time()
                self.clients[i % len(self.clients)].xmpp.send_raw(stanzas[i])
        send_done = time.monotonic()
        # A server handles one client stream in order: after these round trips every
        # message has been routed (stored offline, publish sent to the component).
        # Under backlog the server can take long to get through a burst (it waits for
        # ofnotify to read its publishes), hence the long bound.
        for client in self.clients:
            client.timeout = args.timeout
        try:
            await asyncio.gather(*(client.round_trip() for client in self.clients))
            server_done: float | None = time.monotonic()
        except TimeoutError:
            server_done = None

        return await self.finish(
            fake_before=fake_before,
            sampler=sampler,
            sent_mono=sent_mono,
            sent_wall=sent_wall,
            send_started=send_started,
            send_done=send_done,
            server_done=server_done,
            before=before,
            counters_before=counters_before,
        )

    async def finish(
        self,
        *,
        fake_before: int,
        sampler: asyncio.Task[None],
        sent_mono: list[float],
        sent_wall: list[float],
        send_started: float,
        send_done: float,
        server_done: float | None,
        before: CpuSnapshot,
        counters_before: dict[str, Any] | None,
        iq_replies: dict[int, IqReply] | None = None,
    ) -> Results:
        """Wait for the FCM requests, take the last figures, stop ofnotify, report."""
        args = self.args
        assert self.fake is not None and self.proc is not None
        arrived = await self.wait_for(
            lambda: self.count(BODY_PREFIX), args.n, idle=args.idle_timeout, limit=args.timeout
        )
        after = self.cpu_snapshot()
        sampler.cancel()
        counters_after = await self.counters()
        hwm_kb = status_kb(self.proc.pid, "VmHWM")
        rss_kb = status_kb(self.proc.pid, "VmRSS")
        threads = status_kb(self.proc.pid, "Threads")
        self.stop_profiler()
        await asyncio.sleep(0.5)  # the last outcomes reach the database
        exit_code = await self.stop_ofnotify()
        requests = self.fake.requests[fake_before:]

        return self.report(
            requests=requests,
            sent_mono=sent_mono,
            sent_wall=sent_wall,
            send_started=send_started,
            send_done=send_done,
            server_done=server_done,
            arrived=arrived,
            before=before,
            after=after,
            hwm_kb=hwm_kb,
            rss_kb=rss_kb,
            threads=threads,
            exit_code=exit_code,
            counters=(counters_before, counters_after),
            iq_replies=iq_replies,
        )

    async def run_direct(self) -> Results:
        """ofnotify alone: this process is the XMPP server's side of XEP-0114."""
        self.peer = peer = ComponentPeer()
        await peer.start()
        self.progress(f"XEP-0114 peer listening: {peer!r}")
        self.write_ofnotify_config(peer)
        self.start_ofnotify()
        try:
            return await self.measure_direct(peer)
        finally:
            await peer.close()

    async def measure_direct(self, peer: ComponentPeer) -> Results:
        args = self.args
        assert self.fake is not None and self.proc is not None
        started = time.monotonic()
        await self.wait_connected(peer)
        self.progress(f"ofnotify's component connected after {time.monotonic() - started:.1f} s")

        # Registration, routed by us as a server would route a client's IQ.
        started = time.monotonic()
        accounts = [f"rcpt{i}@{peer.domain}/phone" for i in range(args.recipients)]
        gate = asyncio.Semaphore(32)

        async def enroll(index: int, account: str) -> tuple[str, str]:
            async with gate:
                return await self.register_direct(peer, index, account)

        nodes = await asyncio.gather(*(enroll(i, a) for i, a in enumerate(accounts)))
        self.progress(f"{len(nodes)} account(s) registered in {time.monotonic() - started:.1f} s")
        senders = [f"sender{i}@{peer.domain}/bench" for i in range(args.senders)]

        def publish(id_prefix: str, body_prefix: str, seq: int) -> bytes:
            node, secret = nodes[seq % len(nodes)]
            return publish_stanza(
                f"{id_prefix}{seq}",
                peer.domain,
                peer.component_jid,
                node,
                secret,
                senders[seq % len(senders)],
                f"{body_prefix}{seq}",
            )

        # Warm-up: OAuth token, SQLAlchemy statement caches, TCP connections.
        if args.warmup:
            self.progress(f"warm-up: {args.warmup} publish(es)")
            await peer.drain()
            peer.write(b"".join(publish("w", WARMUP_PREFIX, i) for i in range(args.warmup)))
            await self.wait_for(
                lambda: self.count(WARMUP_PREFIX), args.warmup, idle=20.0, limit=60.0
            )
            await asyncio.sleep(1.0)  # let ofnotify record the last outcomes
        peer.replies.clear()

        n = args.n
        stanzas = [publish("p", BODY_PREFIX, i) for i in range(n)]
        sent_mono = [0.0] * n
        sent_wall = [0.0] * n
        fake_before = len(self.fake.requests)
        if self.start_profiler():
            await asyncio.sleep(0.5)  # attached before the load starts
        counters_before = await self.counters()
        before = self.cpu_snapshot()
        self.rss_start_kb = status_kb(self.proc.pid, "VmRSS")
        self.progress(
            f"writing {n} publishes at {'max speed' if args.rate <= 0 else f'{args.rate:g}/s'} "
            f"for {len(nodes)} account(s)"
        )
        send_started = time.monotonic()
        sampler = asyncio.create_task(self.sample(send_started), name="sampler")
        await self.send_direct(peer, stanzas, sent_mono, sent_wall, send_started)
        send_done = time.monotonic()
        answered = await self.wait_for(
            lambda: sum(1 for key in peer.replies if key[:1] == "p"),
            n,
            idle=args.idle_timeout,
            limit=args.timeout,
        )
        replies = {
            seq: reply for seq in range(n) if (reply := peer.replies.get(f"p{seq}")) is not None
        }
        server_done = max(r.at for r in replies.values()) if answered >= n and replies else None
        return await self.finish(
            fake_before=fake_before,
            sampler=sampler,
            sent_mono=sent_mono,
            sent_wall=sent_wall,
            send_started=send_started,
            send_done=send_done,
            server_done=server_done,
            before=before,
            counters_before=counters_before,
            iq_replies=replies,
        )

    async def send_direct(
        self,
        peer: ComponentPeer,
        stanzas: list[bytes],
        sent_mono: list[float],
        sent_wall: list[float],
        start: float,
    ) -> None:
        """Write the publishes: paced at --rate, in bursts of what is due per loop tick;
        with --rate 0, --burst at a time, as fast as the transport takes them. Each
        publish is stamped just before the write that carries it."""
        n, rate, burst = len(stanzas), self.args.rate, self.args.burst
        i, last = 0, start
        while i < n:
            if not peer.writable:
                await peer.drain()  # ofnotify stopped reading: wait, as a server would
            end = min(n, i + burst)
            if rate > 0:
                end = min(end, int((time.monotonic() - start) * rate) + 1)
            if end > i:
                mono, wall = time.monotonic(), time.time()
                last = mono
                sent_mono[i:end] = [mono] * (end - i)
                sent_wall[i:end] = [wall] * (end - i)
                peer.write(b"".join(stanzas[i:end]))
                i = end
            if rate > 0 and i < n:
                # At least PACING_TICK between writes: a few publishes per wake-up.
                next_due = max(start + i / rate, last + PACING_TICK)
                await asyncio.sleep(max(0.0, next_due - time.monotonic()))
            else:
                await asyncio.sleep(0)

    async def wait_connected(self, peer: ComponentPeer, limit: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + limit
        while not peer.connected.is_set():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ofnotify exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ofnotify did not connect within {limit:.0f} s "
                    f"({peer.rejected} handshake(s) refused):\n{self.log_tail()}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(peer.connected.wait(), 0.2)

    async def register_direct(
        self, peer: ComponentPeer, index: int, account: str
    ) -> tuple[str, str]:
        """Run `register-push-fcm` for `account`; return the node and its secret."""
        assert self.proc is not None
        iq_id = f"reg{index}"
        stanza = register_stanza(
            iq_id, account, peer.component_jid, f"bench-token-{index:04d}", "bench-device"
        )
        deadline = time.monotonic() + 30
        while True:
            reply = await peer.request(stanza, iq_id, timeout=30)
            if reply.get("type") == "result":
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"register-push-fcm for {account} failed: "
                    f"{ET.tostring(reply, encoding='unicode')}\n{self.log_tail()}"
                )
            await asyncio.sleep(0.2)
        values = form_values(reply)
        if values.get("jid") != peer.component_jid or not values.get("node"):
            raise RuntimeError(f"unexpected register-push-fcm result: {values}")
        return values["node"], values["secret"]

    def cleanup(self) -> None:
        """Idempotent; runs after success, errors and Ctrl-C alike."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.xmpp.abort()
        self.clients.clear()
        self.stop_profiler()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None
        if self.fake is not None:
            with contextlib.suppress(Exception):
                self.fake.stop()
            self.fake = None
        if self.args.keep:
            print(f"kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- ofnotify ----------------------------------------------------------------------

    def write_ofnotify_config(self, server: XmppServer | ComponentPeer) -> None:
        assert self.fake is not None
        write_config(
            self.config_path,
            # A ComponentPeer has the attributes write_config reads from a server.
            cast(XmppServer, server),
            self.fake,
            privacy={"include_sender": True, "include_body": True},
        )
        config = yaml.safe_load(self.config_path.read_text())
        # write_config is tuned for tests (5 s keepalive, 0.2 s backoff): the benchmark
        # runs with ofnotify's production defaults unless told otherwise.
        config["xmpp"].pop("keepalive_interval", None)
        config["xmpp"].pop("reconnect_max_delay", None)
        config["delivery"] = {}
        if self.args.keepalive:
            config["xmpp"]["keepalive_interval"] = f"{self.args.keepalive:g}s"
        if self.args.concurrency:
            config["channels"]["phone"]["concurrency"] = self.args.concurrency
        if self.args.batch_size:
            config["delivery"]["batch_size"] = self.args.batch_size
        if self.rate_limit_configurable() and not self.args.keep_rate_limit:
            # ofnotify folds pushes above N/s per account into one; with a handful of
            # recipients that would measure the limiter, not the pipeline.
            config["limits"] = {"pushes_per_second": 1e9, "push_burst": 1_000_000_000}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @staticmethod
    def rate_limit_configurable() -> bool:
        from component.config import Config

        return "limits" in Config.model_fields

    def start_ofnotify(self) -> None:
        command = INSTRUMENTED_CMD if self.args.instrument else OFNOTIFY_CMD
        env = {**os.environ, "OFNOTIFY_BENCH_SNAPSHOTS": str(self.workdir)}
        with self.ofnotify_log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *command,
                    "run",
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    self.args.log_level,
                ],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C here reaches only us; cleanup() stops it.
                start_new_session=True,
            )
        self.progress(f"ofnotify started, pid {self.proc.pid}, log {self.ofnotify_log}")

    async def stop_ofnotify(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        return await asyncio.to_thread(proc.wait)

    def start_profiler(self) -> bool:
        if not self.args.profile or self.proc is None:
            return False
        path = Path(self.args.profile).resolve()
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(self.proc.pid),
            "--rate",
            "200",
            "--format",
            fmt,
            "--output",
            str(path),
            "--nonblocking",
            "--threads",
        ]
        if self.args.profile_idle:
            cmd.append("--idle")
        if self.args.profile_gil:
            cmd.append("--gil")
        self.profiler = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "py-spy.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        self.progress(f"py-spy recording ofnotify to {path}")
        return True

    def stop_profiler(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is None or profiler.poll() is not None:
            return
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()

    # -- XMPP --------------------------------------------------------------------------

    async def register_recipient(self, user: str, index: int, *, first: bool) -> None:
        assert self.server is not None and self.proc is not None
        server = self.server
        client = await connect_client(server, user, PASSWORD, op_timeout=30)
        self.clients.append(client)
        fields = {"token": f"bench-token-{index:04d}", "device-id": "bench-device"}
        deadline = time.monotonic() + (60 if first else 10)
        while True:
            # Until ofnotify's component is connected, the server answers with an error.
            try:
                result = await client.run_command(server.component_jid, "register-push-fcm", fields)
                break
            except (XmppError, TimeoutError) as exc:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"ofnotify exited with {self.proc.returncode}:\n{self.log_tail()}"
                    ) from exc
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"register-push-fcm kept failing ({exc}):\n{self.log_tail()}"
                    ) from exc
                await asyncio.sleep(0.2)
        values = {k: str(v) for k, v in result["fields"].items()}
        await client.enable_push(values["jid"], values["node"], values["secret"])
        await client.go_offline()
        self.clients.remove(client)
        # Keep it referenced: slixmpp leaves a task pending that would be garbage
        # collected with a "Task was destroyed" warning.
        self.offline.append(client)

    def stanza(self, to: str, prefix: str, seq: int) -> str:
        return (
            f"<message to={quoteattr(to)} type='chat' id='b{prefix[0]}{seq}'>"
            f"<body>{escape(f'{prefix}{seq}')}</body></message>"
        )

    def count(self, prefix: str) -> int:
        assert self.fake is not None
        return sum(1 for r in self.fake.requests if seq_of(request_body(r), prefix) is not None)

    async def wait_for(self, counter: Any, target: int, *, idle: float, limit: float) -> int:
        """Wait until counter() reaches target, or made no progress for `idle` s."""
        deadline = time.monotonic() + limit
        last, last_change = -1, time.monotonic()
        while True:
            now = time.monotonic()
            current = counter()
            if current >= target:
                return current
            if current != last:
                last, last_change = current, now
            if now - last_change > idle or now > deadline:
                self.progress(f"gave up waiting: {current} of {target} arrived")
                return current
            if self.proc is not None and self.proc.poll() is not None:
                self.progress(f"ofnotify exited with {self.proc.returncode}")
                return current
            await asyncio.sleep(0.1 if target - current < 100 else 0.5)

    # -- measuring ---------------------------------------------------------------------

    async def sample(self, start: float) -> None:
        """Once a second: CPU of ofnotify and the server, FCM requests so far."""
        assert self.fake is not None
        while True:
            with contextlib.suppress(Exception):
                snap = self.cpu_snapshot()
                self.samples.append(
                    (snap.at - start, snap.ofnotify, snap.server, len(self.fake.requests))
                )
            await asyncio.sleep(1.0)

    def timeline(
        self,
        out: Results,
        outbox: dict[int, float],
        sent_wall: list[float],
        send_started: float,
        sent_mono: list[float],
    ) -> None:
        """Per interval: messages sent, publishes accepted, FCM requests, CPU of each side."""
        if len(self.samples) < 2:
            return
        step = max(5, round(len(self.samples) / 12 / 5) * 5)
        # Wall → bench-relative seconds, through the first message's two clocks.
        offset = sent_wall[0] - (sent_mono[0] - send_started)
        ingested = sorted(t - offset for t in outbox.values())
        sent = [t - send_started for t in sent_mono]
        out.add(
            f"timeline        per {step} s since the first message: sent/s, accepted/s "
            "(outbox rows), FCM requests/s, CPU% ofnotify, CPU% server"
        )
        rows = []
        for i in range(0, len(self.samples) - 1, step):
            a, b = self.samples[i], self.samples[min(i + step, len(self.samples) - 1)]
            span = b[0] - a[0]
            if span <= 0:
                continue
            n_sent = sum(1 for t in sent if a[0] <= t < b[0])
            n_in = sum(1 for t in ingested if a[0] <= t < b[0])
            server = (b[2] - a[2]) / span * 100
            rows.append(
                f"{a[0]:5.0f}s {n_sent / span:5.0f} {n_in / span:5.0f} "
                f"{(b[3] - a[3]) / span:5.0f} {(b[1] - a[1]) / span * 100:4.0f}% "
                + ("    -" if server != server else f"{server:4.0f}%")
            )
        for line in rows:
            out.add(f"  {line}")

    def server_pgrp(self) -> int | None:
        server = self.server
        if server is None:
            return None
        for name in ("prosody.pid", "ejabberd.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int((server.rundir / name).read_text().strip())
                return os.getpgid(pid)
        return None

    def cpu_snapshot(self) -> CpuSnapshot:
        assert self.proc is not None
        pgrp = self.server_pgrp()
        return CpuSnapshot(
            at=time.monotonic(),
            ofnotify=cpu_seconds(self.proc.pid),
            server=group_cpu_seconds(pgrp) if pgrp is not None else float("nan"),
            generator=self_cpu_seconds(),
            main_thread=time.thread_time(),  # called on the event loop's thread only
        )

    def outbox_times(self) -> dict[int, float]:
        """seq -> wall time the outbox row was committed (ofnotify accepted the publish)."""
        db = self.workdir / "ofnotify.db"
        out: dict[int, float] = {}
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            for payload, created in conn.execute("SELECT payload, created_at FROM outbox"):
                seq = seq_of(json.loads(payload).get("body"))
                if seq is not None:
                    stamp = dt.datetime.fromisoformat(created).replace(tzinfo=dt.UTC)
                    out.setdefault(seq, stamp.timestamp())
        return out

    async def counters(self) -> dict[str, Any] | None:
        """With --instrument: ofnotify's counters, written on SIGUSR1."""
        if not self.args.instrument or self.proc is None:
            return None
        self.snapshots += 1
        target = self.workdir / f"snapshot-{self.snapshots}.json"
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not target.exists():
            if time.monotonic() > deadline:
                self.progress("no counter snapshot from ofnotify")
                return None
            await asyncio.sleep(0.02)
        data: dict[str, Any] = json.loads(target.read_text())
        return data

    def folded_rows(self) -> int:
        """Outbox rows the rate limit folded pushes into (dedup key push:<reg>:<conv>:…)."""
        db = self.workdir / "ofnotify.db"
        with (
            contextlib.suppress(Exception),
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn,
        ):
            rows = conn.execute("SELECT dedup_key FROM outbox").fetchall()
            # Ordinary pushes have a random part; folded ones name the conversation.
            return sum(1 for (key,) in rows if key.startswith("push:") and "@" in key)
        return 0

    def log_levels(self) -> Counter[str]:
        levels: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.ofnotify_log.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) > 2 and parts[2] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                    levels[parts[2]] += 1
        return levels

    def log_problems(self) -> Counter[str]:
        """Warnings and errors in ofnotify's log, grouped by logger and message start."""
        problems: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.ofnotify_log.read_text(errors="replace").splitlines():
                parts = line.split(maxsplit=4)
                if len(parts) == 5 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                    text = re.sub(r"\d+", "N", parts[4])[:110]
                    problems[f"{parts[2]} {parts[3]} {text}"] += 1
        return problems

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.ofnotify_log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def report(
        self,
        *,
        requests: list[FcmRequest],
        sent_mono: list[float],
        sent_wall: list[float],
        send_started: float,
        send_done: float,
        server_done: float | None,
        arrived: int,
        before: CpuSnapshot,
        after: CpuSnapshot,
        hwm_kb: int | None,
        rss_kb: int | None,
        threads: int | None,
        exit_code: int | None,
        counters: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
        iq_replies: dict[int, IqReply] | None = None,
    ) -> Results:
        args, n = self.args, self.args.n
        direct = self.peer is not None
        unit = "publishes" if direct else "messages"
        out = Results()
        seen: set[int] = set()
        latencies: list[float] = []
        ingest_to_fcm: list[float] = []
        bench_requests: list[FcmRequest] = []
        duplicates = 0
        outbox = {}
        with contextlib.suppress(Exception):
            outbox = self.outbox_times()
        send_to_ingest = [(outbox[s] - sent_wall[s]) * 1000 for s in outbox if 0 <= s < n]
        for request in requests:
            seq = seq_of(request_body(request))
            if seq is None or not 0 <= seq < n:
                continue
            bench_requests.append(request)
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            latencies.append((request.received_at - sent_mono[seq]) * 1000)
            if seq in outbox:
                ingest_to_fcm.append((request.received_at_wall - outbox[seq]) * 1000)
        statuses = Counter(r.status for r in bench_requests)
        first = min((r.received_at for r in bench_requests), default=float("nan"))
        last = max((r.received_at for r in bench_requests), default=float("nan"))
        span = last - first
        rate = (len(bench_requests) - 1) / span if len(bench_requests) > 1 and span > 0 else 0.0
        offered = (n - 1) / (send_done - send_started) if send_done > send_started else 0.0
        window = after.at - before.at
        lat_sorted = sorted(latencies)
        p99 = percentile(lat_sorted, 0.99) if lat_sorted else float("nan")
        hwm_mb = hwm_kb / 1024 if hwm_kb is not None else float("nan")

        rate_label = "as fast as possible" if args.rate <= 0 else f"{args.rate:g}/s"
        out.add("")
        if direct:
            out.add(
                f"ofnotify push benchmark — direct (this script is the XMPP server's side of "
                f"XEP-0114; no Prosody/ejabberd), N={n} publishes, rate {rate_label}, "
                f"{args.recipients} account(s), {args.senders} sender name(s)"
            )
        else:
            out.add(
                f"ofnotify push benchmark — {self.server_name}, N={n}, rate {rate_label}, "
                f"{args.senders} sender(s) → {args.recipients} recipient(s)"
            )
        out.add(
            f"ofnotify code: {code_version(REPO)}; per-account push rate limit "
            + (
                "ofnotify's default (--keep-rate-limit)"
                if args.keep_rate_limit
                else "lifted for the benchmark"
                if self.rate_limit_configurable()
                else "not present in this version"
            )
        )
        if direct:
            out.add(
                f"machine: {os.cpu_count()} cores, shared by ofnotify and this load generator "
                "(XEP-0114 peer and fake FCM); no XMPP server runs: figures are ofnotify's own "
                "capacity on this machine, not the whole chain's"
            )
        else:
            out.add(
                f"machine: {os.cpu_count()} cores, shared by the XMPP server, ofnotify and this "
                "load generator (which also runs the fake FCM); figures are for the whole chain"
            )
        out.add("")
        done_what = "ofnotify answered all" if direct else "server routed all"
        out.add(
            f"sent            {n} {unit} in {send_done - send_started:.2f} s "
            f"(offered {offered:,.0f}/s); {done_what} after "
            + (
                f"{server_done - send_started:.2f} s"
                if server_done is not None
                else f"more than {args.timeout:.0f} s (or not at all)"
            )
        )
        if iq_replies is not None:
            kinds = Counter(
                r.type if r.type != "error" else f"error {r.condition}" for r in iq_replies.values()
            )
            if len(iq_replies) < n:
                kinds["no answer"] = n - len(iq_replies)
            out.add(
                "IQ replies      "
                + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
                + f" (for {n} publishes)"
            )
            if self.peer is not None and (self.peer.received or self.peer.connections != 1):
                out.add(
                    f"  from ofnotify also: {dict(self.peer.received)}; "
                    f"{self.peer.connections} component connection(s)"
                )
        out.add(
            f"FCM requests    {len(bench_requests)} for {n} {unit}; {len(seen)} {unit} "
            "have a request of their own"
            + (f" ({duplicates} duplicate requests)" if duplicates else "")
        )
        if len(seen) < n:
            folded = self.folded_rows()
            out.add(
                f"  {n - len(seen)} {unit} without a request of their own; the outbox "
                f"holds {folded} rows that folded several pushes (per-account rate limit)"
                + ("" if folded else " — so these were LOST")
            )
        out.add(
            "  by status     " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
            if statuses
            else "  by status     none"
        )
        target_rate = f"target ≥ {TARGET_RATE:,.0f}/s with --rate 0"
        out.add(
            f"throughput      {rate:8,.0f} notifications/s sustained (first→last FCM request, "
            f"{span:.2f} s)   [{target_rate}]"
        )
        what = "publish written → FCM request" if direct else "send → FCM request"
        out.add(
            f"latency         {distribution(latencies)}   {what} "
            f"[target p99 < {TARGET_P99_MS:.0f} ms at {TARGET_P99_AT_RATE:.0f}/s]"
        )
        accepted: list[float] = []
        if iq_replies is not None:
            accepted = [
                (r.at - sent_mono[s]) * 1000 for s, r in iq_replies.items() if r.type == "result"
            ]
            out.add(
                f"  publish→IQ    {distribution(accepted)}   publish written → IQ result "
                "read (accepted: outbox row committed)"
            )
        if direct:
            out.add(
                f"  send→ingest   {distribution(send_to_ingest)}   publish written → outbox "
                "row committed (ofnotify intake)"
            )
        else:
            out.add(
                f"  send→ingest   {distribution(send_to_ingest)}   message send → outbox row "
                "committed (XMPP server + ofnotify intake)"
            )
        out.add(
            f"  ingest→FCM    {distribution(ingest_to_fcm)}   outbox row → FCM request "
            "(ofnotify dispatcher + pyfcm)"
        )
        out.add(
            f"ofnotify RSS    peak {hwm_mb:6.1f} MB (VmHWM), now "
            f"{(rss_kb or 0) / 1024:.1f} MB, {(self.rss_start_kb or 0) / 1024:.1f} MB "
            f"before the load, {threads} threads   [target < {TARGET_RSS_MB:.0f} MB]"
        )
        ofn_cpu = after.ofnotify - before.ofnotify
        srv_cpu = 0.0 if direct else after.server - before.server
        gen_cpu = after.generator - before.generator
        main_cpu = after.main_thread - before.main_thread
        out.add(
            f"CPU             ofnotify {ofn_cpu:6.2f} s total since start "
            f"{after.ofnotify:.2f} s; during the {window:.2f} s measured window:"
        )
        rows: list[tuple[str, float]] = [("ofnotify", ofn_cpu)]
        if not direct:
            rows.append((self.server_name, srv_cpu))
        rows += [
            ("generator: " + ("XEP-0114 peer" if direct else "clients"), main_cpu),
            ("fake FCM + other threads", gen_cpu - main_cpu),
        ]
        for name, used in rows:
            out.add(
                f"  {name:<26} {used:6.2f} s  = {used / window * 100 if window else 0:5.1f}% "
                "of one core"
            )
        total = ofn_cpu + srv_cpu + gen_cpu
        cores = os.cpu_count() or 1
        out.add(
            f"  {'all':<26} {total:6.2f} s  = {total / window * 100 if window else 0:5.1f}% "
            f"of {cores * 100}% available"
        )
        if len(seen):
            out.add(
                f"  per notification: ofnotify {ofn_cpu / len(seen) * 1e3:.2f} ms, "
                f"generator {main_cpu / len(seen) * 1e3:.2f} ms"
            )
        levels = self.log_levels()
        out.add(f"ofnotify log    {dict(sorted(levels.items()))}, exit code {exit_code}")
        for text, count in self.log_problems().most_common(8):
            out.add(f"  {count:5d}x {text}")
        if args.timeline:
            self.timeline(
                out,
                {s: t for s, t in outbox.items() if 0 <= s < n},
                sent_wall,
                send_started,
                sent_mono,
            )
        if counters[0] is not None and counters[1] is not None and seen:
            self.report_counters(out, counters[0], counters[1], len(seen))
        if args.profile:
            out.add(f"profile         {Path(args.profile).resolve()}")
        acc_sorted = sorted(accepted)
        out.figures = {
            "server": self.server_name,
            "n": n,
            "rate": args.rate,
            "senders": args.senders,
            "recipients": args.recipients,
            "arrived": len(seen),
            "duplicates": duplicates,
            "statuses": dict(statuses),
            "notifications_per_s": rate,
            "span_s": span,
            "latency_ms": {
                q: percentile(lat_sorted, v)
                for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
            "p99_ms": p99,
            "rss_peak_mb": hwm_mb,
            "cpu_s": {
                "ofnotify": ofn_cpu,
                "server": srv_cpu if not direct else None,
                "generator": gen_cpu,
                "generator_main_thread": main_cpu,
                "window": window,
            },
            "arrived_total_counter": arrived,
        }
        if iq_replies is not None:
            out.figures["iq_replies"] = dict(
                Counter(
                    r.type if r.type != "error" else f"error {r.condition}"
                    for r in iq_replies.values()
                )
            )
            out.figures["publish_to_iq_result_ms"] = {
                q: percentile(acc_sorted, v)
                for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            }
        return out

    @staticmethod
    def report_counters(
        out: Results, before: dict[str, Any], after: dict[str, Any], notifications: int
    ) -> None:
        def delta(key: str) -> Counter[str]:
            result: Counter[str] = Counter(after.get(key, {}))
            result.subtract(before.get(key, {}))
            return Counter({k: v for k, v in result.items() if v})

        window = after["at"] - before["at"]
        out.add(
            f"instrumented    per notification, over {notifications} notifications "
            f"({window:.2f} s between snapshots):"
        )
        cpu = delta("thread_cpu")
        for name, seconds in cpu.most_common():
            out.add(
                f"  CPU {seconds / notifications * 1e3:6.2f} ms  "
                f"({seconds / window * 100:5.1f}% of a core)  {name}"
            )
        for name, count in sorted(delta("events").items()):
            out.add(f"  {count / notifications:8.2f}  {name}")
        timers_before = before.get("timers", {})
        out.add("  stage timings (calls per notification, mean and max wall ms per call):")
        for label, (calls, total, peak) in after.get("timers", {}).items():
            calls_before, total_before, _ = timers_before.get(label, (0, 0.0, 0.0))
            calls -= calls_before
            total -= total_before
            if calls > 0:
                out.add(
                    f"  {calls / notifications:8.2f}  {total / calls * 1e3:8.2f} ms mean "
                    f"{peak * 1e3:8.1f} ms max  {label}"
                )
        lag = after.get("lag_ms", [])
        new = after.get("lag_samples", 0) - before.get("lag_samples", 0)
        if lag and new > 0:
            out.add(
                f"  event-loop lag (a 10 ms sleep wakes this late): "
                f"{distribution(lag[-min(new, len(lag)) :])}"
            )
        sizes: Counter[str] = Counter(after.get("batch_sizes", {}))
        sizes.subtract(before.get("batch_sizes", {}))
        batches = sum(sizes.values())
        if batches:
            units = sum(int(size) * count for size, count in sizes.items())
            out.add(
                f"  committer batches: {batches}, mean {units / batches:.1f} units, "
                f"max {max(int(k) for k, v in sizes.items() if v)}"
            )
        seconds = delta("statement_seconds")
        counts = delta("statements")
        total = sum(counts.values())
        out.add(
            f"  {total / notifications:8.2f}  SQL statements, by shape "
            "(count per notification, mean wall ms as the event loop sees it):"
        )
        for shape, count in counts.most_common():
            out.add(
                f"  {count / notifications:8.2f}  {seconds[shape] / count * 1e3:7.2f} ms  {shape}"
            )

    def progress(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[bench] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.push_throughput",
        description="Measure ofnotify's push throughput and latency, alone (--server direct) "
        "or behind a real XMPP server, against a local FCM stand-in (measures only; asserts "
        "nothing).",
    )
    parser.add_argument(
        "--n", type=int, default=5000, help="messages (direct: publishes) to send (default 5000)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="messages (direct: publishes)/s to offer; 0 = as fast as possible (default 500)",
    )
    parser.add_argument(
        "--server",
        choices=["direct", "prosody", "ejabberd"],
        default="direct",
        help="direct (default): no XMPP server, this script speaks XEP-0114 to ofnotify and "
        "publishes itself (ofnotify's own capacity); prosody/ejabberd: the whole chain",
    )
    parser.add_argument(
        "--senders",
        type=int,
        default=2,
        help="sending clients (direct: distinct last-message-sender values) (default 2)",
    )
    parser.add_argument(
        "--recipients",
        type=int,
        default=4,
        help="offline recipients with push enabled (direct: registered accounts the "
        "publishes are spread over) (default 4)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="messages sent and awaited before measuring (default 100)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=100,
        help="messages written between event-loop yields (direct: also the "
        "largest burst when paced)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="upper bound in s on waiting for the FCM requests",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=20.0,
        help="stop waiting after this many s without a new FCM request",
    )
    parser.add_argument(
        "--keep-rate-limit",
        action="store_true",
        help="keep ofnotify's per-account push rate limit (by default the "
        "benchmark lifts it: with few recipients it would fold most pushes)",
    )
    parser.add_argument(
        "--server-log",
        choices=["debug", "info"],
        default="info",
        help="Prosody's log level (the test suite uses debug; default info)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="ofnotify's --log-level (default INFO, as in production)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="override channels.phone.concurrency (ofnotify default 64)",
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=None,
        metavar="SECONDS",
        help="xmpp.keepalive_interval (default: ofnotify's, 60 s; the test suite uses 5 s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="override delivery.batch_size (ofnotify default 256)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="record ofnotify with py-spy during the measured phase",
    )
    parser.add_argument(
        "--profile-idle", action="store_true", help="with --profile: include idle (waiting) threads"
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL "
        "(where a GIL-bound process spends its one core)",
    )
    parser.add_argument(
        "--instrument",
        action="store_true",
        help="run ofnotify through bench/instrument.py and print SQL "
        "statements, thread hand-offs and CPU by thread "
        "per notification",
    )
    parser.add_argument(
        "--timeline", action="store_true", help="print rates and CPU per 5 s interval"
    )
    parser.add_argument(
        "--json", metavar="FILE", default=None, help="also write the figures as JSON"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.n < 1 or args.senders < 1 or args.recipients < 1 or args.burst < 1:
        parser.error("--n, --senders, --recipients and --burst must be ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench = PushBench(args)
    try:
        results = asyncio.run(bench.run())
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
    print("\n".join(results.lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results.figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
