"""Waiting, without sleeps, until backends are blocked on a lock (or no longer are)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Observer = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy

_POLL_S: Final = 0.005

# Backends other than the caller that wait on a heavyweight lock (a row, a
# table, a transaction, an advisory lock): with $1, those $1 blocks; with $2,
# backend $2 only; with neither, those of the caller's database.
_WAITING: Final = """
SELECT pid
  FROM pg_catalog.pg_stat_activity
 WHERE wait_event_type = 'Lock'
   AND pid <> pg_catalog.pg_backend_pid()
   AND ($1::integer IS NULL OR $1::integer = ANY (pg_catalog.pg_blocking_pids(pid)))
   AND ($2::integer IS NULL OR pid = $2::integer)
   AND ($1::integer IS NOT NULL OR $2::integer IS NOT NULL
        OR datname = pg_catalog.current_database())
 ORDER BY pid
"""


async def wait_until_blocked(
    observer: Observer,
    *,
    blocked_by: int | None = None,
    pid: int | None = None,
    count: int = 1,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounded by default: a missed wait must not hang
) -> list[int]:
    """Wait until ``count`` backends wait on a lock; return their pids.

    The deterministic way to test "B waits for A": let A take a lock, start
    B as a task, await this, then let A commit and check what B decided.
    ``pg_stat_activity`` is polled every few milliseconds through
    ``observer``, a connection (or pool) that is not itself taking part.

    Args:
        observer: where to poll from. With neither ``blocked_by`` nor
            ``pid``, every backend of the observer's database counts.
        blocked_by: the pid of the lock holder (``conn.get_server_pid()``):
            only the backends it blocks count.
        pid: only this backend counts (B's ``get_server_pid()``).
        count: how many waiting backends to wait for.
        timeout: seconds before giving up.

    Returns:
        The pids of the backends found waiting (at least ``count``), in
        ascending order.

    Raises:
        TimeoutError: fewer than ``count`` backends were waiting after
            ``timeout`` seconds; the message says how many were.
    """
    return await _poll(
        observer,
        blocked_by,
        pid,
        lambda waiting: len(waiting) >= count,
        timeout,
        f"expected {count} backend(s) blocked on a lock",
    )


async def wait_until_not_blocked(
    observer: Observer,
    *,
    blocked_by: int | None = None,
    pid: int | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounded by default: a missed wait must not hang
) -> None:
    """Wait until no backend waits on a lock (the ones ``blocked_by`` or ``pid`` pick).

    The other half of a cancellation test: after cancelling a task that was
    blocked, its statement must be gone from the server too before the
    holder lets go, or it would still write.

    Args:
        observer, blocked_by, pid, timeout: as for :func:`wait_until_blocked`.

    Raises:
        TimeoutError: backends were still waiting after ``timeout`` seconds;
            the message lists them.
    """
    await _poll(
        observer,
        blocked_by,
        pid,
        lambda waiting: not waiting,
        timeout,
        "expected no backend blocked on a lock",
    )


async def _poll(
    observer: Observer,
    blocked_by: int | None,
    pid: int | None,
    done: Callable[[list[int]], bool],
    seconds: float,
    expected: str,
) -> list[int]:
    waiting: list[int] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                rows = await observer.fetch(_WAITING, blocked_by, pid)
                waiting = [int(row[0]) for row in rows]
                if done(waiting):
                    return waiting
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        which = "".join(
            [
                f" by backend {blocked_by}" if blocked_by is not None else "",
                f" (backend {pid})" if pid is not None else "",
            ]
        )
        raise TimeoutError(
            f"{expected}{which} within {seconds:g} s; waiting: {waiting or 'none'}"
        ) from None
