"""Database fixtures shared by ``tests/integration`` and ``tests/concurrency``.

- ``pg_admin_dsn`` (session, sync): a server from :func:`squidmesh.testing.provide_dsn`
  (``SQUIDMESH_TEST_DSN``, Docker with ``SQUIDMESH_TEST_BACKEND=docker``, or an
  embedded PostgreSQL removed at the end of the session).
- ``template_db`` (session, sync): the name of a database migrated once with
  ``squidmesh.migrate``; set up through ``asyncio.run`` so it stays clear of
  pytest-asyncio's loop scopes.
- ``dsn`` (function): a fresh database ``t_<uuid hex>`` cloned from the
  template, dropped ``WITH (FORCE)`` afterwards.
- ``pool`` (function, async): a plain ``asyncpg.create_pool(dsn)``, as a user
  would make it, with no squidmesh setup.
- ``events`` (function): a list every store event is appended to.
- ``store`` (function, async): ``RunStore(pool, workflows=WORKFLOWS,
  listeners=[events.append])``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh.testing import create_database, drop_database, provide_dsn
from tests.integration.workflows import WORKFLOWS


def _template_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"squidmesh_template_{worker}" if worker else "squidmesh_template"


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    with provide_dsn("SQUIDMESH_TEST_DSN") as admin_dsn:
        yield admin_dsn


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    name = _template_name()

    async def setup() -> None:
        await drop_database(pg_admin_dsn, name)
        template_dsn = await create_database(pg_admin_dsn, name)
        conn = await asyncpg.connect(template_dsn)
        try:
            await squidmesh.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name
    asyncio.run(drop_database(pg_admin_dsn, name))


@pytest.fixture
def dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex}"
    test_dsn = asyncio.run(create_database(pg_admin_dsn, name, template=template_db))
    try:
        yield test_dsn
    finally:
        asyncio.run(drop_database(pg_admin_dsn, name))


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    db_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=16)
    try:
        yield db_pool
    finally:
        try:
            await asyncio.wait_for(db_pool.close(), timeout=10)
        except TimeoutError:
            db_pool.terminate()


@pytest.fixture
def events() -> list[Any]:
    return []


@pytest.fixture
async def store(pool: asyncpg.Pool, events: list[Any]) -> squidmesh.RunStore:
    return squidmesh.RunStore(pool, workflows=WORKFLOWS, listeners=[events.append])
