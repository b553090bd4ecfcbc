"""The README's API tour, the examples and the demo run as written on a real database."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _tour() -> str:
    text = README.read_text(encoding="utf-8")
    tour = text.split("## API tour", 1)[1]
    match = re.search(r"```python\n(.*?)```", tour, re.DOTALL)
    assert match, "README's API tour has no python block"
    return match.group(1)


def test_readme_tour_runs_as_written(dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "tour.py"
    script.write_text(_tour(), encoding="utf-8")
    env = {**os.environ, "SQUIDMESH_DSN": dsn}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_outbox_example_runs(dsn: str) -> None:
    example = README.parent / "examples" / "outbox.py"
    env = {**os.environ, "SQUIDMESH_DSN": dsn}
    result = subprocess.run(
        [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "left no job, no transition and no event" in result.stdout


def test_demo_tour_runs(dsn: str) -> None:
    env = {**os.environ, "SQUIDMESH_DSN": dsn}
    result = subprocess.run(
        [sys.executable, "-m", "squidmesh", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for expected in (
        "InvalidPayload: invalid payload: missing fields: invoice_id",
        "InvalidTransition: cannot move run from 'completed' to 'running'",
        "running -> cancelling",
        "replayed_from=",
        "audit: approved at 'approve' by dana@finance",
        "RunCreated x",
        "its transition log: new -> pending, pending -> running, running -> completed",
    ):
        assert expected in result.stdout
    assert "\033[" not in result.stdout  # not a terminal: no styling


async def test_readme_sql_for_migrations_applied_by_hand(pg_admin_dsn: str) -> None:
    """Apply the files by hand as the README says, record them with its SQL,
    and squidmesh.migrate() then only records checksums and runs the function
    files once more; after that it finds nothing to do."""
    import uuid

    import asyncpg

    import squidmesh
    from squidmesh._migrate import load_scripts
    from squidmesh._sql import sql_root
    from squidmesh.testing import create_database, drop_database

    text = README.read_text(encoding="utf-8").split("### Schema and migrations", 1)[1]
    match = re.search(r"```sql\n(.*?)```", text, re.DOTALL)
    assert match, "README's migrations section has no sql block"
    scripts = load_scripts(sql_root())
    assert all(m.transactional for m in scripts.migrations)
    name = f"r_{uuid.uuid4().hex}"
    dsn = await create_database(pg_admin_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            files = [m.sql for m in scripts.migrations] + [r.sql for r in scripts.repeatables]
            for sql in files:
                async with conn.transaction():
                    await conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
                    await conn.execute(sql)
            await conn.execute(match.group(1))
            assert await squidmesh.migrate(conn) == [r.name for r in scripts.repeatables]
            assert await squidmesh.migrate(conn) == []
            recorded = await conn.fetch("SELECT version, checksum FROM squidmesh.schema_migrations")
            assert {r["version"]: r["checksum"] for r in recorded} == {
                m.version: m.checksum for m in scripts.migrations
            }
        finally:
            await conn.close()
    finally:
        await drop_database(pg_admin_dsn, name)


def _blocks(heading: str) -> list[str]:
    section = README.read_text(encoding="utf-8").split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, f"README's section {heading!r} has no python block"
    return blocks


async def _run_block(code: str, store: Any, run: Any = None) -> None:
    import squidmesh

    body = "async def _block(store, squidmesh, run):\n" + "".join(
        f"    {line}\n" for line in code.splitlines()
    )
    namespace: dict[str, Any] = {}
    exec(compile(body, "README.md", "exec"), namespace)
    await namespace["_block"](store, squidmesh, run)


@pytest.mark.parametrize(
    "heading",
    [
        "Retries, concurrent edits and raw SQL",
        "Listing, paging and counting",
        "Retention, bulk cancel and stale runs",
    ],
)
async def test_readme_store_blocks_run(store: Any, heading: str) -> None:
    for i in range(3):
        await store.create_run("billing.invoice_reminder", {"account_id": f"a{i}"})
    for code in _blocks(heading):
        await _run_block(code, store)


async def test_readme_history_block_runs_on_a_running_run(store: Any) -> None:
    run = await store.create_run("billing.invoice_reminder", {"account_id": "a"})
    run = await store.transition_run(run.id, "running")
    (code,) = _blocks("History, pauses and approvals")
    await _run_block(code, store, run)
    full = await store.get_run(run.id, include_history=True)
    assert full.status == "paused"  # complete_manual_step leaves the run paused
    assert [e.type for e in full.audit_events] == ["paused", "approved"]


async def test_readme_testing_blocks_run_as_an_outside_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_admin_dsn: str
) -> None:
    conftest, tests = _blocks("Testing code that uses squidmesh")
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        addopts = -p no:cacheprovider
        """
    )
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_reminders=tests)
    monkeypatch.setenv("SQUIDMESH_TEST_DSN", pg_admin_dsn)
    result = await asyncio.to_thread(pytester.runpytest_subprocess, timeout=120)
    result.assert_outcomes(passed=1)


