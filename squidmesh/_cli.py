"""The ``squidmesh`` console script (also ``python -m squidmesh``): look at and act on runs.

Commands::

    squidmesh migrate                      apply pending schema migrations
    squidmesh demo                         a tour of the library
    squidmesh runs list                    runs, newest first, a page at a time
    squidmesh runs show RUN_ID [--history] one run; with its timeline
    squidmesh runs cancel RUN_ID           cancel a run (cancel_run's rules)
    squidmesh runs replay RUN_ID --workflows MODULE:ATTR
    squidmesh runs counts                  runs in each status
    squidmesh runs prune --older-than 30d [--dry-run]

``--dsn URL`` (default ``$SQUIDMESH_DSN``) is accepted before or after the
command; ``--json`` prints what a command read or wrote as JSON (runs as
their msgspec Struct encoding, as the HTTP layer serves them).

Exit status: 0 success, 1 any other error, 2 usage error, 3 run not found
(an id that is not a UUID included), 4 move refused (``InvalidTransition``,
``IdempotencyConflict``, ``VersionConflict``). A database that cannot be
reached is one line on stderr, never a traceback, and never shows the DSN's
password.

Why stdlib ``argparse`` rather than click or typer: the CLI is a thin layer
over ``RunStore`` with a handful of commands and flags, which argparse covers
(nested subcommands, shared options through ``parents``, its own exit status
2 for usage errors); procrastinate and alembic ship their CLIs on argparse
for the same reason. Operators then get the command with the library itself,
with no extra to install and no dependency whose major versions could clash
with the application's own.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import asyncpg
import msgspec

from . import __version__, _scheduler_cli
from ._errors import (
    IdempotencyConflict,
    InvalidTransition,
    RunNotFound,
    SquidMeshError,
    VersionConflict,
)
from ._store import RunStore
from ._types import PruneReport, Run, RunPage, RunStatus
from ._workflow import Workflow

T = TypeVar("T")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_REFUSED: Final = 4

#: Seconds to wait for a connection before giving up (per attempt).
CONNECT_TIMEOUT: Final = 10.0
#: The largest page ``runs list`` asks for (``page_runs`` accepts 1 to 1000).
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 50

# The fields a run carries only when its history was read; left out of the
# JSON of a run read without it, as the HTTP layer does.
_HISTORY_FIELDS: Final = ("step_runs", "steps", "audit_events", "transitions")

_DURATION: Final = re.compile(r"(\d+)([wdhms])")
_DURATION_UNITS: Final = {
    "w": "weeks",
    "d": "days",
    "h": "hours",
    "m": "minutes",
    "s": "seconds",
}

_encoder: Final = msgspec.json.Encoder()


class CannotConnect(Exception):
    """The database could not be reached; the message is the one line to print."""


class CannotLoadWorkflows(Exception):
    """``--workflows MODULE:ATTR`` could not be imported or names no workflows."""


# -- argument types ------------------------------------------------------------


def duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``, or a sum of them (``1d12h``)."""
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a number and a unit (w, d, h, m, s), "
            "e.g. 30d, 12h, 90m, 45s, 2w or 1d12h"
        )
    try:
        total = dt.timedelta()
        for number, unit in parts:
            total += dt.timedelta(**{_DURATION_UNITS[unit]: int(number)})
    except OverflowError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: too long") from None
    return total


def format_duration(value: dt.timedelta) -> str:
    """A duration as ``duration`` reads it: ``30d``, ``1d12h``, ``0s``."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def page_limit(text: str) -> int:
    """An int from 1 to ``MAX_LIMIT``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid limit {text!r}: an integer from 1 to {MAX_LIMIT}"
        )
    return value


def workflows_spec(text: str) -> str:
    """``MODULE:ATTR`` (ATTR may be dotted); imported when the command runs."""
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(
            f"invalid workflows {text!r}: expected MODULE:ATTR, e.g. myapp.workflows:WORKFLOWS"
        )
    return text


