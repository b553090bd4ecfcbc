"""Apply the numbered ``sql/`` files that a database has not seen yet."""

from __future__ import annotations

from typing import Final, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ._errors import MigrationError
from ._sql import migrations

# Any fixed 64-bit key; it only has to be the same in every process.
_LOCK_KEY: Final = 0x5371_7569_644D_6573  # "SquidMes"

Connectable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy
Conn = asyncpg.Connection | PoolConnectionProxy

_APPLIED: Final = "SELECT version FROM squidmesh.schema_migrations"
_BOOKKEEPING: Final = (
    "CREATE SCHEMA IF NOT EXISTS squidmesh;"
    "CREATE TABLE IF NOT EXISTS squidmesh.schema_migrations ("
    " version pg_catalog.text PRIMARY KEY,"
    " applied_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now())"
)


async def migrate(pool_or_connection: Connectable) -> list[str]:
    """Apply every migration not applied yet; return the versions applied now.

    An up-to-date database costs one read of ``squidmesh.schema_migrations``
    and needs no DDL right, so an application role with only USAGE and DML
    may call it at start-up. Each pending file runs in its own READ COMMITTED
    transaction that first takes a transaction-level advisory lock and then
    re-reads what is applied, so concurrent deploys queue up and the second
    one finds nothing left to do, whatever the session's default isolation.
    The files run with ``search_path = pg_catalog, pg_temp``. Idempotent.

    Args:
        pool_or_connection: an ``asyncpg.Pool``, a ``Connection`` or a pooled
            connection.

    Raises:
        MigrationError: a migration is pending and the role may not apply it
            (the message names the missing privilege), or the bookkeeping
            table cannot be read.
    """
    if isinstance(pool_or_connection, asyncpg.Pool):
        async with pool_or_connection.acquire() as conn:
            return await _migrate(conn)
    return await _migrate(pool_or_connection)


async def _applied(conn: Conn) -> set[str]:
    try:
        rows = await conn.fetch(_APPLIED)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return set()
    except asyncpg.InsufficientPrivilegeError as exc:
        user = await conn.fetchval("SELECT current_user")
        raise MigrationError(
            None,
            f"role {user!r} cannot read squidmesh.schema_migrations ({exc}); "
            "grant it USAGE on schema squidmesh and SELECT on that table",
        ) from exc
    return {row[0] for row in rows}


async def _migrate(conn: Conn) -> list[str]:
    applied = await _applied(conn) if not conn.is_in_transaction() else set()
    pending = [(version, sql) for version, sql in migrations() if version not in applied]
    applied_now: list[str] = []
    # Inside a caller's transaction only a savepoint can be opened, which
    # cannot choose its isolation level.
    isolation: Literal["read_committed"] | None = (
        None if conn.is_in_transaction() else "read_committed"
    )
    for version, sql in pending:
        try:
            async with conn.transaction(isolation=isolation):
                await conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
                await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(_BOOKKEEPING)
                # A statement after the lock: at READ COMMITTED its snapshot
                # sees what a migrator we waited for committed.
                done = await conn.fetchval(
                    "SELECT 1 FROM squidmesh.schema_migrations"
                    " WHERE version OPERATOR(pg_catalog.=) $1",
                    version,
                )
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO squidmesh.schema_migrations (version) VALUES ($1)", version
                )
                applied_now.append(version)
        except asyncpg.InsufficientPrivilegeError as exc:
            user = await conn.fetchval("SELECT current_user")
            raise MigrationError(
                version,
                f"role {user!r} may not apply it: {exc}. Run squidmesh.migrate() "
                "(or `python -m squidmesh migrate`) once as a role that owns the "
                "database or schema squidmesh, then connect as this role",
            ) from exc
    return applied_now
