"""squidmesh.migrate: idempotent, recorded, safe under concurrency, any connectable;
checksums, repeatable function files and no-transaction migrations (on throwaway
SQL directories, against the real server)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

import squidmesh
from squidmesh import MigrationError
from squidmesh._migrate import (
    _LOCK_KEY,
    _TRY_LOCK,
    _UNLOCK,
    _UNLOCK_IF_HELD,
    NO_TRANSACTION,
    checksum,
    load_scripts,
    run_migrations,
)
from squidmesh._sql import migrations, sql_root
from squidmesh.testing import create_database, drop_database
from tests.integration.workflows import INVOICE_REMINDER

VERSIONS = [version for version, _ in migrations()]
REPEATABLES = [r.name for r in load_scripts(sql_root()).repeatables]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A brand-new database with no squidmesh schema at all."""
    name = f"e_{uuid.uuid4().hex}"
    dsn = await create_database(pg_admin_dsn, name)
    try:
        yield dsn
    finally:
        await drop_database(pg_admin_dsn, name)


async def _recorded(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    rows = await conn.fetch("SELECT version FROM squidmesh.schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


async def _checksums(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, str | None]:
    rows = await conn.fetch("SELECT version, checksum FROM squidmesh.schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def _repeatable_checksums(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, str]:
    rows = await conn.fetch("SELECT name, checksum FROM squidmesh.schema_repeatables")
    return {r["name"]: r["checksum"] for r in rows}


async def _has_schema(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'squidmesh')"
        )
    )


async def _assert_usable(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store = squidmesh.RunStore(pool, workflows=[INVOICE_REMINDER])
        run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
        assert (await store.get_run(run.id)).id == run.id
    finally:
        await pool.close()


def test_there_is_at_least_one_migration() -> None:
    assert VERSIONS
    assert VERSIONS == sorted(VERSIONS)
    assert REPEATABLES == sorted(REPEATABLES)


async def test_template_is_fully_migrated_and_second_run_applies_nothing(
    pool: asyncpg.Pool,
) -> None:
    assert await _recorded(pool) == VERSIONS
    assert await squidmesh.migrate(pool) == []
    assert await squidmesh.migrate(pool) == []
    assert await _recorded(pool) == VERSIONS


async def test_an_up_to_date_database_is_only_read(dsn: str) -> None:
    # Any write or DDL would fail in a read-only transaction.
    conn = await asyncpg.connect(dsn, server_settings={"default_transaction_read_only": "on"})
    try:
        assert await squidmesh.migrate(conn) == []
        assert await _advisory_locks(conn) == 0  # not even the migrate lock was taken
    finally:
        await conn.close()


async def test_fresh_database(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert not await _has_schema(conn)
        assert await squidmesh.migrate(conn) == VERSIONS + REPEATABLES
        assert await _recorded(conn) == VERSIONS
        applied_at = await conn.fetch("SELECT applied_at FROM squidmesh.schema_migrations")
        assert all(r["applied_at"] is not None for r in applied_at)
        scripts = load_scripts(sql_root())
        assert await _checksums(conn) == {m.version: m.checksum for m in scripts.migrations}
        assert await _repeatable_checksums(conn) == {
            r.name: r.checksum for r in scripts.repeatables
        }
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'squidmesh'"
            )
        }
        assert {
            "runs",
            "step_runs",
            "step_attempts",
            "schema_migrations",
            "schema_repeatables",
        } <= tables
        # Nothing lands outside the squidmesh schema.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            == 0
        )
        assert await squidmesh.migrate(conn) == []
        assert await _recorded(conn) == VERSIONS
    finally:
        await conn.close()
    await _assert_usable(empty_dsn)


async def test_five_concurrent_migrations_on_an_empty_database(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(5)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(squidmesh.migrate(c) for c in conns)), timeout=60
        )
        applied = sorted(v for result in results for v in result)
        # Each file applied by exactly one caller.
        assert applied == sorted(VERSIONS + REPEATABLES)
        assert await _recorded(conns[0]) == VERSIONS
        assert await conns[0].fetchval("SELECT count(*) FROM squidmesh.schema_migrations") == len(
            VERSIONS
        )
        for conn in conns:  # no caller left a transaction open
            assert not conn.is_in_transaction()
    finally:
        for conn in conns:
            await conn.close()
    await _assert_usable(empty_dsn)


