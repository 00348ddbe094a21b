"""Group commit: many small units of work, one transaction.

A publish must be answered only after its outbox row is durable, and the dispatcher
records every attempt. One commit per row would cap throughput at the database's
commit rate; batching whatever arrived meanwhile keeps latency at about one commit
while throughput scales with the batch. If a batch fails, each unit is retried in
its own transaction so one bad row cannot sink its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[Any]]


class GroupCommitter:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], max_batch: int = 500
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Work, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-committer")

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in a shared transaction; return once it is committed."""
        if self._task is None:
            raise RuntimeError("GroupCommitter is not started")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((work, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        live = [(w, f) for w, f in batch if not f.done()]
        try:
            async with self._sessionmaker() as session, session.begin():
                results = [await work(session) for work, _ in live]
        except Exception:
            if len(live) == 1:
                _, future = live[0]
                if not future.done():
                    future.set_exception(_current_exception())
                return
            log.warning("batch of %d failed; retrying each alone", len(live), exc_info=True)
            for item in live:
                await self._commit([item])
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)


def _current_exception() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc
