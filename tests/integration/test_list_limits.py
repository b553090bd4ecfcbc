"""list_runs at the edges: limits past bigint, and results past 1 GB."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from squidmesh import RunStore
from tests.integration.workflows import INVOICE_REMINDER

PAYLOAD = {"account_id": "acct_1"}


async def test_a_limit_past_bigint_means_no_limit(store: RunStore) -> None:
    runs = [await store.create_run(INVOICE_REMINDER, PAYLOAD) for _ in range(3)]
    newest_first = [r.id for r in reversed(runs)]
    for limit in (2**63 - 1, 2**63, 2**64, 10**30):
        assert [r.id for r in await store.list_runs(limit=limit)] == newest_first[: min(limit, 3)]
        listed = await store.list_runs(
            workflow=INVOICE_REMINDER.name, status="pending", limit=limit
        )
        assert [r.id for r in listed] == newest_first


@pytest.mark.slow
async def test_a_list_larger_than_one_value_can_hold_comes_back(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    # PostgreSQL caps one value at 1 GB; five runs of 220 MB each exceed it
    # together. Written server-side: the client never builds them.
    size = 220 * 1024 * 1024
    ids = [uuid.UUID(int=i + 1) for i in range(5)]
    for i, run_id in enumerate(ids):
        await pool.execute(
            "INSERT INTO squidmesh.runs (id, workflow, trigger, status, payload, inserted_at)"
            " VALUES ($1, $2, 'invoice_delivery', 'pending',"
            " jsonb_build_object('blob', repeat('x', $3)), now() + $4 * interval '1 second')",
            run_id,
            INVOICE_REMINDER.name,
            size,
            i,
        )
    runs = await store.list_runs()
    assert [r.id for r in runs] == list(reversed(ids))
    assert all(len(r.payload["blob"]) == size for r in runs)