def load_workflows(spec: str) -> list[Workflow]:
    """Import ``MODULE:ATTR`` and return the workflows it names (one, or a list).

    The current directory is put first on ``sys.path`` (as uvicorn does), so
    a module next to where the command is run imports.

    Raises:
        CannotLoadWorkflows: the import failed, or the attribute is missing or
            names something else than a Workflow or an iterable of them.
    """
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        value: object = importlib.import_module(module_name)
    except Exception as exc:
        raise CannotLoadWorkflows(
            f"cannot import module {module_name!r} (--workflows {spec}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for name in attr.split("."):
        try:
            value = getattr(value, name)
        except AttributeError:
            raise CannotLoadWorkflows(
                f"{module_name!r} has no attribute {attr!r} (--workflows {spec})"
            ) from None
    if isinstance(value, Workflow):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = list(value)
        if items and all(isinstance(item, Workflow) for item in items):
            return items
    raise CannotLoadWorkflows(
        f"--workflows {spec} names a {type(value).__name__}, "
        "not a Workflow or a non-empty list of workflows"
    )


# -- the DSN ---------------------------------------------------------------------


# A password shorter than this is not searched for in messages: replacing
# every "1" of "127.0.0.1" would hide more than it protects.
_MIN_REDACTED: Final = 4


def _split(dsn: str) -> SplitResult | None:
    try:
        return urlsplit(dsn)
    except ValueError:
        return None


def _password(dsn: str) -> str | None:
    parts = _split(dsn)
    if parts is None:
        return None
    userinfo, at, _ = parts.netloc.rpartition("@")
    password = userinfo.partition(":")[2] if at else ""
    if not password:
        password = (parse_qs(parts.query).get("password") or [""])[0]
    return password or None


def redact(text: str, dsn: str | None) -> str:
    """``text`` without the DSN's password (as written and percent-decoded): ``***``."""
    if not dsn:
        return text
    password = _password(dsn)
    if password:
        for form in sorted({password, unquote(password)}, key=len, reverse=True):
            if len(form) >= _MIN_REDACTED:
                text = text.replace(form, "***")
    return text


def where(dsn: str) -> str:
    """``host:port`` of a DSN for messages (no user, no password)."""
    parts = _split(dsn)
    if parts is None:
        return "?"
    hostport = parts.netloc.rpartition("@")[2]
    query = parse_qs(parts.query)
    port = (query.get("port") or [os.environ.get("PGPORT", "5432")])[0]
    if not hostport:
        host = (query.get("host") or [os.environ.get("PGHOST", "localhost")])[0]
        return f"{host}:{port}"
    has_port = "]:" in hostport if hostport.startswith("[") else ":" in hostport
    if "," not in hostport and not has_port:
        hostport += f":{port}"
    return hostport


# -- database ------------------------------------------------------------------

# What an attempt to connect raises when the server cannot be used: refused,
# unknown host (socket.gaierror is an OSError), timeout, authentication or a
# missing database (PostgresError), a DSN asyncpg cannot use (InterfaceError,
# ValueError).
_CONNECT_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ValueError,
)
# What a command may meet once connected, outside squidmesh's own errors.
_DATABASE_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def _cannot_connect(dsn: str, exc: BaseException) -> CannotConnect:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = f"timed out after {CONNECT_TIMEOUT:g} s"
    message = f"cannot connect to PostgreSQL at {where(dsn)}: {reason}"
    return CannotConnect(redact(" ".join(message.split()), dsn))


async def _with_store(
    dsn: str,
    action: Callable[[RunStore], Awaitable[T]],
    workflows: Sequence[Workflow] = (),
) -> T:
    """Open a small store (one connection, no LISTEN), run ``action``, close."""
    connected = False
    try:
        async with RunStore.connect(
            dsn,
            workflows=workflows,
            listen=False,
            min_size=1,
            max_size=2,
            timeout=CONNECT_TIMEOUT,
        ) as store:
            connected = True
            return await action(store)
    except _CONNECT_ERRORS as exc:
        if connected:
            raise
        raise _cannot_connect(dsn, exc) from exc


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except _CONNECT_ERRORS as exc:
        raise _cannot_connect(dsn, exc) from exc


async def _migrate(dsn: str) -> list[str]:
    from ._migrate import migrate

    conn = await _connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _probe(dsn: str) -> None:
    """Connect once and leave: a database that cannot be reached fails here, in one line."""
    await (await _connect(dsn)).close()


# -- output --------------------------------------------------------------------


