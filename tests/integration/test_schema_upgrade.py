"""A database migrated by an earlier squidmesh upgrades in place to exactly the
schema a fresh ``migrate()`` builds.

Earlier releases kept ``squidmesh.schema_migrations (version, applied_at)``
with no checksum and had no function files. ``data/release_5351f03/`` holds
``sql/0001_initial.sql`` as released at commit 5351f03 (vendored, so that a
shallow clone runs this test too; a unit test keeps it byte-equal to
``sql/migrations/0001_initial.sql``). The schema is compared through the
catalog: tables, columns, types, defaults, constraints, indexes, triggers,
functions (``pg_get_functiondef``), types and privileges in schema squidmesh.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import MigrationError, RunStatus, RunStore
from squidmesh._migrate import load_scripts
from squidmesh._sql import sql_root
from squidmesh.testing import create_database, drop_database
from tests.integration.test_migrate import REPEATABLES, assert_query_functions_exist
from tests.integration.test_privileges import _as_role
from tests.integration.test_search_path import _EVIL_SCHEMA
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

RELEASE_5351F03 = Path(__file__).parent / "data" / "release_5351f03"
MIGRATIONS = Path(__file__).resolve().parents[2] / "sql" / "migrations"

# What squidmesh.migrate() ran per file before checksums (5351f03 did not pin
# search_path; b079d72 did, which changes nothing for these files).
_OLD_BOOKKEEPING = (
    "CREATE SCHEMA IF NOT EXISTS squidmesh;"
    "CREATE TABLE IF NOT EXISTS squidmesh.schema_migrations ("
    " version text PRIMARY KEY,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)

# Earlier states a database can be in: the files its squidmesh applied.
EARLIER = {
    "release-5351f03": [RELEASE_5351F03 / "0001_initial.sql"],
    "0002-before-checksums": [
        RELEASE_5351F03 / "0001_initial.sql",
        MIGRATIONS / "0002_hardening.sql",
    ],
}

_SNAPSHOT: dict[str, str] = {
    "schema": """
        SELECT pg_get_userbyid(nspowner), nspacl::text
          FROM pg_namespace WHERE nspname = 'squidmesh'""",
    "relations": """
        SELECT c.relname, c.relkind::text, c.relpersistence::text, c.relacl::text
          FROM pg_class c
         WHERE c.relnamespace = 'squidmesh'::regnamespace
         ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
               a.attgenerated::text, a.attcollation::regcollation::text
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'squidmesh'::regnamespace
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'squidmesh'::regnamespace
         ORDER BY 1, 2""",
    "indexes": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'squidmesh'::regnamespace
         ORDER BY 1""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'squidmesh'::regnamespace AND NOT t.tgisinternal
         ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text
          FROM pg_proc p WHERE p.pronamespace = 'squidmesh'::regnamespace
         ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype::text
          FROM pg_type t WHERE t.typnamespace = 'squidmesh'::regnamespace
         ORDER BY 1""",
    "bookkeeping": """
        SELECT 'migration', version, checksum FROM squidmesh.schema_migrations
        UNION ALL
        SELECT 'function file', name, checksum FROM squidmesh.schema_repeatables
         ORDER BY 1, 2""",
}


async def schema_snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in _SNAPSHOT.items()}


async def _old_migrate(conn: asyncpg.Connection, files: list[Path]) -> None:
    """Apply and record ``files`` the way squidmesh did before checksums."""
    for path in files:
        async with conn.transaction():
            await conn.execute(_OLD_BOOKKEEPING)
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute(
                "INSERT INTO squidmesh.schema_migrations (version) VALUES ($1)", path.stem
            )


Database = Callable[[], Awaitable[str]]


@pytest.fixture
async def new_database(pg_admin_dsn: str) -> AsyncIterator[Database]:
    """Make empty databases on demand; drop them all afterwards."""
    names: list[str] = []

    async def make() -> str:
        names.append(f"u_{uuid.uuid4().hex}")
        dsn: str = await create_database(pg_admin_dsn, names[-1])
        return dsn

    try:
        yield make
    finally:
        for name in names:
            await drop_database(pg_admin_dsn, name)


