"""The rotating scan: ofOffline rows that the message-ID window cannot see, a slice per poll.

Openfire hands out message IDs in blocks per cluster node, so a node still drawing
from an older block stores rows far below the high-water mark, and a transaction may
commit long after it took its ID. Only `creationDate` tells such rows apart, and
Openfire indexes neither it nor `messageID` (ofnotify does not change Openfire's
schema), so finding them means reading the table. Reading all of it in one poll costs
in proportion to the table; instead each poll reads one slice, and the slices of one
cycle cover the whole table, whatever was inserted or deleted meanwhile:

- PostgreSQL 14 and later: ranges of heap blocks (a TID range scan reads only those
  blocks; the slice that reaches the last block is open-ended);
- otherwise: ranges of usernames, the primary key's prefix (InnoDB keeps rows in
  primary-key order, so a range is a contiguous part of the table).

A slice returns the rows created at or after the floor: the cursor when the previous
cycle began, minus the overlap for lagging clocks and late commits. A row is visible
either before its slice is read in the current cycle or before it is read in the next,
and in both cycles the floor is at most the cursor at that moment minus the overlap: so
every row is found within about one cycle of becoming visible.

A slice's position only advances once the poll that read it is committed (`advance`),
so a failed poll reads the same slice again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from . import openfire

# Slices per cycle while a slice stays below the size cap, so small tables are covered
# every few polls; above the cap the cycle gets longer and a poll's cost stays bounded.
SLICES_PER_CYCLE = 10
MAX_SLICE_BLOCKS = 512  # 4 MiB of heap at PostgreSQL's 8 KiB blocks: ~3-4 ms to read
ROWS_PER_SLICE = 5_000  # for username ranges


@dataclass(frozen=True)
class Slice:
    """What one poll read, and where the next poll starts."""

    rows: list[openfire.KeyRow]
    next_position: object
    ends_cycle: bool


class _Slicer(Protocol):
    async def read(
        self, conn: AsyncConnection, position: object, since_ms: int, upto_id: int | None
    ) -> Slice: ...


@dataclass(frozen=True)
class _BlockPosition:
    first: int
    size: int  # blocks per slice, fixed for a cycle
    total: int  # heap blocks when the cycle began


class HeapBlocks:
    """PostgreSQL ≥ 14: slices are ranges of heap blocks."""

    def __init__(self, slices: int = SLICES_PER_CYCLE, max_blocks: int = MAX_SLICE_BLOCKS) -> None:
        self._slices = slices
        self._max_blocks = max_blocks

    async def read(
        self, conn: AsyncConnection, position: object, since_ms: int, upto_id: int | None
    ) -> Slice:
        if not isinstance(position, _BlockPosition):  # a cycle begins: size it afresh
            total = await openfire.heap_blocks(conn)
            size = max(1, min(self._max_blocks, -(-total // self._slices)))
            position = _BlockPosition(0, size, total)
        end = position.first + position.size
        last = end >= position.total
        rows = await openfire.created_in_blocks(
            conn, position.first, None if last else end, since_ms, upto_id
        )
        following = None if last else _BlockPosition(end, position.size, position.total)
        return Slice(rows, following, last)


class UsernameRanges:
    """Any database: slices are username ranges on the primary key."""

    def __init__(self, rows: int = ROWS_PER_SLICE) -> None:
        self._rows = rows

    async def read(
        self, conn: AsyncConnection, position: object, since_ms: int, upto_id: int | None
    ) -> Slice:
        after = position if isinstance(position, str) else ""
        upto = await openfire.username_after(conn, after, self._rows)
        rows = await openfire.created_in_users(conn, after, upto, since_ms, upto_id)
        return Slice(rows, upto, upto is None)


def slicer_for(conn: AsyncConnection) -> _Slicer:
    dialect = conn.dialect
    if dialect.name == "postgresql" and (dialect.server_version_info or (0,)) >= (14,):
        return HeapBlocks()
    return UsernameRanges()


class RotatingScan:
    def __init__(self, cursor_ms: int, overlap_ms: int, slicer: _Slicer | None = None) -> None:
        self._overlap_ms = overlap_ms
        self._slicer = slicer
        self._position: object = None
        # The cursor when the current cycle began; before the first cycle, the stored
        # cursor: rows committed while ofnotify was away are at or after it (minus overlap).
        self._cycle_cursor = cursor_ms
        self._floor_ms = cursor_ms - overlap_ms
        self._pending: tuple[Slice, int, int] | None = None
        self.cycles = 0  # completed cycles, for tests and metrics

    @property
    def floor_ms(self) -> int:
        """Rows created before this are no longer looked for by the scan."""
        return self._floor_ms

    async def read(
        self, conn: AsyncConnection, cursor_ms: int, upto_id: int | None = None
    ) -> list[openfire.KeyRow]:
        """The next slice's rows created at or after the floor; `advance` moves on.

        `upto_id`: the caller reads every row above it each poll anyway (the ID window),
        so the slice leaves those out: otherwise the slice that reaches the end of the
        table returns every message stored during the cycle, all known already. A row
        left out now is found by a later slice once the window has moved past it."""
        if self._slicer is None:
            self._slicer = slicer_for(conn)
        floor, cycle_cursor = self._floor_ms, self._cycle_cursor
        if self._position is None:  # a cycle begins: look back to the previous one's start
            floor, cycle_cursor = self._cycle_cursor - self._overlap_ms, cursor_ms
        found = await self._slicer.read(conn, self._position, floor, upto_id)
        self._pending = (found, floor, cycle_cursor)
        return found.rows

    def advance(self) -> None:
        """The poll that read the last slice is committed: the next poll reads the next."""
        if self._pending is None:
            return
        found, self._floor_ms, self._cycle_cursor = self._pending
        self._position = None if found.ends_cycle else found.next_position
        self.cycles += found.ends_cycle
        self._pending = None
