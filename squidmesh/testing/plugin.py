"""The squidmesh pytest plugin: a migrated, isolated database for every test.

Loaded through the ``pytest11`` entry point ``squidmesh`` wherever squidmesh
is installed (``-p no:squidmesh`` turns it off). The fixtures are described
in :mod:`squidmesh.testing`. The database work runs in a thread of its own
(``_databases``), so the fixtures here hold no event loop except the one
pytest-asyncio gives the two async ones.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final, TypeVar, cast

import asyncpg
import pytest

from squidmesh import RunStore, Workflow

from ._databases import TestDatabases
from ._server import provide_dsn

F = TypeVar("F", bound=Callable[..., Any])

#: Gives a test a database of its own instead of the shared one.
FRESH_DB_MARKER: Final = "squidmesh_fresh_db"

_DATABASES = pytest.StashKey[TestDatabases]()
_POOL_CLOSE_TIMEOUT_S: Final = 10.0


def _async_fixture(func: F) -> F:
    """``pytest_asyncio.fixture``; without pytest-asyncio, a fixture saying what is missing.

    The plugin loads wherever squidmesh and pytest are installed together,
    so it must not break a pytest run that has no pytest-asyncio: only the
    async fixtures fail, and only when a test asks for them.
    """
    try:
        import pytest_asyncio
    except ImportError:

        @functools.wraps(func)
        def missing(*args: Any, **kwargs: Any) -> Any:
            raise pytest.UsageError(
                f"{func.__name__} needs pytest-asyncio: pip install 'squidmesh[testing]'"
            )

        return cast(F, pytest.fixture(missing))
    return cast(F, pytest_asyncio.fixture(func))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{FRESH_DB_MARKER}: give this test a migrated database of its own, cloned from the "
        "template and dropped afterwards, instead of the shared one (for tests that change "
        "more than its reset undoes: grants, squidmesh's own tables, functions or recorded "
        "migrations)",
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    databases = config.stash.get(_DATABASES, None)
    if databases is None or not databases.rebuilt_after:
        return
    tests = databases.rebuilt_after
    terminalreporter.section("squidmesh")
    terminalreporter.line(
        f"{len(tests)} test(s) changed the shared test database in a way its reset does not "
        "undo (it empties tables, drops the tables and schemas a test created and resets "
        "database settings), so it was rebuilt from the template after each; mark them "
        f"@pytest.mark.{FRESH_DB_MARKER}:"
    )
    for nodeid in tests[:20]:
        terminalreporter.line(f"  {nodeid}")
    if len(tests) > 20:
        terminalreporter.line(f"  ... and {len(tests) - 20} more")


@pytest.fixture(scope="session")
def squidmesh_dsn() -> Iterator[str]:
    """The admin DSN of a server: ``$SQUIDMESH_TEST_DSN``, or an embedded one for the session."""
    with provide_dsn("SQUIDMESH_TEST_DSN") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def _squidmesh_databases(
    squidmesh_dsn: str, pytestconfig: pytest.Config
) -> Iterator[TestDatabases]:
    databases = TestDatabases(squidmesh_dsn).start()
    pytestconfig.stash[_DATABASES] = databases
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def squidmesh_db_dsn(
    request: pytest.FixtureRequest, _squidmesh_databases: TestDatabases
) -> Iterator[str]:
    """The DSN of a migrated database no other test sees, reset to the template's state."""
    if request.node.get_closest_marker(FRESH_DB_MARKER) is not None:
        with _squidmesh_databases.fresh() as dsn:
            yield dsn
    else:
        yield _squidmesh_databases.shared(request.node.nodeid)
        _squidmesh_databases.release()


@pytest.fixture
def squidmesh_workflows() -> Sequence[Workflow]:
    """The workflows ``squidmesh_store`` knows: none; override it in your conftest."""
    return ()


@pytest.fixture
def squidmesh_listeners() -> Sequence[Callable[[Any], object]]:
    """The listeners ``squidmesh_store`` calls: none; override it in your conftest."""
    return ()


@_async_fixture
async def squidmesh_pool(squidmesh_db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A plain ``asyncpg.create_pool`` on the test's database, closed afterwards."""
    pool = await asyncpg.create_pool(squidmesh_db_dsn, min_size=1, max_size=16)
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=_POOL_CLOSE_TIMEOUT_S)
        except TimeoutError:
            pool.terminate()  # a connection still busy: the next reset ends it anyway


@_async_fixture
async def squidmesh_store(
    squidmesh_pool: asyncpg.Pool,
    squidmesh_workflows: Sequence[Workflow],
    squidmesh_listeners: Sequence[Callable[[Any], object]],
) -> AsyncIterator[RunStore]:
    """A ``RunStore`` on ``squidmesh_pool`` with your workflows and listeners."""
    store = RunStore(squidmesh_pool, workflows=squidmesh_workflows, listeners=squidmesh_listeners)
    try:
        yield store
    finally:
        await store.aclose()