async def _fresh_snapshot(new_database: Database) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(await new_database())
    try:
        await squidmesh.migrate(conn)
        return await schema_snapshot(conn)
    finally:
        await conn.close()


@pytest.mark.parametrize("earlier", sorted(EARLIER))
async def test_an_earlier_database_upgrades_to_the_fresh_schema(
    earlier: str, new_database: Database
) -> None:
    files = EARLIER[earlier]
    dsn = await new_database()
    conn = await asyncpg.connect(dsn)
    try:
        await _old_migrate(conn, files)
        # A run written by the earlier release must survive and read back.
        run_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO squidmesh.runs (id, workflow, trigger, status, payload)"
            " VALUES ($1, $2, 'invoice_delivery', 'pending', '{\"account_id\": \"a\"}')",
            run_id,
            INVOICE_REMINDER.name,
        )
        applied = await squidmesh.migrate(conn)
        old = {p.stem for p in files}
        new = [m.version for m in load_scripts(sql_root()).migrations if m.version not in old]
        assert applied == new + REPEATABLES
        assert await schema_snapshot(conn) == await _fresh_snapshot(new_database)
        # Trust on first use: what the earlier release applied is recorded with
        # the checksum of the file as shipped now.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM squidmesh.schema_migrations WHERE checksum IS NULL"
            )
            == 0
        )
        assert await squidmesh.migrate(conn) == []
        await assert_query_functions_exist(conn)
    finally:
        await conn.close()

    async with RunStore.connect(dsn, workflows=WORKFLOWS, max_size=2) as store:
        assert (await store.get_run(run_id)).status is RunStatus.PENDING
        assert (await store.cancel_run(run_id)).status is RunStatus.CANCELLED
        moved = await store.create_run(INVOICE_REMINDER, {"account_id": "b"})
        assert (await store.transition_run(moved.id, "running")).version == 2


async def test_the_application_role_of_an_earlier_database_starts_after_the_upgrade(
    new_database: Database,
) -> None:
    """Its grants were made on the tables that existed (README: ON ALL TABLES);
    the upgrade gives it the same rights on the new bookkeeping table."""
    dsn = await new_database()
    role, password = f"app_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    owner = await asyncpg.connect(dsn)
    try:
        await _old_migrate(owner, EARLIER["0002-before-checksums"])
        await owner.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await owner.execute(f"GRANT USAGE ON SCHEMA squidmesh TO {role}")
        await owner.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA squidmesh TO {role}"
        )
        app_dsn = _as_role(dsn, role, password)
        # Before the owner upgrades: the role cannot add the checksum column.
        app = await asyncpg.connect(app_dsn)
        try:
            with pytest.raises(MigrationError, match="as a role that owns"):
                await squidmesh.migrate(app)
        finally:
            await app.close()

        await squidmesh.migrate(owner)
        async with RunStore.connect(app_dsn, workflows=WORKFLOWS, migrate=True) as store:
            assert await squidmesh.migrate(store.pool) == []
            run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
            assert (await store.cancel_run(run.id)).status is RunStatus.CANCELLED
    finally:
        await owner.execute(f"DROP OWNED BY {role}")
        await owner.execute(f"DROP ROLE {role}")
        await owner.close()


async def test_a_database_migrated_under_a_hostile_search_path_is_the_fresh_schema(
    new_database: Database,
) -> None:
    """Everything migrate() sends before pinning search_path is qualified, and
    the files run pinned: names shadowed in a schema searched first change nothing."""
    dsn = await new_database()
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(_EVIL_SCHEMA)
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "evil, pg_catalog"})
    try:
        assert await squidmesh.migrate(conn) != []
        assert await squidmesh.migrate(conn) == []
        assert await conn.fetchval("SHOW search_path") == "evil, pg_catalog"
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)
    try:
        assert await schema_snapshot(conn) == await _fresh_snapshot(new_database)
    finally:
        await conn.close()
