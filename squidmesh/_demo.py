"""``make demo``: a short end-to-end tour of squidmesh on a real PostgreSQL.

Runs on ``$SQUIDMESH_DSN`` when set, otherwise on an embedded PostgreSQL that
is started in a temporary directory and removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

import squidmesh
from squidmesh import Field, RunStatus, RunStore, Step, Transition, Trigger, Workflow

invoice_reminder = Workflow(
    "billing.invoice_reminder",
    triggers=[
        Trigger(
            "invoice_delivery",
            payload=[
                Field("account_id", str),
                Field("invoice_id", str),
                Field("amount_cents", int),
                Field("note", str, required=False),
                Field("posted_on", str, default=squidmesh.TODAY_ISO8601),
            ],
        ),
        Trigger("nightly", cron="0 9 * * 1-5", timezone="Etc/UTC"),
    ],
    steps=[
        Step("load_invoice"),
        Step("approve", kind="approval"),
        Step("send_email"),
        Step("record_rejection"),
    ],
    transitions=[
        Transition("load_invoice", on="ok", to="approve"),
        Transition("approve", on="ok", to="send_email"),
        Transition("approve", on="error", to="record_rejection"),
        Transition("send_email", on="ok", to="complete"),
        Transition("record_rejection", on="ok", to="complete"),
    ],
)

# Styled only on a terminal, and never with NO_COLOR set (no-color.org).
_STYLED = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
_BOLD, _DIM, _RESET = ("\033[1m", "\033[2m", "\033[0m") if _STYLED else ("", "", "")


def _say(title: str) -> None:
    print(f"\n{_BOLD}== {title}{_RESET}")


def _line(text: str) -> None:
    print(f"   {text}")


def _short(run: squidmesh.Run) -> str:
    return str(run.id)[-8:]


def _table(runs: list[squidmesh.Run]) -> None:
    header = f"{'run':<10} {'trigger':<18} {'status':<11} {'current_step':<14} {'replay of':<10}"
    _line(_DIM + header + _RESET)
    for r in runs:
        source = str(r.replayed_from_run_id)[-8:] if r.replayed_from_run_id else "-"
        _line(
            f"{_short(r):<10} {r.trigger:<18} {r.status.value:<11} "
            f"{r.current_step or '-':<14} {source:<10}"
        )


async def _tour(dsn: str) -> None:
    events: list[object] = []
    async with RunStore.connect(
        dsn, workflows=[invoice_reminder], listeners=[events.append], migrate=True
    ) as store:
        _say("1. Create runs through the two triggers")
        r1 = await store.create_run(
            invoice_reminder,
            {"account_id": "acct_42", "invoice_id": "inv_1001", "amount_cents": 12_500},
        )
        _line(
            f"run {_short(r1)}: {r1.status.value}, at step {r1.current_step!r}, "
            f"payload {r1.payload}"
        )
        r2 = await store.create_run("billing.invoice_reminder", {}, trigger="nightly")
        _line(f"run {_short(r2)}: {r2.status.value} via trigger {r2.trigger!r}")

        _say("2. A payload with several problems is rejected, all at once, nothing stored")
        try:
            await store.create_run(
                invoice_reminder,
                {"account_id": 42, "amount_cents": "12.50", "colour": "blue"},
            )
        except squidmesh.InvalidPayload as exc:
            _line(f"InvalidPayload: {exc}")
            _line(f"  missing={exc.missing_fields} unknown={exc.unknown_fields}")
            _line(f"  invalid_types={exc.invalid_types}")

        _say("3. Move a run through its states (each write locks the row)")
        run = await store.transition_run(r1.id, "running", context={"invoice_loaded": True})
        _line(f"{_short(run)}: pending -> running, context {run.context}")
        run = await store.transition_run(run.id, RunStatus.PAUSED, current_step="approve")
        _line(f"{_short(run)}: running -> paused at {run.current_step!r} (waiting for approval)")
        run = await store.transition_run(run.id, "running", current_step="send_email")
        _line(f"{_short(run)}: paused -> running at {run.current_step!r}")
        run = await store.transition_run(run.id, "completed", current_step=None)
        _line(f"{_short(run)}: running -> completed (version {run.version})")

        _say("4. An illegal move is refused and leaves the row exactly as it was")
        try:
            await store.transition_run(run.id, "running")
        except squidmesh.InvalidTransition as exc:
            _line(f"InvalidTransition: {exc}")
        same = await store.get_run(run.id)
        unchanged = same.updated_at == run.updated_at
        _line(f"still {same.status.value}, updated_at unchanged: {unchanged}")

        _say("5. Cancel: a pending run at once, a running run cooperatively")
        pending = await store.create_run(
            invoice_reminder, {"account_id": "acct_7", "invoice_id": "inv_7", "amount_cents": 700}
        )
        cancelled = await store.cancel_run(pending.id)
        _line(f"{_short(cancelled)}: pending -> {cancelled.status.value}")
        busy = await store.create_run(
            invoice_reminder, {"account_id": "acct_8", "invoice_id": "inv_8", "amount_cents": 800}
        )
        await store.transition_run(busy.id, "running")
        cancelling = await store.cancel_run(busy.id)
        _line(f"{_short(cancelling)}: running -> {cancelling.status.value} (the worker finishes)")
        done = await store.transition_run(busy.id, "cancelled")
        _line(f"{_short(done)}: cancelling -> {done.status.value}")

        _say("6. Replay a failed run: a new pending run with lineage")
        flaky = await store.create_run(
            invoice_reminder, {"account_id": "acct_9", "invoice_id": "inv_9", "amount_cents": 900}
        )
        await store.transition_run(flaky.id, "running")
        failed = await store.transition_run(
            flaky.id, "failed", last_error={"message": "SMTP timeout", "attempts": 3}
        )
        _line(f"{_short(failed)}: failed with {failed.last_error}")
        replay = await store.replay_run(failed.id)
        _line(
            f"{_short(replay)}: {replay.status.value}, replayed_from={_short(failed)}, "
            f"at step {replay.current_step!r}, context {replay.context}"
        )

        await _history_tour(store)

        _say("8. List runs by status (newest first, served by an index)")
        for status in ("pending", "completed", "cancelled", "failed"):
            runs = await store.list_runs(workflow=invoice_reminder, status=status)
            _line(f"{status}: {len(runs)}")
        _line("")
        _table(await store.list_runs(workflow=invoice_reminder, limit=10))

        await _react_tour(store)

        _say("10. Events the listeners received (after each commit)")
        counts: dict[str, int] = {}
        for event in events:
            counts[type(event).__name__] = counts.get(type(event).__name__, 0) + 1
        _line(", ".join(f"{name} x{n}" for name, n in counts.items()))


async def _react_tour(store: RunStore) -> None:
    """A worker claims pending runs while a caller awaits one of them."""
    _say("9. React to runs: a worker claims pending runs, a caller awaits one")
    queued = [
        await store.create_run(
            invoice_reminder,
            {"account_id": f"acct_{n}", "invoice_id": f"inv_{n}", "amount_cents": 100 * n},
        )
        for n in (11, 12, 13)
    ]

    async def worker() -> None:
        # FOR UPDATE SKIP LOCKED: more workers would each get other runs.
        while batch := await store.claim_runs(workflow=invoice_reminder, limit=2):
            _line(f"worker claimed {', '.join(_short(r) for r in batch)} (pending -> running)")
            for claimed in batch:
                await store.transition_run(claimed.id, "completed")

    task = asyncio.create_task(worker())
    result = await store.wait_for(queued[-1].id, timeout=30)
    await task
    _line(f"wait_for({_short(result)}) returned once it was {result.status.value}")
    full = await store.get_run(result.id, include_history=True)
    moves = ", ".join(f"{t.from_status or 'new'} -> {t.to_status}" for t in full.transitions or [])
    _line(f"its transition log: {moves}")


async def _history_tour(store: RunStore) -> None:
    """A run's history as an operator sees it, written as a runtime would."""
    _say("7. One run's history: steps, attempts and the approval decision")
    run = await store.create_run(
        invoice_reminder,
        {"account_id": "acct_5", "invoice_id": "inv_5", "amount_cents": 5_000, "note": "VIP"},
    )
    await store.transition_run(run.id, "running")

    load = await store.begin_step(run.id, "load_invoice", {"invoice_id": "inv_5"})
    first = await store.begin_attempt(load.id)
    await store.fail_attempt(first.id, {"message": "ledger API 503"})
    second = await store.begin_attempt(load.id)
    await store.complete_attempt(second.id)
    await store.complete_step(load.id, {"amount_cents": 5_000})

    approve = await store.begin_step(run.id, "approve", {"amount_cents": 5_000})
    attempt = await store.begin_attempt(approve.id)
    paused = await store.pause_run(
        run.id, approve.id, attempt.id, squidmesh.RunChanges(current_step="approve")
    )
    _line(f"{_short(run)}: {paused.from_status.value} -> {paused.to_status.value} at 'approve'")
    await store.complete_attempt(attempt.id)
    await store.complete_manual_step(
        approve.id,
        {"approved": True},
        {"type": "approved", "actor": "dana@finance", "comment": "VIP customer, ok to send"},
    )
    await store.transition_run(run.id, "running", current_step="send_email")
    send = await store.begin_step(run.id, "send_email", {"template": "reminder"})
    await store.complete_attempt((await store.begin_attempt(send.id)).id)
    await store.complete_step(send.id, {"message_id": "msg_77"})
    await store.transition_run(run.id, "completed", current_step=None)

    full = await store.get_run(run.id, include_history=True)
    t0 = full.inserted_at
    timeline: list[tuple[Any, str]] = []
    for sr in full.step_runs or []:
        timeline.append((sr.inserted_at, f"step {sr.step!r} started"))
        for a in sr.attempts:
            detail = f" ({a.error['message']})" if a.error else ""
            timeline.append((a.updated_at, f"  attempt {a.attempt_number} {a.status}{detail}"))
        timeline.append((sr.updated_at, f"step {sr.step!r} {sr.status}, output {sr.output}"))
    for ev in full.audit_events or []:
        who = f" by {ev.actor}: {ev.comment!r}" if ev.actor else ""
        timeline.append((ev.at, f"audit: {ev.type} at {ev.step!r}{who}"))
    for at, text in sorted(timeline, key=lambda item: item[0]):
        _line(f"+{(at - t0).total_seconds() * 1000:7.1f} ms  {text}")
    states = ", ".join(f"{s.step}={s.status}" for s in full.steps or [])
    _line(f"declared steps: {states}")


@contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from .testing._server import EmbeddedPostgres

    print(f"{_DIM}starting an embedded PostgreSQL (set SQUIDMESH_DSN to use yours){_RESET}")
    with EmbeddedPostgres() as server:
        yield server.dsn


async def _version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def run_demo(dsn: str | None) -> int:
    """Run the tour; return the process exit code."""
    started = time.perf_counter()
    with _database(dsn) as url:
        print(f"squidmesh {squidmesh.__version__} on PostgreSQL {asyncio.run(_version(url))}")
        asyncio.run(_tour(url))
    print(f"\n{_DIM}tour finished in {time.perf_counter() - started:.1f} s{_RESET}")
    return 0
