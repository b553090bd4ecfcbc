"""squidmesh behind a real PgBouncer in transaction mode.

Each test starts its own ``pgbouncer`` (the binary of Debian's package,
which ``make test`` installs when it may; ``$SQUIDMESH_PGBOUNCER`` names
another) with its own configuration in a temporary directory, on a free port
of 127.0.0.1, in front of the test's database, and stops it afterwards. It
runs as the embedded server's system user when this process is root
(PgBouncer refuses to run as root). Its server pool is smaller than the
client pools, so consecutive transactions of one client connection land on
different server connections, as they do in production.

Two pool settings work, and every test of the store runs with each the
installed PgBouncer supports:

- ``cache-off``: asyncpg's statement cache off (``statement_cache_size=0``),
  any PgBouncer;
- ``server-prepared``: PgBouncer >= 1.21 with ``max_prepared_statements``,
  asyncpg's default cache.

``wait_for`` and the feed poll (no ``listen_dsn``). The detection tests show
what a user who forgets gets: ``PoolerMisconfigured`` from a pool with the
statement cache on, and one warning, then polling, from a ``listen_dsn``
through the pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    InvalidTransition,
    PoolerMisconfigured,
    Run,
    RunChange,
    RunNotFound,
    RunStatus,
    RunStore,
    VersionConflict,
    WaitTimeout,
)
from squidmesh import _queries as q
from squidmesh.testing._server import _free_port, _system_user
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER, WORKFLOWS

S = RunStatus
T = TypeVar("T")
TIMEOUT_S = 30
START_TIMEOUT_S = 10
# Server connections per database and user: fewer than the client pools
# hold, so that transactions hop between server connections.
SERVER_POOL = 4
CLIENT_POOL = 12


# -- the pgbouncer binary and process -----------------------------------------------------


def _find_pgbouncer() -> str | None:
    named = os.environ.get("SQUIDMESH_PGBOUNCER")
    if named:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which("pgbouncer")
    if found:
        return found
    # Debian's package puts it in /usr/sbin, which a user's PATH may lack.
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


@dataclass(frozen=True)
class Binary:
    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def prepares(self) -> bool:
        """Whether it can track prepared statements (``max_prepared_statements``)."""
        return self.version >= (1, 21, 0)


@pytest.fixture(scope="session")
def pgbouncer_binary() -> Binary:
    path = _find_pgbouncer()
    if path is None:
        named = os.environ.get("SQUIDMESH_PGBOUNCER")
        pytest.skip(
            f"SQUIDMESH_PGBOUNCER={named} is not an executable"
            if named
            else "pgbouncer is not installed: make test installs Debian's package "
            "(apt-get install pgbouncer) when it runs as root or with passwordless sudo; "
            "or set SQUIDMESH_PGBOUNCER to a pgbouncer binary"
        )
    out = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.search(r"PgBouncer (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if found is None:
        raise AssertionError(f"{path} --version: {out.stdout}{out.stderr}")
    major, minor, patch = (int(g) for g in found.groups())
    return Binary(path, (major, minor, patch))


_PR_SET_PDEATHSIG = 1


def _dying_with_parent() -> Callable[[], None] | None:
    """For ``preexec_fn`` (which runs after subprocess changed the user): a
    pytest killed by SIGKILL leaves no pgbouncer behind. Linux only."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PgBouncer:
    """A pgbouncer process in transaction mode in front of one database."""

    def __init__(self, binary: Binary, target_dsn: str, settings: dict[str, str]) -> None:
        self.binary = binary
        self._target = urlsplit(target_dsn)
        self._settings = settings
        self._dir = Path(tempfile.mkdtemp(prefix="squidmesh-pgbouncer-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def dsn(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/squidmesh"

    @property
    def _user(self) -> str:
        return unquote(self._target.username or "postgres")

    @property
    def log(self) -> str:
        try:
            return (self._dir / "pgbouncer.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def start(self) -> PgBouncer:
        target = self._target
        database = unquote(target.path.lstrip("/")) or self._user
        server = {
            "host": target.hostname or "127.0.0.1",
            "port": str(target.port or 5432),
            "dbname": database,
            "user": self._user,
        }
        if target.password:
            server["password"] = unquote(target.password)
        self.port = _free_port()
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self._dir / "userlist.txt"),
            "pool_mode": "transaction",
            "default_pool_size": str(SERVER_POOL),
            "max_client_conn": "200",
            "logfile": str(self._dir / "pgbouncer.log"),
            "pidfile": "",
            **self._settings,
        }
        lines = ["[databases]", "squidmesh = " + " ".join(f"{k}={v}" for k, v in server.items())]
        lines += ["", "[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items())]
        (self._dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        # trust: no password is checked, but the user must be listed.
        (self._dir / "userlist.txt").write_text(f'"{self._user}" ""\n')
        user = _system_user()  # PgBouncer refuses to run as root
        if user is not None:
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, user.uid, user.gid)
        with open(self._dir / "stderr.log", "wb") as stderr:
            self._proc = subprocess.Popen(
                [self.binary.path, str(self._dir / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self._dir,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=list(user.groups) if user else None,
                start_new_session=True,
                preexec_fn=_dying_with_parent(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                err = (self._dir / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"pgbouncer exited ({self._proc.returncode}):\n{err}{self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen:\n{self.log}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Immediate shutdown before 1.23 (safe shutdown since): the clients
            # are gone by now either way.
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def running(binary: Binary, target_dsn: str, **settings: str) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(binary, target_dsn, settings)
    try:
        yield bouncer.start()
    finally:
        bouncer.stop()


# -- the two ways to configure a pool behind it ------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, str]
    pool_options: dict[str, Any]


CACHE_OFF = Variant("cache-off", {}, {"statement_cache_size": 0})
SERVER_PREPARED = Variant("server-prepared", {"max_prepared_statements": "100"}, {})


@pytest.fixture(params=[CACHE_OFF, SERVER_PREPARED], ids=lambda v: v.name)
def variant(request: pytest.FixtureRequest, pgbouncer_binary: Binary) -> Variant:
    chosen: Variant = request.param
    if chosen is SERVER_PREPARED and not pgbouncer_binary.prepares:
        pytest.skip(
            f"PgBouncer {pgbouncer_binary.version_text} has no max_prepared_statements "
            "(1.21 or later)"
        )
    return chosen


@pytest.fixture
def bouncer(pgbouncer_binary: Binary, dsn: str, variant: Variant) -> Iterator[PgBouncer]:
    with running(pgbouncer_binary, dsn, **variant.settings) as started:
        yield started


@pytest.fixture
def plain_bouncer(pgbouncer_binary: Binary, dsn: str) -> Iterator[PgBouncer]:
    """Transaction mode without prepared statements: what PgBouncer < 1.21
    offers (1.22 and later track 200 by default; 0 turns that off)."""
    settings = {"max_prepared_statements": "0"} if pgbouncer_binary.prepares else {}
    with running(pgbouncer_binary, dsn, **settings) as started:
        yield started


@contextlib.asynccontextmanager
async def pool_on(dsn: str, **options: Any) -> AsyncIterator[asyncpg.Pool]:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", CLIENT_POOL)
    pool = await asyncpg.create_pool(dsn, reset=squidmesh.no_reset, **options)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), TIMEOUT_S)


@pytest.fixture
async def bpool(bouncer: PgBouncer, variant: Variant) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool through PgBouncer, configured as the variant says."""
    async with pool_on(bouncer.dsn, **variant.pool_options) as pool:
        yield pool


@pytest.fixture
async def bstore(bpool: asyncpg.Pool, events: list[Any]) -> AsyncIterator[RunStore]:
    """A store on ``bpool`` that polls (no ``listen_dsn``)."""
    async with RunStore(
        bpool, workflows=WORKFLOWS, listeners=[events.append], poll_interval=0.05
    ) as store:
        yield store


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, TIMEOUT_S)


async def server_pids(pool: asyncpg.Pool, n: int) -> set[int]:
    return {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(n)}


# -- the store through PgBouncer ---------------------------------------------------------


async def test_transactions_really_hop_between_server_connections(
    bpool: asyncpg.Pool, bouncer: PgBouncer
) -> None:
    # The premise of every other test here: one client connection's
    # consecutive transactions are served by several server connections.
    async with bpool.acquire() as conn:
        blocker = await asyncpg.connect(bouncer.dsn, statement_cache_size=0)
        try:
            first = await conn.fetchval("SELECT pg_backend_pid()")
            async with blocker.transaction():
                # The blocker holds the server connection the client used last.
                held = await blocker.fetchval("SELECT pg_backend_pid()")
                second = await conn.fetchval("SELECT pg_backend_pid()")
        finally:
            await blocker.close()
    assert held == first
    assert second != first


async def test_core_operations(bstore: RunStore, events: list[Any]) -> None:
    run = await bstore.create_run(INVOICE_REMINDER, {"account_id": "acc-1"})
    assert (run.status, run.version) == (S.PENDING, 1)
    assert run.payload["account_id"] == "acc-1"
    assert await bstore.get_run(run.id) == run

    keyed, created = await bstore.get_or_create_run(
        ETL_DAILY, {}, idempotency_key="order-7", trigger="manual"
    )
    again, created_again = await bstore.get_or_create_run(
        ETL_DAILY, {}, idempotency_key="order-7", trigger="manual"
    )
    assert (created, created_again, again.id) == (True, False, keyed.id)

    running = await bstore.transition_run(run.id, S.RUNNING, current_step="load_invoice")
    assert (running.status, running.current_step, running.version) == (S.RUNNING, "load_invoice", 2)
    updated = await bstore.update_run(run.id, context={"invoice": 42})
    assert (updated.context, updated.version) == ({"invoice": 42}, 3)
    with pytest.raises(VersionConflict):
        await bstore.update_run(run.id, context={}, expected_version=2)
    with pytest.raises(InvalidTransition):
        await bstore.transition_run(run.id, S.PENDING)
    with pytest.raises(RunNotFound):
        await bstore.get_run("01890a5d-ac96-7a7b-8c3b-0123456789ab")

    # Steps and a read-modify-write: the store's own transactions.
    step = await bstore.begin_step(run.id, "load_invoice", {"page": 1})
    await bstore.complete_step(step.id, {"rows": 3})
    counted = await bstore.update_run_with(
        run.id, lambda r: {"context": {**r.context, "count": r.context.get("count", 0) + 1}}
    )
    assert counted.context == {"invoice": 42, "count": 1}

    # A dispatch: the caller's statement in the store's transaction.
    async def dispatch(conn: Any, moved: Run) -> None:
        assert await conn.fetchval("SELECT status FROM squidmesh.runs WHERE id = $1", moved.id) == (
            "completed"
        )

    done = await bstore.transition_and_dispatch_run(run.id, S.COMPLETED, None, dispatch)
    assert done.status is S.COMPLETED

    other = await bstore.create_run(ETL_DAILY, {})
    await bstore.transition_run(other.id, S.RUNNING)
    cancelling = await bstore.cancel_run(other.id)
    assert cancelling.status is S.CANCELLING
    pending = await bstore.create_run(ETL_DAILY, {})
    assert (await bstore.cancel_run(pending.id)).status is S.CANCELLED

    replay = await bstore.replay_run(run.id)
    assert (replay.status, replay.replayed_from_run_id) == (S.PENDING, run.id)

    # History.
    full = await bstore.get_run(run.id, include_history=True)
    assert full.transitions is not None and full.step_runs is not None
    assert [(t.from_status, t.to_status) for t in full.transitions] == [
        (None, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    assert [(s.step, s.status) for s in full.step_runs] == [("load_invoice", "completed")]

    # Listing, paging, counting.
    every = {run.id, keyed.id, other.id, pending.id, replay.id}
    assert {r.id for r in await bstore.list_runs()} == every
    assert [r.id for r in await bstore.list_runs(status=S.PENDING)] == [replay.id, keyed.id]
    walked: list[Run] = []
    cursor: str | None = None
    while True:
        page = await bstore.page_runs(limit=2, cursor=cursor)
        walked += page.runs
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [r.id for r in walked] == [r.id for r in await bstore.list_runs()]
    assert await bstore.count_runs() == 5
    assert await bstore.count_runs(workflow=ETL_DAILY) == 3
    by_status = await bstore.count_runs_by_status()
    assert (by_status[S.PENDING], by_status[S.COMPLETED], by_status[S.CANCELLING]) == (2, 1, 1)
    assert by_status[S.CANCELLED] == 1
    assert len(events) >= 10  # every event after its commit, through the pooler too


async def test_a_transition_race_has_one_winner_per_move(bstore: RunStore) -> None:
    runs = [await bstore.create_run(ETL_DAILY, {}) for _ in range(12)]
    contenders = 6

    async def attempt(coro: Awaitable[Run]) -> Run | Exception:
        try:
            return await coro
        except (InvalidTransition, VersionConflict) as exc:
            return exc

    # pending -> running: one winner per run, the others refused.
    starts = await bounded(
        asyncio.gather(
            *(
                attempt(bstore.transition_run(r.id, S.RUNNING))
                for r in runs
                for _ in range(contenders)
            )
        )
    )
    for i in range(len(runs)):
        mine = starts[i * contenders : (i + 1) * contenders]
        won = [x for x in mine if isinstance(x, Run)]
        assert len(won) == 1, mine
        assert won[0].version == 2
        assert all(isinstance(x, InvalidTransition) for x in mine if not isinstance(x, Run))

    # running -> completed, failed or cancelling: still one winner each,
    # and the run ends as its winner left it. (cancelling -> failed is a
    # legal move too: failing names the version it saw.)
    def finishing(run: Run, k: int) -> Awaitable[Run]:
        if k % 3 == 0:
            return bstore.transition_run(run.id, S.COMPLETED)
        if k % 3 == 1:
            return bstore.transition_run(run.id, S.FAILED, last_error={"k": k}, expected_version=2)
        return bstore.cancel_run(run.id)

    ends = await bounded(
        asyncio.gather(*(attempt(finishing(r, k)) for r in runs for k in range(contenders)))
    )
    for i, run in enumerate(runs):
        mine = ends[i * contenders : (i + 1) * contenders]
        won = [x for x in mine if isinstance(x, Run)]
        assert len(won) == 1, mine
        stored = await bstore.get_run(run.id, include_history=True)
        assert (stored.status, stored.version) == (won[0].status, 3)
        assert stored.transitions is not None and len(stored.transitions) == 3


async def test_concurrent_claimers_get_each_run_exactly_once(
    bstore: RunStore, bouncer: PgBouncer, variant: Variant
) -> None:
    runs = [await bstore.create_run(ETL_DAILY, {}) for _ in range(90)]
    claimed: list[Run] = []

    async def claimer(store: RunStore) -> None:
        while batch := await store.claim_runs(limit=4, changes={"current_step": "extract"}):
            claimed.extend(batch)
            await asyncio.sleep(0)

    # Two pools through the same PgBouncer, as two worker processes would be.
    async with (
        pool_on(bouncer.dsn, **variant.pool_options) as other_pool,
        RunStore(other_pool, workflows=WORKFLOWS) as other,
    ):
        await bounded(asyncio.gather(*(claimer(s) for s in [bstore, other] * 4)))
    counts = Counter(r.id for r in claimed)
    assert set(counts) == {r.id for r in runs}
    assert set(counts.values()) == {1}
    assert all(r.status is S.RUNNING and r.version == 2 for r in claimed)
    assert await bstore.count_runs(status=S.RUNNING) == 90
    assert await bstore.claim_runs() == []


async def test_the_feed_through_pgbouncer(bstore: RunStore) -> None:
    runs = [await bstore.create_run(ETL_DAILY, {}) for _ in range(5)]
    for run in runs:
        await bstore.transition_run(run.id, S.RUNNING)

    seen: list[RunChange] = []
    position: str | None = None
    deadline = time.monotonic() + TIMEOUT_S
    while len(seen) < 10:
        page = await bstore.read_changes(position, limit=3)
        seen += page.changes
        position = page.position
        if not page.changes:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.01)
    assert Counter((c.run_id, c.run_version) for c in seen) == Counter(
        (r.id, v) for r in runs for v in (1, 2)
    )

    # changes(): a consumer following the feed, woken by polling.
    got: list[RunChange] = []

    async def consume() -> None:
        async for change in bstore.changes(position):
            got.append(change)
            if len(got) == len(runs):
                return

    consumer = asyncio.create_task(consume())
    for run in runs:
        await bstore.transition_run(run.id, S.COMPLETED)
    await bounded(consumer)
    assert [(c.run_id, c.to_status) for c in got] == [(r.id, S.COMPLETED) for r in runs]


async def test_wait_for_is_answered_by_polling(
    bstore: RunStore, bouncer: PgBouncer, variant: Variant
) -> None:
    runs = [await bstore.create_run(ETL_DAILY, {}) for _ in range(4)]
    waits = [asyncio.create_task(bstore.wait_for(r.id)) for r in runs]
    assert await bstore.wait_for(runs[0].id, statuses="pending", timeout=5) == runs[0]
    with pytest.raises(WaitTimeout):
        await bstore.wait_for(runs[0].id, statuses="running", timeout=0.1)
    # Another store (of another process: no wake-up from this one's writes),
    # opened as the docs say: RunStore.connect(..., listen=False).
    async with RunStore.connect(
        bouncer.dsn, workflows=WORKFLOWS, listen=False, max_size=4, **variant.pool_options
    ) as other:
        for run in runs:
            await other.transition_run(run.id, S.RUNNING)
            await other.transition_run(run.id, S.COMPLETED)
        got = await bounded(asyncio.gather(*waits))
        assert [(r.id, r.status) for r in got] == [(r.id, S.COMPLETED) for r in runs]
        # And that store's own wait_for polls too.
        late = await other.create_run(ETL_DAILY, {})
        waiting = asyncio.create_task(other.wait_for(late.id, statuses="running"))
        await bstore.transition_run(late.id, S.RUNNING)
        assert (await bounded(waiting)).status is S.RUNNING
        assert not other._watch.listening


async def test_a_direct_listen_dsn_with_a_pool_through_pgbouncer(
    bpool: asyncpg.Pool, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The recommended set-up: the pool through the pooler, LISTEN direct.
    # With polls far apart, only a NOTIFY (made by a tick through the
    # pooler) can wake the waiter.
    caplog.set_level(logging.WARNING, logger="squidmesh")
    async with (
        RunStore(bpool, workflows=WORKFLOWS, listen_dsn=dsn, poll_interval=3600) as waiting,
        RunStore(bpool, workflows=WORKFLOWS, listen_dsn=dsn) as writer,
    ):
        run = await writer.create_run(ETL_DAILY, {})
        wait = asyncio.create_task(waiting.wait_for(run.id))
        await bounded(_until(lambda: waiting._watch.listening))
        await bounded(waiting.wait_for(run.id, statuses="pending"))  # the first check is over
        await writer.transition_run(run.id, S.RUNNING)
        await writer.transition_run(run.id, S.COMPLETED)
        assert (await bounded(wait)).status is S.COMPLETED
    assert not [r for r in caplog.records if r.name == "squidmesh"]


async def _until(done: Callable[[], bool]) -> None:
    while not done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


# -- detection: a pool with the statement cache on --------------------------------------


async def test_a_statement_cache_behind_pgbouncer_raises_pooler_misconfigured(
    plain_bouncer: PgBouncer, pgbouncer_binary: Binary
) -> None:
    # One client connection, asyncpg's default statement cache, and no
    # max_prepared_statements. A second connection pins the server
    # connection the client used last, so the client's next transaction
    # lands on another one, where its prepared statements do not exist.
    async with (
        pool_on(plain_bouncer.dsn, max_size=1) as pool,
        RunStore(pool, workflows=WORKFLOWS) as store,
    ):
        run = await store.create_run(ETL_DAILY, {})

        async def read() -> object:
            return await store.get_run(run.id)

        async def write() -> object:
            return await store.update_run(run.id, context={"n": 1})

        async def transaction() -> object:
            return await store.update_run_with(run.id, lambda r: {"context": {"n": 2}})

        for operation in (read, write, transaction):
            await operation()  # prepares its statements on one server connection
            blocker = await asyncpg.connect(plain_bouncer.dsn, statement_cache_size=0)
            try:
                async with blocker.transaction():
                    await blocker.execute("SELECT 1")
                    with pytest.raises(PoolerMisconfigured) as caught:
                        await bounded(operation())
            finally:
                await blocker.close()
            message = str(caught.value)
            assert "statement_cache_size=0" in message
            assert "PgBouncer >= 1.21" in message and "max_prepared_statements" in message
            assert "__asyncpg_stmt_" in caught.value.reason
            assert isinstance(
                caught.value.__cause__,
                (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError),
            ), (operation.__name__, pgbouncer_binary.version_text)


class _Raising:
    """An executor whose every call fails with one driver error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def is_in_transaction(self) -> bool:
        return False

    async def _fail(self, *_: object) -> Any:
        raise self.error

    fetchval = fetchrow = fetch = _fail


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InvalidSQLStatementNameError(
            'prepared statement "__asyncpg_stmt_3__" does not exist'
        ),
        asyncpg.DuplicatePreparedStatementError(
            'prepared statement "__asyncpg_stmt_3__" already exists'
        ),
        # Two processes' statements of the same name on one server connection.
        asyncpg.ProtocolViolationError(
            'bind message supplies 1 parameters, but prepared statement "__asyncpg_stmt_3__" '
            "requires 2"
        ),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_every_query_path_maps_the_poolers_errors(error: Exception) -> None:
    ex: Any = _Raising(error)
    for call in (q.value, q.row, q.rows, q.write_value, q.write_row, q.write_rows):
        with pytest.raises(PoolerMisconfigured) as caught:
            await call(ex, "SELECT 1")
        assert caught.value.__cause__ is error
        assert "__asyncpg_stmt_3__" in str(caught.value)


async def test_a_users_own_missing_statement_is_not_blamed_on_a_pooler() -> None:
    # EXECUTE of a statement the caller never prepared, without a pooler.
    error = asyncpg.InvalidSQLStatementNameError('prepared statement "mine" does not exist')
    ex: Any = _Raising(error)
    with pytest.raises(asyncpg.InvalidSQLStatementNameError):
        await q.value(ex, "EXECUTE mine")
    with pytest.raises(asyncpg.InvalidSQLStatementNameError):
        await q.write_value(ex, "EXECUTE mine")


# -- detection: a listen_dsn through PgBouncer --------------------------------------------


def _pooler_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "squidmesh" and "no notification arrives" in r.getMessage()
    ]


async def test_a_listen_dsn_through_pgbouncer_warns_once_and_polls(
    bpool: asyncpg.Pool, bouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="squidmesh")
    async with (
        RunStore(bpool, workflows=WORKFLOWS, listen_dsn=bouncer.dsn, poll_interval=0.05) as store,
        RunStore(bpool, workflows=WORKFLOWS) as writer,
    ):
        run = await writer.create_run(ETL_DAILY, {})
        wait = asyncio.create_task(store.wait_for(run.id))
        await bounded(_until(lambda: bool(_pooler_warnings(caplog))))
        await writer.transition_run(run.id, S.RUNNING)
        await writer.transition_run(run.id, S.COMPLETED)
        assert (await bounded(wait)).status is S.COMPLETED
        # For good: no LISTEN again, no second warning, and the waits polled.
        await asyncio.sleep(1.5)
        assert not store._watch.listening
        again = await writer.create_run(ETL_DAILY, {})
        wait = asyncio.create_task(store.wait_for(again.id, statuses="running"))
        await writer.transition_run(again.id, S.RUNNING)
        assert (await bounded(wait)).status is S.RUNNING
    (warning,) = _pooler_warnings(caplog)
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert "listen_dsn" in message and "listen=False" in message
    assert "transaction-mode pooler" in message
    assert not [r for r in caplog.records if r.name == "squidmesh" and r is not warning]


async def test_run_store_connect_to_pgbouncer_with_listen_on_warns_and_polls(
    bouncer: PgBouncer, variant: Variant, caplog: pytest.LogCaptureFixture
) -> None:
    # The user forgot listen=False.
    caplog.set_level(logging.WARNING, logger="squidmesh")
    async with (
        RunStore.connect(
            bouncer.dsn, workflows=WORKFLOWS, poll_interval=0.05, max_size=4, **variant.pool_options
        ) as store,
        RunStore.connect(
            bouncer.dsn, workflows=WORKFLOWS, listen=False, max_size=4, **variant.pool_options
        ) as writer,
    ):
        run = await writer.create_run(ETL_DAILY, {})
        wait = asyncio.create_task(store.wait_for(run.id))
        await bounded(_until(lambda: bool(_pooler_warnings(caplog))))
        await writer.transition_run(run.id, S.RUNNING)
        await writer.transition_run(run.id, S.COMPLETED)
        assert (await bounded(wait)).status is S.COMPLETED
    assert len(_pooler_warnings(caplog)) == 1
