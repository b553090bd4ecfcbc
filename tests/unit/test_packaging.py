"""The wheel carries the SQL files and py.typed, and finds them once installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Building takes about 2 s here (hatchling is cached); not marked slow.


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("squidmesh-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_contains_every_sql_file(wheel: Path) -> None:
    names = _names(wheel)
    sql_files = sorted((REPO / "sql").rglob("*.sql"))
    assert sql_files
    for path in sql_files:
        inside = "squidmesh/sql/" + path.relative_to(REPO / "sql").as_posix()
        assert inside in names, f"{inside} is not in {wheel.name}"


def test_wheel_sql_files_equal_the_checkout(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for path in sorted((REPO / "sql").rglob("*.sql")):
            inside = "squidmesh/sql/" + path.relative_to(REPO / "sql").as_posix()
            assert archive.read(inside) == path.read_bytes(), inside


def test_wheel_contains_py_typed_and_every_module(wheel: Path) -> None:
    names = _names(wheel)
    assert "squidmesh/py.typed" in names
    for path in sorted((REPO / "squidmesh").rglob("*.py")):
        inside = path.relative_to(REPO).as_posix()
        assert inside in names, inside


def test_wheel_leaves_tests_out(wheel: Path) -> None:
    assert not any(n.startswith("tests/") for n in _names(wheel))


def test_installed_wheel_finds_its_sql(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    probe = (
        "import squidmesh, squidmesh._sql as s, pathlib;"
        "root = pathlib.Path(str(s.sql_root()));"
        "assert pathlib.Path(squidmesh.__file__).parent == root.parent, (squidmesh.__file__, root);"
        "assert s.migrations() and s.Q;"
        "print(root)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == target / "squidmesh" / "sql"
