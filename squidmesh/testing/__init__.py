"""Test code that uses squidmesh against a real PostgreSQL.

The pytest plugin comes with ``pip install 'squidmesh[testing]'`` (entry
point ``squidmesh``, module :mod:`squidmesh.testing.plugin`; nothing to
declare in a conftest). Its fixtures:

- ``squidmesh_dsn`` (session): the admin DSN of a PostgreSQL server:
  ``$SQUIDMESH_TEST_DSN`` when set, otherwise an embedded server started
  for the session in a temporary directory and removed at its end.
- ``squidmesh_db_dsn``: the DSN of a migrated database that no other test
  sees (see below).
- ``squidmesh_pool``: ``asyncpg.create_pool(squidmesh_db_dsn)``, closed after
  the test.
- ``squidmesh_store``: ``RunStore(squidmesh_pool, workflows=squidmesh_workflows,
  listeners=squidmesh_listeners)``.
- ``squidmesh_workflows`` and ``squidmesh_listeners``: empty; override them
  in your ``conftest.py`` to give the store your workflows and listeners.

``squidmesh_pool`` and ``squidmesh_store`` are pytest-asyncio fixtures that
work in ``auto`` and in ``strict`` mode; they run on the loop of
``asyncio_default_fixture_loop_scope`` (keep it that of your tests, such as
``function``, the default).

One database is migrated once per session and shared: before each test that
uses it, the other connections to it are ended, the tables and schemas the
previous test created are dropped, the settings it gave the database reset,
and squidmesh's tables emptied (a few milliseconds). A test that changes
anything else (a grant, a column of squidmesh's tables, a function of its
own in an existing schema) is detected, and the database is rebuilt from the
migrated template after it. Mark such a test
``@pytest.mark.squidmesh_fresh_db`` to give it a database of its own
instead; the end of the session lists the ones that are not marked.

:func:`wait_until_blocked` and :func:`wait_until_not_blocked` are the
public functions here: they wait for backends to block on a lock (or to stop
waiting, after a cancellation), the deterministic way to test what a
concurrent call decides; no sleeps. The server management behind the fixtures
(``EmbeddedPostgres``, ``provide_dsn``, ``create_database``,
``drop_database``...) is private; those names are importable from here for
the demo, the benchmarks, the examples and code written against 0.1, but are
not part of the API.
"""

from ._locks import wait_until_blocked as wait_until_blocked
from ._locks import wait_until_not_blocked as wait_until_not_blocked

# Private; importable for in-repository tools and earlier users (see above).
from ._server import PG_SYSTEM_USER as PG_SYSTEM_USER
from ._server import EmbeddedPostgres as EmbeddedPostgres
from ._server import create_database as create_database
from ._server import drop_database as drop_database
from ._server import postgres_bin_dir as postgres_bin_dir
from ._server import provide_dsn as provide_dsn
from ._server import quote_ident as quote_ident
from ._server import with_database as with_database

__all__ = ("wait_until_blocked", "wait_until_not_blocked")
