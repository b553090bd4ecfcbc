"""Shared machinery: a server, fresh databases, pools, timing, tables.

Without ``--dsn`` / ``SQUIDMESH_DSN`` the harness starts an embedded
PostgreSQL with its durable settings (fsync, synchronous_commit and
full_page_writes left on): the fsync-off settings of the test suite would make
every write look cheaper than it is in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

import squidmesh
from squidmesh import testing

T = TypeVar("T")
OpFn = Callable[[T], Awaitable[object]]

POOL_SIZE = 16
REPO = Path(__file__).resolve().parent.parent
_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_connections",
    "jit",
    "plan_cache_mode",
)


# -- environment --------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """nproc, memory, Python, platform and the git revision of the checkout."""
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "asyncpg": asyncpg.__version__,
        "squidmesh": squidmesh.__version__,
        "git": _git_revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


async def server_info(dsn: str) -> dict[str, Any]:
    """The server version and the settings that decide what a write costs."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            list(_SETTINGS),
        )
        num = await conn.fetchval("SHOW server_version_num")
    finally:
        await conn.close()
    settings = {r["name"]: r["setting"] + (f" ({r['unit']})" if r["unit"] else "") for r in rows}
    return {"version": version, "version_num": int(num), "settings": settings}


@contextlib.asynccontextmanager
async def server(dsn: str | None) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(admin_dsn, source)``: the given DSN, ``$SQUIDMESH_DSN``, or an
    embedded durable server started here and removed on exit."""
    dsn = dsn or os.environ.get("SQUIDMESH_DSN")
    if dsn:
        yield dsn, "given DSN"
        return
    embedded = testing.EmbeddedPostgres(durable=True)
    status("starting an embedded PostgreSQL (durable settings) ...")
    await asyncio.to_thread(embedded.start)
    try:
        yield embedded.dsn, "embedded (durable)"
    finally:
        await asyncio.to_thread(embedded.close)


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, purpose: str) -> AsyncIterator[str]:
    """Create a new migrated database for one benchmark; drop it afterwards."""
    name = f"squidmesh_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    dsn = await testing.create_database(admin_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await squidmesh.migrate(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await testing.drop_database(admin_dsn, name)


async def open_pool(
    dsn: str,
    *,
    reset_free: bool = True,
    size: int = POOL_SIZE,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """A pool of ``size`` connections opened up front.

    ``reset_free`` configures the pool as ``RunStore.connect`` does
    (``reset=squidmesh.no_reset``); otherwise it is asyncpg's default pool,
    which sends a reset query on every release.
    """
    options: dict[str, Any] = {"min_size": size, "max_size": size}
    if reset_free:
        options["reset"] = squidmesh.no_reset
    if init is not None:
        options["init"] = init
    pool = await asyncpg.create_pool(dsn, **options)
    assert pool is not None
    return pool


class StatementCounter:
    """Counts the statements a pool's connections send, via asyncpg's query logger.

    Each statement is one round trip once prepared (asyncpg caches the
    prepared statement per connection, so warm up before counting).
    """

    def __init__(self) -> None:
        self.count = 0
        self.queries: list[str] = []

    def _log(self, record: Any) -> None:
        self.count += 1
        self.queries.append(" ".join(str(record.query).split())[:90])

    async def init(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self._log)

    def reset(self) -> None:
        self.count = 0
        self.queries.clear()


# -- output -------------------------------------------------------------------


def status(message: str) -> None:
    """A line on stderr (progress chatter; the results go to stdout)."""
    print(message, file=sys.stderr, flush=True)


class LiveLine:
    """A live progress line on stderr, redrawn a few times a second.

    On a terminal the line is redrawn in place; otherwise (a log file, CI)
    only the final line of each measurement is written.
    """

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.done = 0
        self.total = 0
        self.started = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, label: str, total: int) -> None:
        self.label, self.done, self.total = label, 0, total
        self.started = time.perf_counter_ns()
        if self.tty and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._redraw())

    def _line(self) -> str:
        elapsed = (time.perf_counter_ns() - self.started) / 1e9
        rate = self.done / elapsed if elapsed > 0 else 0.0
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return f"{self.label:<52} [{bar}] {self.done:>7}/{self.total:<7} {rate:>9,.0f}/s"

    async def _redraw(self) -> None:
        while True:
            sys.stderr.write("\r" + self._line()[:150])
            sys.stderr.flush()
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            sys.stderr.write("\r\033[K")
        sys.stderr.write(self._line() + "\n")
        sys.stderr.flush()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table, numbers right-aligned (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(r[i]) for r in cells[1:] if r[i] not in ("", "-"))
        for i in range(len(headers))
    ]

    def fmt(row: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if num else "-" * (w + 2)
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([fmt(cells[0]), sep, *(fmt(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x%"))
    except ValueError:
        return False
    return True


# -- timing -------------------------------------------------------------------


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """The q-quantile (0..1) of sorted nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    index = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[index] / 1e6


