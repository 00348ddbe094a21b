"""Digest emails per second, from the watcher's batch to a local SMTP server.

    python -m bench.digest_emails [--accounts 500] [--messages-per-account 3]

A private PostgreSQL holds Openfire's tables: --accounts offline users with an email
address in ofUser, and --senders users who write to them. ofnotify's real pipeline runs
in this process as component/service.py wires it (minus XMPP): the watcher, Ingest over
a GroupCommitter and a SQLite store, the Dispatcher with its Composer, and the real
EmailNotifier sending to aiosmtpd (tests/support/smtp_server.py) on 127.0.0.1. The rule
is an email digest with `delay: 0s`.

Once the watcher has started, every message is stored in ofOffline in one transaction,
so that one watcher poll finds them all. Timed from that batch's commit in ofnotify's
store to each email's arrival at the SMTP server (its DATA accepted). Printed: emails/s,
per-email latency, SMTP connections, delivery-log statuses, and statements per email on
both databases. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select

from component.compose import Composer
from component.dispatcher import Dispatcher
from component.durations import parse_duration
from component.store import DeliveryLogEntry, OutboxItem
from notifiers import Notifier, create_notifier
from tests.support.smtp_server import SmtpServer

from .openfire_pipeline import (
    CpuSnapshot,
    OpenfirePostgres,
    OpenfireWriter,
    Pipeline,
    by_label,
    code_version,
    copy_offline,
    copy_users,
    cpu_lines,
    fmt_ms,
    make_config,
    run_bench,
)

REPO = Path(__file__).resolve().parent.parent


class CountingSmtpServer(SmtpServer):
    """The test suite's aiosmtpd server, noting connections and when each mail arrived."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ehlo_count = 0
        self.peers: set[Any] = set()
        self.arrived: list[float] = []  # monotonic, per accepted message
        self._count_lock = threading.Lock()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself without this hook
        with self._count_lock:
            self.ehlo_count += 1
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            with self._count_lock:
                self.arrived.append(time.monotonic())
                self.peers.add(session.peer)
        return reply


class DigestBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="ofnotify-bench-digest-"))
        self.pg = OpenfirePostgres(self.workdir)
        self.smtp = CountingSmtpServer()
        self.pipeline: Pipeline | None = None
        self.dispatcher: Dispatcher | None = None
        self.notifiers: dict[str, Notifier] = {}
        self.lines: list[str] = []

    def progress(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    def wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def run(self) -> None:
        args = self.args
        self.progress(f"workdir {self.workdir}; starting PostgreSQL and SMTP")
        await asyncio.to_thread(self.pg.start)
        self.smtp.start()

        accounts = [f"acct{i:05d}" for i in range(args.accounts)]
        senders = [f"friend{i:03d}" for i in range(args.senders)]
        writer = OpenfireWriter(seed=args.seed)

        def setup() -> None:
            with self.pg.connect() as conn:
                copy_users(conn, [(a, f"Account {a[4:]}", f"{a}@mail.example") for a in accounts])
                copy_users(
                    conn,
                    [(s, f"Friend {s[6:]}", f"{s}@mail.example") for s in senders],
                    offline=False,
                )
            self.pg.vacuum_analyze()

        await asyncio.to_thread(setup)

        config = make_config(
            workdir=self.workdir,
            openfire_url=self.pg.database_url,
            smtp_port=self.smtp.port,
            poll_interval=args.poll_interval,
            rule={"delay": "0s", "digest": True},
            batch_size=args.batch_size,
        )
        self.pipeline = pipeline = await Pipeline.build(config, on_enqueued=self.wake)
        for name, channel in config.channels.items():
            self.notifiers[name] = await create_notifier(name, channel)
        self.dispatcher = dispatcher = Dispatcher(
            pipeline.sessionmaker,
            pipeline.committer,
            self.notifiers,
            config.delivery,
            Composer(config, pipeline.openfire_engine),
        )
        tasks = [
            asyncio.create_task(pipeline.watcher.run(), name="watcher"),
            asyncio.create_task(
                dispatcher.run(wait_for=pipeline.watcher.caught_up), name="dispatcher"
            ),
        ]
        expected = len(accounts)
        try:
            await asyncio.wait_for(pipeline.watcher.caught_up.wait(), timeout=30)
            await asyncio.sleep(0.2)
            pipeline.queries.samples.clear()
            pipeline.store_queries.samples.clear()

            total = args.accounts * args.messages_per_account
            self.progress(
                f"storing {total} offline messages for {len(accounts)} accounts in one transaction"
            )
            now_ms = int(time.time() * 1000)
            rows = []
            for m in range(args.messages_per_account):
                for i, a in enumerate(accounts):
                    sender = senders[(i + m) % len(senders)]
                    rows.append(writer.row(a, sender, now_ms + m))

            def store() -> float:
                with self.pg.connect() as conn, conn.transaction():
                    copy_offline(conn, rows)
                return time.monotonic()

            before = CpuSnapshot.take(self.pg.pid)
            committed = await asyncio.to_thread(store)
            # Until every account has its email, or nothing arrives for a while.
            last_count, last_change = -1, time.monotonic()
            for _ in range(int(args.timeout / 0.05)):
                count = len(self.smtp.arrived)
                if count >= expected:
                    break
                if count != last_count:
                    last_count, last_change = count, time.monotonic()
                elif time.monotonic() - last_change > args.idle_timeout:
                    break
                await asyncio.sleep(0.05)
            after = CpuSnapshot.take(self.pg.pid)
            await asyncio.sleep(0.5)  # the last outcomes reach the delivery log
        finally:
            await dispatcher.stop(5.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.report(committed=committed, before=before, after=after, expected=expected)

    async def report(
        self, *, committed: float, before: CpuSnapshot, after: CpuSnapshot, expected: int
    ) -> None:
        args = self.args
        assert self.pipeline is not None
        pipeline = self.pipeline
        o = self.lines.append
        batches = [b for b in pipeline.ingest.batches if b[2]]
        arrived = sorted(self.smtp.arrived)
        o("")
        o(
            f"ofnotify digest email benchmark — {args.accounts} accounts x "
            f"{args.messages_per_account} messages from {args.senders} senders, rule: email "
            f"digest, delay 0s; poll interval {args.poll_interval}; dispatcher batch_size "
            f"{args.batch_size or 256}"
        )
        o(
            f"ofnotify code: {code_version(REPO)}; store SQLite; Openfire on PostgreSQL "
            "(psycopg async); SMTP: aiosmtpd on 127.0.0.1 in this process, security none"
        )
        if not batches:
            o("the watcher never reported the messages")
            return
        t0 = batches[0][1]
        o(
            f"watcher         {len(batches)} batch(es) with messages; the first "
            f"({batches[0][2]} messages) committed {(t0 - committed) * 1000:.0f} ms after the "
            f"INSERTs committed (Ingest.watcher took {(batches[0][1] - batches[0][0]) * 1000:.0f} "
            "ms of that)"
        )
        o(
            f"emails          {len(arrived)} received for {expected} accounts"
            + ("" if len(arrived) == expected else "  (NOT one per account)")
        )
        if arrived:
            span = arrived[-1] - t0
            rate = len(arrived) / span if span > 0 else 0.0
            o(
                f"throughput      {rate:8.1f} emails/s (watcher batch committed → last email "
                f"received, {span:.2f} s); first email after {(arrived[0] - t0) * 1000:.0f} ms"
            )
            if len(arrived) > 1 and arrived[-1] > arrived[0]:
                o(
                    f"                {(len(arrived) - 1) / (arrived[-1] - arrived[0]):8.1f} "
                    "emails/s between the first and the last email"
                )
            o(
                f"latency         {fmt_ms([a - t0 for a in arrived], (('p50', 0.5), ('p99', 0.99), ('max', 1.0)))}"
                "   watcher batch committed → email received"
            )
        o(
            f"SMTP            {self.smtp.ehlo_count} connections (EHLO), {len(self.smtp.peers)} "
            f"distinct client ports, for {len(arrived)} emails"
        )
        recipients = Counter(addr for m in self.smtp.messages for addr in m.rcpt_tos)
        per_account = Counter(recipients.values())
        o(
            "emails/account  "
            + ", ".join(f"{n} email(s): {c} accounts" for n, c in sorted(per_account.items()))
        )
        subjects = Counter(
            email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]
            for m in self.smtp.messages[:3]
        )
        o("subject e.g.    " + "; ".join(str(s) for s in subjects))
        async with pipeline.sessionmaker() as session:
            statuses = (
                await session.execute(
                    select(DeliveryLogEntry.status, func.count()).group_by(DeliveryLogEntry.status)
                )
            ).all()
            outbox = (
                await session.execute(
                    select(OutboxItem.status, func.count()).group_by(OutboxItem.status)
                )
            ).all()
        o("delivery log    " + ", ".join(f"{s}: {c}" for s, c in statuses))
        o("outbox rows     " + ", ".join(f"{s}: {c}" for s, c in outbox))
        emails = max(1, len(arrived))
        for title, timer in (
            ("Openfire DB", pipeline.queries),
            ("ofnotify store", pipeline.store_queries),
        ):
            groups = by_label(timer.samples)
            total = sum(len(v) for v in groups.values())
            seconds = sum(x.seconds for v in groups.values() for x in v)
            o(
                f"{title:<15} {total / emails:.1f} statements, {seconds / emails * 1000:.1f} ms "
                "per email (whole run incl. watcher polls); by total time (count per email, mean ms):"
            )
            by_time = sorted(groups.items(), key=lambda kv: -sum(x.seconds for x in kv[1]))
            for label, items in by_time[:7]:
                o(
                    f"  {len(items) / emails:6.2f}  "
                    f"{sum(x.seconds for x in items) / len(items) * 1000:6.2f} ms  {label}"
                )
        self.lines.extend(cpu_lines(before, after, "this process (ofnotify + SMTP server)"))

    async def close(self) -> None:
        for notifier in self.notifiers.values():
            with contextlib.suppress(Exception):
                await notifier.close()
        if self.pipeline is not None:
            await self.pipeline.close()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.smtp.stop()
        self.pg.stop()
        if self.args.keep:
            print(f"kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.digest_emails",
        description="Measure digest emails per second from the Openfire watcher to a local "
        "SMTP server (measures only; asserts nothing).",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=500,
        help="offline accounts with an email address (default 500)",
    )
    parser.add_argument(
        "--messages-per-account",
        type=int,
        default=3,
        help="offline messages per account, one digest each (default 3)",
    )
    parser.add_argument("--senders", type=int, default=20, help="distinct senders (default 20)")
    parser.add_argument("--poll-interval", default="1s", help="openfire.poll_interval")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="delivery.batch_size (ofnotify default 256)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="upper bound in s on waiting for the emails"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="stop waiting after this many s without a new email",
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.messages_per_account < 1 or args.senders < 1:
        parser.error("--accounts, --messages-per-account and --senders must be ≥ 1")
    try:
        parse_duration(args.poll_interval)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(DigestBench(args), args.log_level)


if __name__ == "__main__":
    sys.exit(main())
