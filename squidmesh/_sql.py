"""Load the SQL that lives in ``sql/``: numbered migrations and named queries.

Installed, the files sit in the wheel at ``squidmesh/sql``; from a checkout
(editable install included) they are the repository's top-level ``sql/``.
Queries are parsed once at import; their text never changes at run time so
asyncpg's statement cache prepares each once per connection.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_root() -> Traversable:
    """The directory holding ``migrations/``, ``functions/`` and ``queries/``."""
    packaged = resources.files("squidmesh").joinpath("sql")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if checkout.is_dir():
        return checkout
    raise RuntimeError(
        "squidmesh cannot find its SQL files: neither squidmesh/sql (installed) "
        f"nor {checkout} (checkout) exists; reinstall the package"
    )


def migrations(root: Traversable | None = None) -> list[tuple[str, str]]:
    """``(version, sql)`` for each ``migrations/NNNN_name.sql`` file, in order.

    Args:
        root: the SQL directory to read (default: :func:`sql_root`); tests
            pass a directory of throwaway migrations.
    """
    directory = (root or sql_root()).joinpath("migrations")
    files = sorted(
        (f for f in directory.iterdir() if re.match(r"^\d{4}_\w+\.sql$", f.name)),
        key=lambda f: f.name,
    )
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into ``{name: sql}``."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"duplicate query name {name!r}")
        queries[name] = body.strip().rstrip(";").strip()
    return queries


def load_queries() -> dict[str, str]:
    """Every named query of every ``queries/*.sql`` file."""
    root = sql_root().joinpath("queries")
    merged: dict[str, str] = {}
    for f in sorted(root.iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".sql"):
            continue
        for name, body in parse_queries(f.read_text(encoding="utf-8")).items():
            if name in merged:
                raise RuntimeError(f"query {name!r} is defined twice (in {f.name})")
            merged[name] = body
    return merged


Q: Final[dict[str, str]] = load_queries()