@dataclass
class Timing:
    """One timed batch: wall time and each operation's latency, in ns."""

    wall_ns: int
    latencies_ns: list[int] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return len(self.latencies_ns) / (self.wall_ns / 1e9) if self.wall_ns else 0.0


async def timed(
    fn: Callable[[T], Awaitable[object]],
    items: Sequence[T],
    concurrency: int,
    live: LiveLine | None = None,
) -> Timing:
    """Run ``fn(item)`` for every item from ``concurrency`` tasks; time each call.

    The tasks pull items from one shared iterator, so a slow call does not
    leave the other tasks idle at the end of a fixed share.
    """
    it = iter(items)
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def worker() -> None:
        for item in it:
            t0 = clock()
            await fn(item)
            latencies.append(clock() - t0)
            if live is not None:
                live.done += 1

    start = clock()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return Timing(clock() - start, latencies)


@dataclass
class Summary:
    """Figures over several timed batches of one variant."""

    ops: int
    ops_per_s: float  # median over the rounds
    p50_ms: float
    p99_ms: float
    rounds: list[float]

    @classmethod
    def of(cls, timings: Sequence[Timing]) -> Summary:
        lat = sorted(x for t in timings for x in t.latencies_ns)
        rates = [t.ops_per_s for t in timings]
        return cls(len(lat), median(rates), percentile(lat, 0.5), percentile(lat, 0.99), rates)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def compare(
    baseline: tuple[str, Callable[[T], Awaitable[object]]],
    squidmesh_side: tuple[str, Callable[[T], Awaitable[object]]],
    items: Sequence[T],
    concurrency: int,
    live: LiveLine,
    rounds: int = 4,
) -> list[dict[str, Any]]:
    """Time a baseline and the squidmesh call over ``items`` in alternating rounds.

    The order flips every round so drift on a shared machine hits both sides;
    the ratio is the median of the per-round ratios. Returns one row per side.
    """
    (base_name, base), (squid_name, squid) = baseline, squidmesh_side
    t_base: list[Timing] = []
    t_squid: list[Timing] = []
    per_round = max(concurrency, len(items) // rounds)
    for r in range(rounds):
        order = [(base, t_base), (squid, t_squid)]
        for fn, sink in order if r % 2 == 0 else order[::-1]:
            sink.append(await timed(fn, items[:per_round], concurrency, live))
    await live.stop()
    ratios = [s.ops_per_s / b.ops_per_s for s, b in zip(t_squid, t_base, strict=True)]
    rows = []
    for name, sink, ratio in ((base_name, t_base, None), (squid_name, t_squid, median(ratios))):
        summary = Summary.of(sink)
        rows.append(
            {
                "concurrency": concurrency,
                "variant": name,
                "ops_per_s": round(summary.ops_per_s, 1),
                "p50_ms": round(summary.p50_ms, 4),
                "p99_ms": round(summary.p99_ms, 4),
                "ratio": None if ratio is None else round(ratio, 3),
            }
        )
    return rows
