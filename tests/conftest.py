"""The suite's database fixtures: its own names for the squidmesh pytest plugin's.

The plugin (``squidmesh.testing.plugin``) is loaded by its ``pytest11``
entry point, active because the package is installed (``make test`` installs
it editable); declaring it in ``pytest_plugins`` as well would register it
twice. Unit tests ask for none of these, so they start no server.

- ``pg_admin_dsn`` (session): the server's admin DSN (``squidmesh_dsn``).
- ``dsn``: this test's database (``squidmesh_db_dsn``): the session's shared
  database, reset, or one of its own under ``@pytest.mark.squidmesh_fresh_db``.
- ``pool``: a plain ``asyncpg.create_pool(dsn)`` (``squidmesh_pool``).
- ``events``: a list every store event is appended to.
- ``store``: ``RunStore(pool, workflows=WORKFLOWS, listeners=[events.append])``
  (``squidmesh_store``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import pytest

from squidmesh import RunStore, Workflow
from tests.integration.workflows import WORKFLOWS

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("squidmesh"):
        raise pytest.UsageError(
            "the squidmesh pytest plugin is not loaded: install the package "
            "(pip install -e '.[test]', as make test does), or pass -p squidmesh"
        )


@pytest.fixture(scope="session")
def pg_admin_dsn(squidmesh_dsn: str) -> str:
    return squidmesh_dsn


@pytest.fixture
def dsn(squidmesh_db_dsn: str) -> str:
    return squidmesh_db_dsn


@pytest.fixture
def pool(squidmesh_pool: asyncpg.Pool) -> asyncpg.Pool:
    return squidmesh_pool


@pytest.fixture
def events() -> list[Any]:
    return []


@pytest.fixture
def squidmesh_workflows() -> Sequence[Workflow]:
    return WORKFLOWS


@pytest.fixture
def squidmesh_listeners(events: list[Any]) -> Sequence[Callable[[Any], object]]:
    return [events.append]


@pytest.fixture
def store(squidmesh_store: RunStore) -> RunStore:
    return squidmesh_store