def _write(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _write_json(value: object) -> None:
    _write(_encoder.encode(value).decode())


def run_json(run: Run, *, history: bool = False) -> dict[str, Any]:
    """A run as JSON-ready builtins; the history fields only with ``history``."""
    data: dict[str, Any] = msgspec.to_builtins(run)
    if not history:
        for name in _HISTORY_FIELDS:
            data.pop(name, None)
    return data


def _json_text(value: object) -> str:
    return "-" if value is None else _encoder.encode(value).decode()


def _when(at: dt.datetime | None, *, ms: bool = False) -> str:
    if at is None:
        return "-"
    utc = at.astimezone(dt.UTC)
    if ms:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, right: int = 0) -> list[str]:
    """Rows as aligned columns (two spaces apart); the last ``right`` ones right-aligned."""
    all_rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    first_right = len(header) - right
    lines = []
    for row in all_rows:
        cells = [
            cell.rjust(width) if i >= first_right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def runs_table(runs: Sequence[Run]) -> list[str]:
    return table(
        ("ID", "WORKFLOW", "TRIGGER", "STATUS", "STEP", "CREATED", "REPLAY_OF"),
        (
            (
                str(r.id),
                r.workflow,
                r.trigger,
                r.status.value,
                r.current_step or "-",
                _when(r.inserted_at),
                str(r.replayed_from_run_id) if r.replayed_from_run_id else "-",
            )
            for r in runs
        ),
    )


def run_fields(run: Run) -> list[str]:
    fields = (
        ("id", str(run.id)),
        ("workflow", run.workflow),
        ("trigger", run.trigger),
        ("status", run.status.value),
        ("version", str(run.version)),
        ("current_step", run.current_step or "-"),
        ("payload", _json_text(run.payload)),
        ("context", _json_text(run.context)),
        ("last_error", _json_text(run.last_error)),
        ("replayed_from", str(run.replayed_from_run_id) if run.replayed_from_run_id else "-"),
        ("idempotency_key", run.idempotency_key or "-"),
        ("created", _when(run.inserted_at, ms=True)),
        ("updated", _when(run.updated_at, ms=True)),
    )
    width = max(len(name) for name, _ in fields)
    return [f"{name.ljust(width)}  {value}" for name, value in fields]


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    message = error.get("message")
    return str(message) if isinstance(message, str) else _json_text(error)


def timeline(run: Run) -> list[tuple[dt.datetime, str]]:
    """The run's history as (time, text), oldest first, as the demo prints it:
    status changes, step runs, their attempts and the audit events.

    Entries of one instant (one transaction) keep this order: status changes,
    steps and attempts, audit events.
    """
    entries: list[tuple[dt.datetime, str]] = []
    for change in run.transitions or []:
        if change.from_status is None:
            entries.append((change.at, f"run created: {change.to_status.value}"))
        else:
            entries.append(
                (change.at, f"run {change.from_status.value} -> {change.to_status.value}")
            )
    for sr in run.step_runs or []:
        verb = "scheduled" if sr.status == "pending" else "started"
        entries.append((sr.inserted_at, f"step {sr.step!r} {verb}, input {_json_text(sr.input)}"))
        for a in sr.attempts:
            attempt = f"  attempt {a.attempt_number} of {sr.step!r}"
            entries.append((a.inserted_at, f"{attempt} started"))
            if a.status != "running":
                detail = f": {_error_text(a.error)}" if a.error else ""
                entries.append((a.updated_at, f"{attempt} {a.status}{detail}"))
        if sr.status == "completed":
            entries.append(
                (sr.updated_at, f"step {sr.step!r} completed, output {_json_text(sr.output)}")
            )
        elif sr.status == "failed":
            entries.append(
                (sr.updated_at, f"step {sr.step!r} failed: {_error_text(sr.last_error)}")
            )
    for ev in run.audit_events or []:
        who = f" by {ev.actor}" if ev.actor else ""
        why = f": {ev.comment!r}" if ev.comment else ""
        entries.append((ev.at, f"audit: {ev.type} at {ev.step!r}{who}{why}"))
    return sorted(entries, key=lambda entry: entry[0])


def _to_ms(at: dt.datetime) -> dt.datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def history_lines(run: Run) -> list[str]:
    lines: list[str] = []
    if run.steps:
        lines += ["", "steps"]
        rows = (
            (
                s.step,
                s.status,
                str(len(s.attempts)),
                ", ".join(s.depends_on) or "-",
                _when(s.updated_at),
            )
            for s in run.steps
        )
        lines += [
            "  " + line for line in table(("STEP", "STATUS", "ATTEMPTS", "AFTER", "UPDATED"), rows)
        ]
    lines += ["", "timeline"]
    t0 = _to_ms(run.inserted_at)
    for at, text in timeline(run):
        # From the times as printed (to the millisecond), so the two columns agree.
        offset = (_to_ms(at) - t0).total_seconds()
        lines.append(
            f"  {_when(at, ms=True)}  {'+' if offset >= 0 else '-'}{abs(offset):.3f}s  {text}"
        )
    return lines


# -- commands ------------------------------------------------------------------


def _dsn(args: argparse.Namespace) -> str:
    dsn: str | None = getattr(args, "dsn", None) or os.environ.get("SQUIDMESH_DSN") or None
    if dsn is None:
        _usage(args, "no database: pass --dsn URL or set SQUIDMESH_DSN")
    if not dsn.startswith(("postgresql://", "postgres://")) or _split(dsn) is None:
        _usage(args, "--dsn must be a URL: postgresql://user:password@host:port/database")
    return dsn


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(_migrate(_dsn(args)))
    if _json(args):
        _write_json({"applied": applied})
    else:
        _write("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    dsn: str | None = getattr(args, "dsn", None) or os.environ.get("SQUIDMESH_DSN") or None
    if dsn is not None:
        asyncio.run(_probe(_dsn(args)))
    return run_demo(dsn)


def cmd_list(args: argparse.Namespace) -> int:
    async def action(store: RunStore) -> RunPage:
        return await store.page_runs(
            workflow=args.workflow,
            status=args.status,
            trigger=args.trigger,
            limit=args.limit,
            cursor=args.cursor,
        )

    page = asyncio.run(_with_store(_dsn(args), action))
    if _json(args):
        _write_json({"runs": [run_json(r) for r in page.runs], "next_cursor": page.next_cursor})
        return EXIT_OK
    for line in runs_table(page.runs) if page.runs else ["no runs"]:
        _write(line)
    if page.next_cursor:
        _write(f"next cursor: {page.next_cursor}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    workflows = load_workflows(args.workflows) if args.workflows else []

    async def action(store: RunStore) -> Run:
        return await store.get_run(args.run_id, include_history=args.history)

    run = asyncio.run(_with_store(_dsn(args), action, workflows))
    if _json(args):
        _write_json(run_json(run, history=args.history))
        return EXIT_OK
    lines = run_fields(run)
    if args.history:
        lines += history_lines(run)
    for line in lines:
        _write(line)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    async def action(store: RunStore) -> Run:
        return await store.cancel_run(args.run_id)

    run = asyncio.run(_with_store(_dsn(args), action))
    if _json(args):
        _write_json(run_json(run))
    elif run.status is RunStatus.CANCELLING:
        _write(f"run {run.id}: cancelling (its worker finishes the current step, then stops)")
    else:
        _write(f"run {run.id}: {run.status.value}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    workflows = load_workflows(args.workflows)

    async def action(store: RunStore) -> Run:
        return await store.replay_run(args.run_id)

    run = asyncio.run(_with_store(_dsn(args), action, workflows))
    if _json(args):
        _write_json(run_json(run))
    else:
        _write(
            f"run {run.id}: {run.status.value}, a replay of {run.replayed_from_run_id} "
            f"(workflow {run.workflow}, trigger {run.trigger})"
        )
    return EXIT_OK


def cmd_counts(args: argparse.Namespace) -> int:
    async def action(store: RunStore) -> dict[RunStatus, int]:
        return await store.count_runs_by_status(workflow=args.workflow)

    counts = asyncio.run(_with_store(_dsn(args), action))
    if _json(args):
        _write_json({status.value: n for status, n in counts.items()})
        return EXIT_OK
    rows = [(status.value, str(n)) for status, n in counts.items()]
    rows.append(("total", str(sum(counts.values()))))
    for line in table(("STATUS", "RUNS"), rows, right=1):
        _write(line)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    async def action(store: RunStore) -> PruneReport:
        return await store.prune_runs(older_than=args.older_than, dry_run=args.dry_run)

    report = asyncio.run(_with_store(_dsn(args), action))
    if _json(args):
        _write_json(report)
        return EXIT_OK
    verb = "would delete" if report.dry_run else "deleted"
    by_status = ", ".join(f"{status.value} {n}" for status, n in report.by_status.items())
    _write(
        f"{verb} {report.runs} run(s) not written for {format_duration(args.older_than)} "
        f"({by_status}), with {report.step_runs} step run(s) and {report.attempts} attempt(s)"
    )
    return EXIT_OK


# -- the parser ----------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    # --dsn and --json are declared on every level with default=SUPPRESS, so a
    # subcommand's parser never overwrites a value given before it, and both
    # ``squidmesh --dsn URL runs list`` and ``squidmesh runs list --dsn URL`` work.
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--dsn",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="PostgreSQL URL, postgresql://user:password@host:port/db (default: $SQUIDMESH_DSN)",
    )
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (msgspec)"
    )

    parser = argparse.ArgumentParser(
        prog=prog or "squidmesh",
        description="Look at and act on squidmesh workflow runs stored in PostgreSQL.",
        epilog="exit status: 0 ok, 1 error, 2 usage error, 3 run not found, 4 move refused",
        parents=[conn],
    )
    parser.add_argument("--version", action="version", version=f"squidmesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(
        parent: Any,
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help: str,
        parents: list[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, parents=parents
        )
        p.set_defaults(handler=handler, parser=p)
        return p

    leaf(sub, "migrate", cmd_migrate, "apply pending schema migrations", [conn, out])
    demo = leaf(sub, "demo", cmd_demo, "a tour of the library on a real PostgreSQL", [])
    demo.add_argument(
        "--dsn",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="PostgreSQL URL (default: $SQUIDMESH_DSN, else an embedded server)",
    )

    runs_parser = sub.add_parser(
        "runs", help="list, show, cancel, replay, count and prune runs", parents=[conn]
    )
    runs_parser.set_defaults(parser=runs_parser)
    runs = runs_parser.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")

    ls = leaf(runs, "list", cmd_list, "runs newest first, one page at a time", [conn, out])
    ls.add_argument("--workflow", help="only runs of this workflow")
    ls.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in RunStatus],
        help="only runs in this status (repeat for several)",
    )
    ls.add_argument("--trigger", help="only runs created through this trigger")
    ls.add_argument(
        "--limit",
        type=page_limit,
        default=DEFAULT_LIMIT,
        help=f"runs per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
    )
    ls.add_argument("--cursor", help="the next cursor a previous page printed (same filters)")

    show = leaf(
        runs, "show", cmd_show, "one run's fields; its timeline with --history", [conn, out]
    )
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument(
        "--history",
        action="store_true",
        help="with its steps and a timeline: transitions, steps, attempts, audit events",
    )
    show.add_argument(
        "--workflows",
        type=workflows_spec,
        metavar="MODULE:ATTR",
        help="the workflows, to list the declared steps not started yet",
    )

    cancel = leaf(runs, "cancel", cmd_cancel, "cancel a run", [conn, out])
    cancel.add_argument("run_id", metavar="RUN_ID")

    replay = leaf(
        runs, "replay", cmd_replay, "create a new pending run from a run's payload", [conn, out]
    )
    replay.add_argument("run_id", metavar="RUN_ID")
    replay.add_argument(
        "--workflows",
        type=workflows_spec,
        metavar="MODULE:ATTR",
        required=True,
        help="a Workflow, or a list of them, to import (the run's workflow must be one)",
    )

    counts = leaf(runs, "counts", cmd_counts, "how many runs are in each status", [conn, out])
    counts.add_argument("--workflow", help="only runs of this workflow")

    prune = leaf(
        runs, "prune", cmd_prune, "delete finished runs not written for a while", [conn, out]
    )
    prune.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="DURATION",
        help="e.g. 30d, 12h, 90m, 45s, 2w (failed, completed and cancelled runs)",
    )
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    _scheduler_cli.add_parser(sub, [conn])
    return parser


