"""`ofnotify run`: wires sources, policy, outbox, dispatcher and notifiers; owns lifecycle.

Background tasks are kept and cancelled on shutdown; the first one to die takes the
service down with a distinct exit code rather than leaving a half-working process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from notifiers import Notifier, create_notifier

from . import metrics, outbox
from .appserver import AppServer
from .committer import GroupCommitter
from .compose import Composer
from .config import Config
from .dispatcher import Dispatcher
from .errors import ComponentAuthError
from .ingest import Ingest
from .policy import Policy
from .ratelimit import TokenBuckets
from .registrations import NodeCache
from .store import create_schema, make_engine, make_sessionmaker, utcnow
from .watcher import Watcher
from .xmpp import Component, ComponentConnection

if TYPE_CHECKING:
    from .http import HttpServer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3

SHUTDOWN_GRACE = 10.0


async def prepare_database(engine: AsyncEngine, max_delay: float = 30.0) -> None:
    """The database may start after us (compose, reboots): wait for it, loudly."""
    delay = 1.0
    while True:
        try:
            await create_schema(engine)
            return
        except (OSError, ConnectionError) as exc:
            reason = str(exc)
        except Exception as exc:  # driver-specific "cannot connect" errors
            if "connect" not in str(exc).lower():
                raise
            reason = type(exc).__name__
        log.warning("database not reachable (%s); retrying in %.0fs", reason, delay)
        await asyncio.sleep(delay)
        delay = min(max_delay, delay * 2)


GAUGE_INTERVAL = 5.0


async def refresh_gauges(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Depth and age of the queue, for alerting on a stuck dispatcher."""
    while True:
        try:
            async with sessionmaker() as session:
                depth, oldest = await outbox.depth_and_oldest_due(session)
            metrics.OUTBOX_DEPTH.set(depth)
            age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
            metrics.OUTBOX_OLDEST_DUE_AGE.set(max(0.0, age))
        except Exception:
            log.debug("could not refresh outbox gauges", exc_info=True)
        await asyncio.sleep(GAUGE_INTERVAL)


def _constant(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


def _answers(engine: AsyncEngine) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    return check


def tune_garbage_collector() -> None:
    """Each notification allocates a few hundred short-lived objects (stanza elements,
    rows, futures) and almost no cycles. At CPython's default thresholds (700, 10, 10)
    collections took ~0.2 ms of the event loop's CPU per notification (~30 %), and every
    full collection walked everything startup left behind (modules, SQLAlchemy mappers,
    slixmpp plugins), stalling the loop for 140 to 175 ms. Startup objects are frozen out
    of collections and young ones are collected less often; cycles are still collected,
    at most 50,000 allocations later (measured with bench/instrument.py)."""
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


@dataclass
class Service:
    config: Config
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    connection: ComponentConnection | None = None
    dispatcher: Dispatcher | None = None
    watcher: Watcher | None = None
    appserver: AppServer | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        config = self.config
        engine = make_engine(config.storage.url)
        await prepare_database(engine)
        sessionmaker = make_sessionmaker(engine)
        committer = GroupCommitter(sessionmaker)
        committer.start()
        for name, channel in config.channels.items():
            self.notifiers[name] = await create_notifier(name, channel)
        openfire_engine = (
            make_engine(config.openfire.database_url, pre_ping=False)
            if config.openfire is not None
            else None
        )
        nodes = NodeCache(sessionmaker)
        self.dispatcher = dispatcher = Dispatcher(
            sessionmaker,
            committer,
            self.notifiers,
            config.delivery,
            Composer(config, openfire_engine),
            on_registration_disabled=nodes.invalidate,
        )
        ingest = Ingest(
            committer,
            Policy(config),
            dispatcher.wake,
            include_body=config.privacy.include_body,
            buckets=TokenBuckets(config.limits.pushes_per_second, config.limits.push_burst),
            direct=dispatcher,
        )
        xmpp = Component(config.xmpp)
        self.connection = connection = ComponentConnection(
            xmpp, config.xmpp, on_state=lambda up: metrics.XMPP_CONNECTED.set(1 if up else 0)
        )
        self.appserver = AppServer(xmpp, config, committer, nodes, ingest)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

        caught_up = None
        if config.openfire is not None and openfire_engine is not None:
            self.watcher = Watcher(config.openfire, openfire_engine, sessionmaker, ingest)
            caught_up = self.watcher.caught_up
        tune_garbage_collector()
        tasks = {
            asyncio.create_task(connection.run(), name="xmpp"),
            asyncio.create_task(dispatcher.run(wait_for=caught_up), name="dispatcher"),
        }
        if self.watcher is not None:
            tasks.add(asyncio.create_task(self.watcher.run(), name="watcher"))
        tasks.add(asyncio.create_task(refresh_gauges(sessionmaker), name="gauges"))
        http: HttpServer | None = None
        if config.http is not None:
            from .http import HttpServer  # aiohttp costs ~10 MB: only when asked for

            checks = {
                "xmpp": _constant(lambda: connection.connected),
                "storage": _answers(engine),
            }
            if openfire_engine is not None:
                checks["openfire_database"] = _answers(openfire_engine)
            http = HttpServer(config.http.listen, checks)
            await http.start()
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        code = EXIT_OK
        try:
            done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop}:
                exc = task.exception()
                if isinstance(exc, ComponentAuthError):
                    log.critical("%s", exc)
                    code = EXIT_AUTH
                elif exc is not None:
                    log.critical("%s failed", task.get_name(), exc_info=exc)
                    code = EXIT_CRASH
                else:
                    log.critical("%s stopped unexpectedly", task.get_name())
                    code = EXIT_CRASH
        finally:
            log.info("shutting down")
            stop.cancel()
            if http is not None:
                await http.stop()
            await connection.stop()
            await dispatcher.stop(SHUTDOWN_GRACE)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await committer.stop()
            for notifier in self.notifiers.values():
                await notifier.close()
            await engine.dispose()
            if openfire_engine is not None:
                await openfire_engine.dispose()
        return code
