"""Each test gets its own freshly cloned, migrated database."""

import asyncpg

import squidmesh

PROBE = "provisioning_probe"


async def _probe_once(pool: asyncpg.Pool) -> str:
    """Assert the probe table is absent, create it, and return the database name."""
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT to_regclass($1)", f"public.{PROBE}") is None
        await conn.execute(f"CREATE TABLE public.{PROBE} (id int)")
        name: str = await conn.fetchval("SELECT current_database()")
    return name


async def test_first_database_is_fresh(pool: asyncpg.Pool) -> None:
    name = await _probe_once(pool)
    assert name.startswith("t_")


async def test_second_database_is_fresh(pool: asyncpg.Pool) -> None:
    # Whichever of the two runs second would fail here if databases were shared.
    name = await _probe_once(pool)
    assert name.startswith("t_")


async def test_schema_is_migrated(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'squidmesh')"
        )
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'squidmesh'"
        )
    assert {"runs", "step_runs", "step_attempts"} <= {r["table_name"] for r in tables}


async def test_dsn_is_not_the_admin_database(dsn: str, pg_admin_dsn: str) -> None:
    assert dsn != pg_admin_dsn
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == dsn.rsplit("/", 1)[-1]
    finally:
        await conn.close()


async def test_store_uses_the_test_pool_and_workflows(
    store: squidmesh.RunStore, pool: asyncpg.Pool, events: list[object]
) -> None:
    assert store.pool is pool
    assert set(store.workflows) == {"billing.invoice_reminder", "etl.daily"}
    assert events == []