# -- main ----------------------------------------------------------------------


def _error(message: str, dsn: str | None) -> None:
    sys.stderr.write(f"error: {redact(message, dsn)}\n")


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line; return the exit status (argparse's ``--help``,
    ``--version`` and usage errors included, rather than raising SystemExit)."""
    parser = build_parser(prog)
    dsn: str | None = None
    try:
        args = parser.parse_args(argv)
        dsn = getattr(args, "dsn", None) or os.environ.get("SQUIDMESH_DSN")
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except SystemExit as exc:
        # argparse: 0 after --help / --version, 2 for a usage error.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except CannotConnect as exc:
        _error(str(exc), dsn)
        return EXIT_ERROR
    except CannotLoadWorkflows as exc:
        _error(str(exc), dsn)
        return EXIT_ERROR
    except RunNotFound as exc:
        _error(str(exc), dsn)
        return EXIT_NOT_FOUND
    except (InvalidTransition, IdempotencyConflict, VersionConflict) as exc:
        _error(f"{type(exc).__name__}: {exc}", dsn)
        return EXIT_REFUSED
    except SquidMeshError as exc:
        _error(f"{type(exc).__name__}: {exc}", dsn)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (``squidmesh runs list | head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except _DATABASE_ERRORS as exc:
        _error(_database_error(exc), dsn)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _database_error(exc: BaseException) -> str:
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    if isinstance(
        exc,
        (
            asyncpg.UndefinedTableError,
            asyncpg.UndefinedFunctionError,
            asyncpg.InvalidSchemaNameError,
        ),
    ):
        message += " (is the schema migrated? run: squidmesh migrate)"
    return message