async def test_accepts_a_pool(empty_dsn: str) -> None:
    pool = await asyncpg.create_pool(empty_dsn, min_size=1, max_size=2)
    try:
        assert await squidmesh.migrate(pool) == VERSIONS + REPEATABLES
        assert await squidmesh.migrate(pool) == []
        assert await _recorded(pool) == VERSIONS
    finally:
        await pool.close()


async def test_accepts_a_pooled_connection(empty_dsn: str) -> None:
    pool = await asyncpg.create_pool(empty_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            assert await squidmesh.migrate(conn) == VERSIONS + REPEATABLES
            assert await squidmesh.migrate(conn) == []
            assert not conn.is_in_transaction()
    finally:
        await pool.close()


async def test_accepts_a_connection_inside_its_own_transaction(empty_dsn: str) -> None:
    # A caller may wrap migrate in its own transaction (savepoints nest).
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute("SET search_path = public, pg_catalog")
        async with conn.transaction():
            assert await squidmesh.migrate(conn) == VERSIONS + REPEATABLES
            # The files ran with a pinned search_path; the caller keeps its own.
            assert await conn.fetchval("SHOW search_path") == "public, pg_catalog"
            assert await squidmesh.migrate(conn) == []
        assert await _recorded(conn) == VERSIONS
    finally:
        await conn.close()


async def test_connect_with_migrate(empty_dsn: str) -> None:
    async with squidmesh.RunStore.connect(
        empty_dsn, workflows=[INVOICE_REMINDER], migrate=True, max_size=2
    ) as store:
        run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
        assert (await store.get_run(run.id)).status is squidmesh.RunStatus.PENDING
        assert await _recorded(store.pool) == VERSIONS


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SQUIDMESH_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "squidmesh", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )


async def test_cli_migrate(empty_dsn: str) -> None:
    first = await asyncio.to_thread(_cli, "migrate", "--dsn", empty_dsn)
    assert first.returncode == 0, first.stderr
    for version in VERSIONS:
        assert version in first.stdout
    second = await asyncio.to_thread(_cli, "migrate", "--dsn", empty_dsn)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await _recorded(conn) == VERSIONS
    finally:
        await conn.close()


async def test_cli_migrate_in_three_processes_at_once(empty_dsn: str) -> None:
    results = await asyncio.gather(
        *(asyncio.to_thread(_cli, "migrate", "--dsn", empty_dsn) for _ in range(3))
    )
    for result in results:
        assert result.returncode == 0, result.stderr
    assert sum("applied:" in r.stdout for r in results) == 1
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await _recorded(conn) == VERSIONS
    finally:
        await conn.close()


def test_cli_migrate_without_dsn_is_a_usage_error() -> None:
    result = _cli("migrate")
    assert result.returncode == 2
    assert "dsn" in result.stderr.lower()


# -- functions the queries call --------------------------------------------------


def referenced_functions() -> set[str]:
    """Every squidmesh.<name>( in sql/queries/, minus the tables (INSERT INTO t (...))."""
    names: set[str] = set()
    for path in sorted((REPO / "sql" / "queries").glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        names |= set(re.findall(r"\bsquidmesh\.(\w+)\s*\(", text))
    return names


async def assert_query_functions_exist(conn: asyncpg.Connection | asyncpg.Pool) -> None:
    tables = {
        r[0]
        for r in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'squidmesh'::regnamespace"
        )
    }
    functions = {
        r[0]
        for r in await conn.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'squidmesh'::regnamespace"
        )
    }
    wanted = referenced_functions() - tables
    assert {"read_changes", "cancel_run_v2"} <= wanted  # the scan finds calls at all
    assert wanted <= functions, f"missing: {sorted(wanted - functions)}"


