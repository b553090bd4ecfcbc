"""An application role with only USAGE and DML rights can start against an
up-to-date database; a pending migration without DDL rights is a clear error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

import squidmesh
from squidmesh import MigrationError, RunStore
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

# Grants, revokes and a changed schema_migrations: a database of their own.
pytestmark = pytest.mark.squidmesh_fresh_db


def _as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    netloc = f"{quote(role)}:{quote(password)}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def app_dsn(dsn: str) -> AsyncIterator[str]:
    """A login role with USAGE on schema squidmesh and DML on its tables, nothing more."""
    role, password = f"app_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    admin = await asyncpg.connect(dsn)
    try:
        db = await admin.fetchval("SELECT current_database()")
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f'REVOKE CREATE ON DATABASE "{db}" FROM PUBLIC')
        await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await admin.execute(f"GRANT USAGE ON SCHEMA squidmesh TO {role}")
        await admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA squidmesh TO {role}"
        )
        app = _as_role(dsn, role, password)
        try:
            await (await asyncpg.connect(app)).close()
        except (asyncpg.InvalidAuthorizationSpecificationError, OSError) as exc:
            pytest.skip(f"this server does not let a new role log in from here: {exc}")
        yield app
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_connect_with_migrate_on_an_up_to_date_database_needs_no_ddl(app_dsn: str) -> None:
    async with RunStore.connect(app_dsn, workflows=WORKFLOWS, migrate=True) as store:
        run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
        assert (await store.get_run(run.id)).id == run.id
        assert await squidmesh.migrate(store.pool) == []


async def test_a_pending_migration_without_ddl_rights_names_what_is_missing(
    dsn: str, app_dsn: str
) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        last = await admin.fetchval("SELECT max(version) FROM squidmesh.schema_migrations")
        await admin.execute("DELETE FROM squidmesh.schema_migrations WHERE version = $1", last)
        before = await admin.fetchval(
            "SELECT pg_get_functiondef('squidmesh.cancel_run(uuid, jsonb)'::regprocedure)"
        )
        app = await asyncpg.connect(app_dsn)
        try:
            with pytest.raises(MigrationError) as caught:
                await squidmesh.migrate(app)
        finally:
            await app.close()
        assert caught.value.version == last
        message = str(caught.value)
        assert last in message and "app_" in message
        # PostgreSQL's own words for the missing right, whichever the file needs first.
        assert "permission denied" in message or "must be owner" in message
        assert "as a role that owns" in message
        # Nothing of the failed migration stays behind.
        assert (
            await admin.fetchval(
                "SELECT count(*) FROM squidmesh.schema_migrations WHERE version = $1", last
            )
            == 0
        )
        after = await admin.fetchval(
            "SELECT pg_get_functiondef('squidmesh.cancel_run(uuid, jsonb)'::regprocedure)"
        )
        assert after == before
    finally:
        await admin.close()


async def test_a_role_that_cannot_read_the_bookkeeping_table_is_told_what_to_grant(
    dsn: str, app_dsn: str
) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        role = urlsplit(app_dsn).username
        await admin.execute(f"REVOKE SELECT ON squidmesh.schema_migrations FROM {role}")
    finally:
        await admin.close()
    app = await asyncpg.connect(app_dsn)
    try:
        with pytest.raises(MigrationError, match="grant it USAGE on schema squidmesh and SELECT"):
            await squidmesh.migrate(app)
    finally:
        await app.close()
