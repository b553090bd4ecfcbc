"""The change feed: reading the transition log window by window.

The design (``docs/guarantees.md`` for what it promises): every status
change appends a row to ``squidmesh.run_transitions`` in the writer's
transaction; a *tick* records a snapshot of committed transactions; the
changes between two ticks (committed by the later one's snapshot, not by the
earlier one's) form a *window* that never changes once both ticks exist. A
position names a window and the last change delivered in it, so a consumer
that resumes from one misses nothing, however late a transaction committed,
and sees nothing twice. No writer waits for another: the log costs one row
per change, and ticks are made by readers, never on the write path.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final, NamedTuple
from uuid import UUID

import asyncpg
import msgspec

from . import _queries as q
from ._errors import InvalidArgument, InvalidPosition
from ._queries import SQL
from ._types import ChangePage, RunChange, RunStatus

# How old the newest tick must be before a read makes another one: how long
# a change may wait, after commit, to become readable, and (under constant
# traffic) at most 20 ticks a second for the whole database.
TICK_EVERY: Final = timedelta(milliseconds=50)
MAX_READ: Final = 10_000
# SQLSTATE of squidmesh.read_changes for a tick that does not exist.
_NO_TICK: Final = "SQM02"
_POSITION = re.compile(r"1\.([0-9a-f]{1,16})\.([0-9a-f]{0,16})\.([0-9a-f]{1,16})")


class _Change(msgspec.Struct, array_like=True, frozen=True):
    run_id: UUID
    workflow: str
    run_version: int
    from_status: RunStatus | None
    to_status: RunStatus
    at: datetime


# A row of squidmesh.read_changes: (tick, window end, seq, change); the last
# row of a page may instead say where the next window starts (no change).
_ROWS: Final = msgspec.json.Decoder(list[tuple[int, int | None, int | None, _Change | None]])


class Position(NamedTuple):
    """(tick, window end or None, last seq delivered in that window)."""

    tick: int
    end: int | None
    seq: int


START: Final = Position(0, None, 0)


def encode_position(position: Position) -> str:
    end = "" if position.end is None else f"{position.end:x}"
    return f"1.{position.tick:x}.{end}.{position.seq:x}"


def decode_position(text: object) -> Position:
    """The position a string names; ``InvalidPosition`` for one squidmesh did not make."""
    if text is None:
        return START
    if not isinstance(text, str):
        raise InvalidPosition(text, f"a position is a str, not {type(text).__name__}")
    match = _POSITION.fullmatch(text)
    if match is None:
        raise InvalidPosition(text, "pass back a position that read_changes or changes gave")
    tick, end, seq = match.groups()
    parsed = Position(int(tick, 16), int(end, 16) if end else None, int(seq, 16))
    if (
        parsed.tick >= 2**63
        or parsed.seq >= 2**63
        or (parsed.end is not None and not parsed.tick < parsed.end < 2**63)
        or (parsed.end is None and parsed.seq != 0)
    ):
        raise InvalidPosition(text, "pass back a position that read_changes or changes gave")
    return parsed


def check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_READ:
        raise InvalidArgument(name, f"must be an int from 1 to {MAX_READ}, not {value!r}")
    return value


def check_workflow(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 255:
        raise InvalidArgument("workflow", f"must be a workflow name (a str) or None, not {value!r}")
    return value


class FeedOps:
    """``read_changes``: one call of ``squidmesh.read_changes`` per page."""

    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def read(
        self, after: object, workflow: object, limit: object, *, tick: bool = True
    ) -> ChangePage:
        """The next changes after ``after``. ``tick``: make a tick first if one is due."""
        start = decode_position(after)
        wanted = check_workflow(workflow)
        size = check_limit("limit", limit)
        try:
            # A write: it may make a tick. write_value also keeps it at READ
            # COMMITTED, which the tick's ordering needs.
            text = await q.write_value(
                self._pool,
                SQL.read_changes,
                start.tick,
                start.end,
                start.seq,
                wanted,
                size,
                TICK_EVERY if tick else None,
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _NO_TICK:
                raise InvalidPosition(
                    after,
                    "its tick is gone (prune_feed removed it): the changes after it are "
                    "still in the log, but the feed can no longer place them; "
                    "restart from None or from a newer position",
                ) from exc
            raise
        changes: list[RunChange] = []
        position = start
        for tick_id, end, seq, change in _ROWS.decode(text):
            if change is None or end is None or seq is None:
                position = Position(tick_id, None, 0)
                continue
            position = Position(tick_id, end, seq)
            changes.append(
                RunChange(
                    position=encode_position(position),
                    run_id=change.run_id,
                    workflow=change.workflow,
                    run_version=change.run_version,
                    from_status=change.from_status,
                    to_status=change.to_status,
                    at=change.at,
                )
            )
        return ChangePage(changes=changes, position=encode_position(position))

    async def head(self) -> str:
        """A position after every change committed before the call.

        A tick is made first when one is due, so the position does not lie
        at an old tick with everything written since still after it.
        """
        await q.write_value(self._pool, SQL.feed_tick, TICK_EVERY)
        return await self.newest()

    async def newest(self) -> str:
        """The position of the newest tick: only changes after it follow."""
        tick = await q.value(self._pool, SQL.newest_tick)
        return encode_position(Position(int(tick), None, 0))
