"""Command line: python -m squidmesh migrate --dsn URL, and python -m squidmesh demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


async def _migrate(dsn: str) -> list[str]:
    import asyncpg

    from ._migrate import migrate

    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def asyncpg_errors() -> type[Exception]:
    import asyncpg

    return asyncpg.PostgresError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m squidmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply pending schema migrations")
    m.add_argument(
        "--dsn",
        default=os.environ.get("SQUIDMESH_DSN"),
        help="PostgreSQL URL (default: $SQUIDMESH_DSN)",
    )
    d = sub.add_parser("demo", help="a tour of the library on a real PostgreSQL")
    d.add_argument(
        "--dsn",
        default=os.environ.get("SQUIDMESH_DSN"),
        help="PostgreSQL URL (default: $SQUIDMESH_DSN, else an embedded server)",
    )
    args = parser.parse_args(argv)
    if args.command == "migrate":
        if not args.dsn:
            parser.error("migrate needs --dsn or SQUIDMESH_DSN")
        from ._errors import SquidMeshError

        try:
            applied = asyncio.run(_migrate(args.dsn))
        except (SquidMeshError, OSError, asyncpg_errors()) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("applied: " + ", ".join(applied) if applied else "schema is up to date")
        return 0
    from ._demo import run_demo

    return run_demo(args.dsn)


if __name__ == "__main__":
    sys.exit(main())
