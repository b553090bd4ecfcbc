"""The dashboard's templates and static files ship in the package and are
found through importlib.resources, in the checkout and in the wheel; what it
serves refers to nothing outside it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import jinja2
import pytest

from squidmesh._dashboard import router

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "squidmesh" / "_dashboard"
TEMPLATES = ("base.html", "_macros.html", "runs.html", "run.html", "workflows.html", "error.html")
STATIC = ("dashboard.css", "dashboard.js", "favicon.svg")


def test_templates_and_static_files_are_package_resources() -> None:
    root = resources.files("squidmesh._dashboard")
    for name in TEMPLATES:
        assert root.joinpath("templates", name).is_file(), name
    for name in STATIC:
        assert root.joinpath("static", name).is_file(), name
    assert sorted(p.name for p in (PACKAGE / "templates").iterdir()) == sorted(TEMPLATES)
    assert sorted(p.name for p in (PACKAGE / "static").iterdir()) == sorted(STATIC)


def test_every_template_compiles_and_escapes() -> None:
    env = router._ENV
    assert env.autoescape is True
    assert isinstance(env.undefined, type) and issubclass(env.undefined, jinja2.StrictUndefined)
    for name in TEMPLATES:
        env.get_template(name)


def test_what_is_served_stays_in_the_package() -> None:
    """No CDN, no font service, nothing fetched from elsewhere."""
    for path in [*(PACKAGE / "templates").iterdir(), *(PACKAGE / "static").iterdir()]:
        text = path.read_text(encoding="utf-8")
        # The only absolute URL: the SVG namespace, which is a name, not a fetch.
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)
        assert "@import" not in text and "url(" not in text, path.name
        assert "<script>" not in text and "style=" not in text, path.name  # the CSP forbids both
    assert set(router._ASSETS) == set(STATIC)


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
    (built,) = out.glob("squidmesh-*.whl")
    return built


def test_the_wheel_carries_the_templates_and_static_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for folder, files in (("templates", TEMPLATES), ("static", STATIC)):
            for name in files:
                inside = f"squidmesh/_dashboard/{folder}/{name}"
                assert inside in names, inside
                assert archive.read(inside) == (PACKAGE / folder / name).read_bytes()


def test_the_installed_wheel_renders_from_its_own_files(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    probe = (
        "import pathlib, squidmesh._dashboard.router as r;"
        f"site = pathlib.Path({str(target)!r});"
        "assert pathlib.Path(r.__file__).is_relative_to(site), r.__file__;"
        "assert b'EventSource' in r._ASSETS['dashboard.js'].body;"
        "print(r._ENV.get_template('error.html').render(base='', static={'dashboard.css': 'c',"
        " 'dashboard.js': 'j', 'favicon.svg': 'f'}, page='error', title='t', code=404,"
        " error='<x>', message='m', details={}, actions=False))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "<code>&lt;x&gt;</code>" in result.stdout
