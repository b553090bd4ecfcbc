"""``squidmesh scheduler``: fire the cron triggers of some workflows, as a process.

::

    squidmesh scheduler --workflows myapp.workflows:WORKFLOWS [--dsn URL] [--interval 1]

Imports the workflows (``MODULE:ATTR``, a Workflow or a list of them, as for
``runs replay``), connects (one pooled connection at a time, no LISTEN), then
runs ``RunStore.scheduler(interval=...)`` until SIGTERM or SIGINT (Ctrl-C):
it stops the background task, closes the pool and exits with status 0. A
second signal while it stops is not caught (the default action: SIGINT
raises ``KeyboardInterrupt``, exit status 130; SIGTERM ends the process).

Before it starts, one ``fire_due_triggers`` runs in the foreground, so what
would fail for ever (a schema that is not migrated, a role without grants)
fails the command at once, with ``squidmesh``'s usual one-line error and exit
status 1. Once it runs, errors (a database restart) are logged and retried.

It logs to stderr (unless the process configured logging already): a line
when it starts and stops, one per run created (logger ``squidmesh.scheduler``,
INFO), and errors with their retries. Any number of these processes may run
against one database: each tick still yields one run.

``_cli`` wires it in (``add_parser``); this module imports ``_cli`` only
inside its functions, so either may be imported first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Final

from ._store import RunStore

__all__ = ("add_parser", "handle", "interval_seconds", "run")

logger = logging.getLogger("squidmesh.scheduler")

DEFAULT_INTERVAL: Final = 1.0
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def interval_seconds(text: str) -> float:
    """A positive, finite number of seconds (``1``, ``0.5``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid interval {text!r}: a positive number of seconds, e.g. 1 or 0.5"
        )
    return value


def add_parser(
    subparsers: Any, parents: Sequence[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """Add the ``scheduler`` command to ``subparsers`` (``parents``: the ``--dsn`` parser)."""
    from ._cli import workflows_spec

    help = "fire the cron triggers of workflows until SIGTERM or Ctrl-C"
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scheduler", help=help, description=help, parents=list(parents)
    )
    parser.add_argument(
        "--workflows",
        type=workflows_spec,
        metavar="MODULE:ATTR",
        required=True,
        help="a Workflow, or a list of them, to import; their cron triggers fire",
    )
    parser.add_argument(
        "--interval",
        type=interval_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"how often to look for due ticks (default {DEFAULT_INTERVAL:g})",
    )
    parser.set_defaults(handler=handle, parser=parser)
    return parser


def handle(args: argparse.Namespace) -> int:
    """The command's handler for ``_cli.main``: ``run`` on a new event loop."""
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    """Run the scheduler until SIGTERM or SIGINT; 0 once stopped by one.

    Raises:
        CannotLoadWorkflows, CannotConnect, and what the first
        ``fire_due_triggers`` raises: for ``_cli.main`` to report.
    """
    from ._cli import _dsn, _with_store, load_workflows, where

    dsn = _dsn(args)
    workflows = load_workflows(args.workflows)
    interval: float = args.interval
    _configure_logging()
    triggers = sum(1 for w in workflows for t in w.triggers if t.cron is not None)

    async def serve(store: RunStore) -> None:
        if not triggers:
            logger.warning("--workflows %s declares no cron trigger: nothing fires", args.workflows)
        await store.fire_due_triggers()
        logger.info(
            "scheduler started: %d cron trigger(s) of %d workflow(s), every %g s, on %s",
            triggers,
            len(workflows),
            interval,
            where(dsn),
        )
        async with store.scheduler(interval=interval):
            await asyncio.Event().wait()  # until a signal cancels the task

    main = asyncio.current_task()
    assert main is not None
    received: list[signal.Signals] = []
    with _signals_cancel(main, received):
        try:
            await _with_store(dsn, serve, workflows)
        except asyncio.CancelledError:
            if not received:
                raise
            main.uncancel()
    logger.info("scheduler stopped (%s)", received[0].name)
    return 0


@contextlib.contextmanager
def _signals_cancel(task: asyncio.Task[Any], received: list[signal.Signals]) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT cancel ``task`` (once: the handlers then go)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def remove() -> None:
        while installed:
            loop.remove_signal_handler(installed.pop())

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        remove()
        task.cancel()

    try:
        for signum in _SIGNALS:
            try:
                loop.add_signal_handler(signum, on_signal, signum)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises instead
                break
            installed.append(signum)
        yield
    finally:
        remove()


def _configure_logging() -> None:
    """INFO lines of squidmesh to stderr, unless the process set up logging itself."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    squidmesh_logger = logging.getLogger("squidmesh")
    if not squidmesh_logger.handlers:
        squidmesh_logger.addHandler(handler)
    if squidmesh_logger.level == logging.NOTSET:
        squidmesh_logger.setLevel(logging.INFO)
