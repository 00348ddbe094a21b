"""Group commit: many small units of work, one transaction.

A publish must be answered only after its outbox row is durable, and the dispatcher
records every attempt. One commit per row would cap throughput at the database's
commit rate; batching whatever arrived meanwhile keeps latency at about one commit
while throughput scales with the batch.

Two kinds of work share a batch:
- a plain unit, `run(work)`: an async function of the session, run in turn;
- a `Batched` operation, `add(op, item)`: every item of the same operation in the batch
  is applied in one go (one bulk statement instead of one per item: with aiosqlite each
  statement is a thread hand-off, which is what limited throughput).
If a batch fails, each unit is retried in its own transaction so one bad row cannot
sink its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Work = Callable[[AsyncSession], Awaitable[Any]]


@dataclass(frozen=True, eq=False)
class Batched(Generic[T, R]):
    """An operation whose items are applied together: `apply(session, items)` returns
    one result per item, in order."""

    name: str
    apply: Callable[[AsyncSession, Sequence[T]], Awaitable[Sequence[R]]]


@dataclass(eq=False)
class _Entry:
    op: Work | Batched[Any, Any]
    item: Any
    future: asyncio.Future[Any]


class GroupCommitter:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], max_batch: int = 500
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
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
        return await self._submit(work, None)

    async def add(self, op: Batched[T, R], item: T) -> R:
        """Apply `item` with the other items of `op` in this batch; return once committed."""
        return await self._submit(op, item)

    async def _submit(self, op: Work | Batched[Any, Any], item: Any) -> Any:
        if self._task is None:
            raise RuntimeError("GroupCommitter is not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Entry(op, item, future))
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

    async def _commit(self, batch: list[_Entry]) -> None:
        live = [entry for entry in batch if not entry.future.done()]
        if not live:
            return
        try:
            async with self._sessionmaker() as session, session.begin():
                results = await self._apply(session, live)
        except Exception:
            if len(live) == 1:
                if not live[0].future.done():
                    live[0].future.set_exception(sys.exc_info()[1] or RuntimeError())
                return
            log.warning("batch of %d failed; retrying each alone", len(live), exc_info=True)
            for entry in live:
                await self._commit([entry])
            return
        for entry, result in zip(live, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    @staticmethod
    async def _apply(session: AsyncSession, entries: list[_Entry]) -> list[Any]:
        results: dict[int, Any] = {}
        groups: dict[Batched[Any, Any], list[int]] = {}
        for index, entry in enumerate(entries):
            if isinstance(entry.op, Batched):
                groups.setdefault(entry.op, []).append(index)
            else:
                results[index] = await entry.op(session)
        for op, indexes in groups.items():
            applied = await op.apply(session, [entries[i].item for i in indexes])
            results.update(zip(indexes, applied, strict=True))
        return [results[i] for i in range(len(entries))]