@pytest.mark.squidmesh_fresh_db  # the consumer's two tables
async def test_readme_reacting_blocks_run_in_order(store: Any) -> None:
    """The three blocks of the section share names (the second follows the
    run the first created), so they run as one body, in order."""
    for i in range(3):
        await store.create_run("billing.invoice_reminder", {"account_id": f"q{i}"})
    blocks = _blocks("Reacting to runs: waiting, the change feed, claiming")
    assert len(blocks) == 3
    await asyncio.wait_for(_run_block("\n".join(blocks), store), timeout=60)
    view = await store.pool.fetch("SELECT run_id, status FROM run_status_view")
    assert ("completed" in {r["status"] for r in view}) and len(view) >= 4
    saved = await store.pool.fetchval("SELECT position FROM feed_positions")
    assert isinstance(saved, str)
    assert await store.count_runs(workflow="billing.invoice_reminder", status="pending") == 0
    claimed = await store.list_runs(workflow="billing.invoice_reminder", status="completed")
    assert len(claimed) == 4
    assert all(r.context.get("reminded") for r in claimed if r.context.get("sent") is None)


async def test_readme_fastapi_block_serves_the_run_api(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from squidmesh._demo import invoice_reminder

    monkeypatch.setenv("SQUIDMESH_DSN", dsn)
    monkeypatch.setenv("SQUIDMESH_API_TOKEN", "t0ken")
    (code,) = _blocks("Serving runs over HTTP (FastAPI)")
    namespace: dict[str, Any] = {"invoice_reminder": invoice_reminder}
    exec(compile(code, "README.md", "exec"), namespace)
    app = namespace["app"]
    auth = {"Authorization": "Bearer t0ken"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = await client.post(
                "/api/workflows/billing.invoice_reminder/runs",
                json={"account_id": "a", "invoice_id": "i", "amount_cents": 1},
                headers={**auth, "Idempotency-Key": "k1"},
            )
            assert created.status_code == 201, created.text
            again = await client.post(
                "/api/workflows/billing.invoice_reminder/runs",
                json={"account_id": "a", "invoice_id": "i", "amount_cents": 1},
                headers={**auth, "Idempotency-Key": "k1"},
            )
            assert again.status_code == 200
            run_id = created.json()["id"]
            shown = await client.get(f"/api/runs/{run_id}", headers=auth)
            assert shown.status_code == 200 and shown.headers["etag"] == '"1"'
            assert (await client.get(f"/api/runs/{run_id}")).status_code == 401
            bad = await client.get(f"/api/runs/{run_id}", headers={"Authorization": "Bearer x"})
            assert bad.status_code == 401


async def test_readme_dispatch_blocks_run_as_written(store: Any) -> None:
    """Both blocks of the dispatch section, verbatim: the second block's
    finish_job then moves the job on under the run's lock."""
    from examples.outbox import SETUP, monthly_report

    store.register(monthly_report)
    await store.pool.execute(SETUP)
    first, second = _blocks("Changing a run and enqueueing its work in one transaction")
    code = f"{first}\n{second}\nreturn run, finish_job"
    body = "async def _block(store, monthly_report):\n" + "".join(
        f"    {line}\n" for line in code.splitlines()
    )
    namespace: dict[str, Any] = {}
    exec(compile(body, "README.md", "exec"), namespace)
    run, finish_job = await namespace["_block"](store, monthly_report)
    jobs = "SELECT id, step FROM outbox_example.jobs WHERE run_id = $1 ORDER BY id"
    (job,) = await store.pool.fetch(jobs, run.id)
    assert job["step"] == "build"
    await finish_job(store, job["id"], run.id)
    assert [r["step"] for r in await store.pool.fetch(jobs, run.id)] == ["email"]
    assert (await store.get_run(run.id)).current_step == "email"


# The sections whose python blocks the tests above run; a block anywhere else
# would be a block nobody runs.
_RUN_SECTIONS = {
    "API tour",
    "History, pauses and approvals",
    "Changing a run and enqueueing its work in one transaction",
    "Retries, concurrent edits and raw SQL",
    "Listing, paging and counting",
    "Retention, bulk cancel and stale runs",
    "Reacting to runs: waiting, the change feed, claiming",
    "Cron triggers and the scheduler",
    "Serving runs over HTTP (FastAPI)",
    "A dashboard in the browser",
    "Testing code that uses squidmesh",
}


def test_every_python_block_of_the_readme_is_in_a_section_a_test_runs() -> None:
    for section in README.read_text(encoding="utf-8").split("\n## ")[1:]:
        heading = section.split("\n", 1)[0].strip()
        if "```python" in section:
            assert heading in _RUN_SECTIONS, f"README section {heading!r} has a block no test runs"


async def test_readme_scheduler_block_runs(store: Any) -> None:
    """On a store of its own: the fixture's workflows have a cron trigger too."""
    from squidmesh import RunStore

    (code,) = _blocks("Cron triggers and the scheduler")
    await _run_block(code, RunStore(store.pool))
