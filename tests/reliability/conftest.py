"""Fixtures for the reliability tests.

The database fixtures (``dsn``, ``pool``, ``store``, ``events``) come from
``tests/conftest.py``. This adds a store that also knows ``rel.values``, a
workflow whose optional payload fields take every JSON type, and ``tables``,
a snapshot of every row of the three tables, to prove that a refused call
left nothing behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import Field, Step, Trigger, Workflow
from tests.integration.workflows import WORKFLOWS

VALUES = Workflow(
    "rel.values",
    triggers=[
        Trigger(
            "any",
            payload=[
                Field("data", dict, required=False),
                Field("items", list, required=False),
                Field("num", float, required=False),
                Field("text", str, required=False),
            ],
        )
    ],
    steps=[Step("only")],
)

Snapshot = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


async def snapshot(pool: asyncpg.Pool) -> Snapshot:
    """Every row of runs, step_runs and step_attempts, as JSON text, in id order."""
    async with pool.acquire() as conn:
        parts = []
        for table in ("runs", "step_runs", "step_attempts"):
            rows = await conn.fetch(
                f"SELECT row_to_json(t)::text FROM squidmesh.{table} t ORDER BY t.id"
            )
            parts.append(tuple(r[0] for r in rows))
    return parts[0], parts[1], parts[2]


@pytest.fixture
async def rstore(pool: asyncpg.Pool, events: list[Any]) -> squidmesh.RunStore:
    """The shared workflows plus ``rel.values``."""
    return squidmesh.RunStore(pool, workflows=[*WORKFLOWS, VALUES], listeners=[events.append])


@pytest.fixture
def tables(pool: asyncpg.Pool) -> Callable[[], Awaitable[Snapshot]]:
    async def take() -> Snapshot:
        return await snapshot(pool)

    return take
