"""Apply the numbered ``sql/`` files that a database has not seen yet."""

from __future__ import annotations

from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ._sql import migrations

# Any fixed 64-bit key; it only has to be the same in every process.
_LOCK_KEY: Final = 0x5371_7569_644D_6573  # "SquidMes"

Connectable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


async def migrate(pool_or_connection: Connectable) -> list[str]:
    """Apply every migration not applied yet; return the versions applied now.

    Each file runs in its own transaction that first takes a transaction-level
    advisory lock, so concurrent deploys queue up and the second one finds
    nothing left to do. Applied versions are recorded in
    ``squidmesh.schema_migrations``. Idempotent.

    Args:
        pool_or_connection: an ``asyncpg.Pool``, a ``Connection`` or a pooled
            connection.
    """
    if isinstance(pool_or_connection, asyncpg.Pool):
        async with pool_or_connection.acquire() as conn:
            return await _migrate(conn)
    return await _migrate(pool_or_connection)


async def _migrate(conn: asyncpg.Connection | PoolConnectionProxy) -> list[str]:
    applied_now: list[str] = []
    for version, sql in migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS squidmesh;"
                "CREATE TABLE IF NOT EXISTS squidmesh.schema_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = await conn.fetchval(
                "SELECT 1 FROM squidmesh.schema_migrations WHERE version = $1", version
            )
            if done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO squidmesh.schema_migrations (version) VALUES ($1)", version
            )
            applied_now.append(version)
    return applied_now
