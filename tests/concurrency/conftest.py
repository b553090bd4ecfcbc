"""Concurrency tests: several connections on one real PostgreSQL database.

They reuse the fixtures of ``tests/conftest.py`` (``dsn``, ``pool``,
``store``, ``events``...), so no test sees another's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

# Every wait in these tests is bounded by this; a deadlock becomes a failure.
TIMEOUT_S = 30


@pytest.fixture
async def holder(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Connection A: takes the row lock. lock_timeout turns a deadlock into a failure."""
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": f"{TIMEOUT_S}s"})
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def monitor(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A separate connection that watches pg_stat_activity."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
