"""squidmesh.migrate: idempotent, recorded, safe under concurrency, any connectable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import squidmesh
from squidmesh._sql import migrations
from squidmesh.testing import create_database, drop_database
from tests.integration.workflows import INVOICE_REMINDER

VERSIONS = [version for version, _ in migrations()]
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


async def test_template_is_fully_migrated_and_second_run_applies_nothing(
    pool: asyncpg.Pool,
) -> None:
    assert await _recorded(pool) == VERSIONS
    assert await squidmesh.migrate(pool) == []
    assert await squidmesh.migrate(pool) == []
    assert await _recorded(pool) == VERSIONS


async def test_fresh_database(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert not await _has_schema(conn)
        assert await squidmesh.migrate(conn) == VERSIONS
        assert await _recorded(conn) == VERSIONS
        applied_at = await conn.fetch("SELECT applied_at FROM squidmesh.schema_migrations")
        assert all(r["applied_at"] is not None for r in applied_at)
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'squidmesh'"
            )
        }
        assert {"runs", "step_runs", "step_attempts", "schema_migrations"} <= tables
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
        assert applied == VERSIONS  # each version applied by exactly one caller
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
        assert await squidmesh.migrate(pool) == VERSIONS
        assert await squidmesh.migrate(pool) == []
        assert await _recorded(pool) == VERSIONS
    finally:
        await pool.close()


async def test_accepts_a_pooled_connection(empty_dsn: str) -> None:
    pool = await asyncpg.create_pool(empty_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            assert await squidmesh.migrate(conn) == VERSIONS
            assert await squidmesh.migrate(conn) == []
            assert not conn.is_in_transaction()
    finally:
        await pool.close()


async def test_accepts_a_connection_inside_its_own_transaction(empty_dsn: str) -> None:
    # A caller may wrap migrate in its own transaction (savepoints nest).
    conn = await asyncpg.connect(empty_dsn)
    try:
        async with conn.transaction():
            assert await squidmesh.migrate(conn) == VERSIONS
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