async def test_every_function_the_queries_call_exists_after_migrate(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await squidmesh.migrate(conn)
        await assert_query_functions_exist(conn)
    finally:
        await conn.close()


# -- throwaway SQL directories --------------------------------------------------------

ITEMS = """CREATE SCHEMA scratch;
CREATE TABLE scratch.items (id integer PRIMARY KEY, label text NOT NULL);
INSERT INTO scratch.items SELECT g, 'label ' || (g % 10) FROM generate_series(1, 200) g;
"""

# The shape README and squidmesh/_migrate.py ask for: drop what a failed run
# may have left (an INVALID index), then build without blocking writes.
LABEL_KEY = f"""{NO_TRANSACTION}
-- A unique index on a table too big to lock for the length of a build.
DROP INDEX CONCURRENTLY IF EXISTS scratch.items_label_key;
CREATE UNIQUE INDEX CONCURRENTLY items_label_key ON scratch.items (label);
"""

LABEL_IDX = f"""{NO_TRANSACTION}
DROP INDEX CONCURRENTLY IF EXISTS scratch.items_label_idx;
CREATE INDEX CONCURRENTLY items_label_idx ON scratch.items (label);
"""


def sql_dir(root: Path, files: dict[str, str]) -> Path:
    """A SQL directory like sql/: ``files`` maps paths under it to their text."""
    (root / "migrations").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def f_returning(value: str, type_: str = "integer") -> str:
    return (
        f"CREATE OR REPLACE FUNCTION scratch.f() RETURNS {type_}\n"
        f"    LANGUAGE sql IMMUTABLE RETURN {value};\n"
    )


@pytest.fixture
async def conn(empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def _advisory_locks(conn: asyncpg.Connection) -> int:
    """Advisory locks this session holds."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        or 0
    )


async def _index_valid(conn: asyncpg.Connection, name: str) -> bool | None:
    value = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = $1",
        name,
    )
    return None if value is None else bool(value)


async def test_an_applied_migration_that_changed_is_refused_naming_its_file(
    conn: asyncpg.Connection, empty_dsn: str, tmp_path: Path
) -> None:
    root = sql_dir(tmp_path, {"migrations/0001_items.sql": ITEMS})
    assert await run_migrations(conn, root) == ["0001_items"]
    (root / "migrations" / "0001_items.sql").write_text(
        ITEMS + "CREATE INDEX items_label_idx ON scratch.items (label);\n", encoding="utf-8"
    )
    # Found by the read alone: a read-only session gets the same answer.
    reader = await asyncpg.connect(
        empty_dsn, server_settings={"default_transaction_read_only": "on"}
    )
    try:
        with pytest.raises(MigrationError) as caught:
            await run_migrations(reader, root)
    finally:
        await reader.close()
    assert caught.value.version == "0001_items"
    assert "sql/migrations/0001_items.sql" in str(caught.value)
    assert "new numbered migration" in str(caught.value)
    # A file that only gained CRLF line endings is the same file.
    (root / "migrations" / "0001_items.sql").write_bytes(ITEMS.replace("\n", "\r\n").encode())
    assert await run_migrations(conn, root) == []


async def test_a_function_file_runs_again_when_it_changes(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    root = sql_dir(
        tmp_path,
        {"migrations/0001_items.sql": ITEMS, "functions/f.sql": f_returning("1")},
    )
    assert await run_migrations(conn, root) == ["0001_items", "functions/f"]
    assert await conn.fetchval("SELECT scratch.f()") == 1
    assert await run_migrations(conn, root) == []
    (root / "functions" / "f.sql").write_text(f_returning("2"), encoding="utf-8")
    assert await run_migrations(conn, root) == ["functions/f"]
    assert await conn.fetchval("SELECT scratch.f()") == 2
    assert await _repeatable_checksums(conn) == {"functions/f": checksum(f_returning("2"))}
    assert await run_migrations(conn, root) == []


async def test_a_function_file_that_changes_a_return_type_is_refused_with_advice(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    root = sql_dir(
        tmp_path,
        {
            "migrations/0001_items.sql": ITEMS,
            "functions/f.sql": f_returning("1"),
            "functions/g.sql": f_returning("1").replace("scratch.f()", "scratch.g()"),
        },
    )
    await run_migrations(conn, root)
    (root / "functions" / "f.sql").write_text(f_returning("'one'", "text"), encoding="utf-8")
    (root / "functions" / "g.sql").write_text(
        f_returning("2").replace("scratch.f()", "scratch.g()"), encoding="utf-8"
    )
    with pytest.raises(MigrationError) as caught:
        await run_migrations(conn, root)
    assert caught.value.version == "functions/f"
    assert "sql/functions/f.sql" in str(caught.value) and "new name" in str(caught.value)
    # The function files change together or not at all.
    assert await conn.fetchval("SELECT scratch.f()") == 1
    assert await conn.fetchval("SELECT scratch.g()") == 1
    assert await _repeatable_checksums(conn) == {
        "functions/f": checksum(f_returning("1")),
        "functions/g": checksum(f_returning("1").replace("scratch.f()", "scratch.g()")),
    }


async def test_a_database_newer_than_the_code_keeps_its_function_bodies(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    newer = sql_dir(
        tmp_path / "newer",
        {
            "migrations/0001_items.sql": ITEMS,
            "migrations/0002_items_label_idx.sql": LABEL_IDX,
            "functions/f.sql": f_returning("2"),
        },
    )
    older = sql_dir(
        tmp_path / "older",
        {"migrations/0001_items.sql": ITEMS, "functions/f.sql": f_returning("1")},
    )
    await run_migrations(conn, newer)
    # An instance of the previous release starting during a rolling deploy.
    assert await run_migrations(conn, older) == []
    assert await conn.fetchval("SELECT scratch.f()") == 2


async def test_a_no_transaction_migration_builds_its_index_concurrently(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    root = sql_dir(
        tmp_path,
        {"migrations/0001_items.sql": ITEMS, "migrations/0002_items_label_idx.sql": LABEL_IDX},
    )
    await conn.execute("SET search_path = public")
    assert await run_migrations(conn, root) == ["0001_items", "0002_items_label_idx"]
    assert await _index_valid(conn, "items_label_idx") is True
    assert await _checksums(conn) == {
        "0001_items": checksum(ITEMS),
        "0002_items_label_idx": checksum(LABEL_IDX),
    }
    # The session lock is released and the session's search_path is its own again.
    assert await _advisory_locks(conn) == 0
    assert await conn.fetchval("SHOW search_path") == "public"
    assert not conn.is_in_transaction()
    assert await run_migrations(conn, root) == []


async def test_a_failed_concurrent_index_is_left_invalid_and_the_file_runs_again(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    root = sql_dir(
        tmp_path,
        {"migrations/0001_items.sql": ITEMS, "migrations/0002_items_label_key.sql": LABEL_KEY},
    )
    await conn.execute("SET search_path = public")
    # The labels repeat, so the unique index cannot be built.
    with pytest.raises(MigrationError) as caught:
        await run_migrations(conn, root)
    assert caught.value.version == "0002_items_label_key"
    message = str(caught.value)
    assert "UniqueViolationError" in message and "INVALID" in message
    assert "1 statement(s) before the failing one (of 2)" in message
    assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)
    # What PostgreSQL leaves behind: an invalid index, and the migration unrecorded.
    assert await _index_valid(conn, "items_label_key") is False
    assert await _recorded(conn) == ["0001_items"]
    assert await _advisory_locks(conn) == 0
    assert await conn.fetchval("SHOW search_path") == "public"

    await conn.execute("DELETE FROM scratch.items WHERE id > 10")
    assert await run_migrations(conn, root) == ["0002_items_label_key"]
    assert await _index_valid(conn, "items_label_key") is True
    assert await _recorded(conn) == ["0001_items", "0002_items_label_key"]


async def test_a_no_transaction_migration_is_refused_inside_the_callers_transaction(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    root = sql_dir(
        tmp_path,
        {"migrations/0001_items.sql": ITEMS, "migrations/0002_items_label_idx.sql": LABEL_IDX},
    )
    async with conn.transaction():
        with pytest.raises(MigrationError, match="outside a transaction") as caught:
            await run_migrations(conn, root)
        assert caught.value.version == "0002_items_label_idx"
        assert await conn.fetchval("SELECT 1") == 1  # the caller's transaction is usable
    assert not await _has_schema(conn)  # refused before anything ran


async def _wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (bounded)."""
    async with asyncio.timeout(20):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def test_a_waiting_migrator_does_not_stall_a_concurrent_index_build(
    empty_dsn: str, tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every snapshot older than its own.
    A migrator blocked on the advisory lock inside a statement would hold one
    while waiting for the builder's lock: a deadlock that PostgreSQL breaks by
    failing the build. Waiting by polling holds none."""
    first = sql_dir(tmp_path / "first", {"migrations/0001_items.sql": ITEMS})
    root = sql_dir(
        tmp_path / "second",
        {"migrations/0001_items.sql": ITEMS, "migrations/0002_items_label_idx.sql": LABEL_IDX},
    )
    builder, waiter, blocker, observer = [await asyncpg.connect(empty_dsn) for _ in range(4)]
    try:
        await run_migrations(builder, first)
        # A writer's open transaction: the build waits for it while holding the lock.
        writer = blocker.transaction()
        await writer.start()
        await blocker.execute("LOCK TABLE scratch.items IN ROW EXCLUSIVE MODE")
        build = asyncio.create_task(run_migrations(builder, root))

        async def builder_waits() -> bool:
            return bool(
                await observer.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                    builder.get_server_pid(),
                )
            )

        await _wait_until(builder_waits)
        wait = asyncio.create_task(run_migrations(waiter, root))

        async def waiter_waits() -> bool:
            # Blocked on the advisory lock, or between two attempts to take it.
            return bool(
                await observer.fetchval(
                    "SELECT wait_event = 'advisory' OR query LIKE '%pg_try_advisory_lock%'"
                    " FROM pg_stat_activity WHERE pid = $1",
                    waiter.get_server_pid(),
                )
            )

        await _wait_until(waiter_waits)
        await writer.rollback()  # the build goes on, and waits for older snapshots
        assert await asyncio.wait_for(build, timeout=30) == ["0002_items_label_idx"]
        assert await asyncio.wait_for(wait, timeout=30) == []
        assert await _index_valid(observer, "items_label_idx") is True
    finally:
        for c in (builder, waiter, blocker, observer):
            await c.close()


async def test_a_cancelled_waiting_migrator_leaves_no_lock_behind(empty_dsn: str) -> None:
    holder, waiter = [await asyncpg.connect(empty_dsn) for _ in range(2)]
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        task = asyncio.create_task(squidmesh.migrate(waiter))

        async def waiter_polls() -> bool:
            query = await holder.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1", waiter.get_server_pid()
            )
            return "pg_try_advisory_lock" in (query or "")

        await _wait_until(waiter_polls)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _advisory_locks(waiter) == 0
        assert not await _has_schema(waiter)

        # The unlock used when an attempt may have been in flight: it releases a
        # lock the session holds and, holding none, sends no WARNING.
        messages: list[object] = []
        waiter.add_log_listener(lambda _conn, message: messages.append(message))
        await holder.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        assert await waiter.fetchval(_TRY_LOCK, _LOCK_KEY)
        key_parts = (_LOCK_KEY, _LOCK_KEY >> 32, _LOCK_KEY & 0xFFFFFFFF)
        await waiter.execute(_UNLOCK_IF_HELD, *key_parts)
        assert await _advisory_locks(waiter) == 0
        await waiter.execute(_UNLOCK_IF_HELD, *key_parts)
        await waiter.fetchval("SELECT 1")  # the log listener runs via call_soon
        assert messages == []
        await waiter.execute(_UNLOCK, _LOCK_KEY)  # the plain unlock would have warned
        await waiter.fetchval("SELECT 1")
        assert len(messages) == 1
    finally:
        for c in (holder, waiter):
            await c.close()
