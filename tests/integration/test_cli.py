"""The ``squidmesh`` console script in a subprocess against a real PostgreSQL.

Every command, its ``--json``, each exit status of the contract (0 ok, 1
error, 2 usage, 3 run not found, 4 move refused) and the one-line error for a
database that cannot be reached. Independent calls run concurrently
(``_cli_all``): each subprocess costs a few tenths of a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import squidmesh
from squidmesh import Run, RunStatus, RunStore
from squidmesh._cli import main
from squidmesh.testing import create_database, drop_database
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

PAYLOAD = {"account_id": "acct_1"}
HISTORY_FIELDS = ("step_runs", "steps", "audit_events", "transitions")
SCRIPT = Path(sys.executable).parent / ("squidmesh.exe" if os.name == "nt" else "squidmesh")

# A module for --workflows: the test workflows, written to tmp_path and
# imported by the CLI from its working directory.
WORKFLOWS_MODULE = textwrap.dedent(
    """
    from squidmesh import TODAY_ISO8601, Field, Step, Transition, Trigger, Workflow

    INVOICE = Workflow(
        "billing.invoice_reminder",
        triggers=[
            Trigger(
                "invoice_delivery",
                payload=[
                    Field("account_id", str),
                    Field("note", str, required=False),
                    Field("posted_on", str, default=TODAY_ISO8601),
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
    ETL = Workflow("etl.daily", triggers=[Trigger("manual")], steps=[Step("extract")])
    WORKFLOWS = [INVOICE, ETL]
    ONLY_ETL = (ETL,)
    NOT_WORKFLOWS = {"a": 1}
    """
)


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)

    def run(self) -> Run:
        assert self.code == 0, self
        return msgspec.json.decode(self.out, type=Run)


async def _cli(
    *args: str,
    dsn: str | None = None,
    cwd: Path | None = None,
    program: Sequence[str] = (sys.executable, "-m", "squidmesh"),
) -> Result:
    """Run the CLI; ``dsn`` goes in $SQUIDMESH_DSN (never set when None)."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("SQUIDMESH_DSN", None)
    if dsn is not None:
        env["SQUIDMESH_DSN"] = dsn
    proc = await asyncio.create_subprocess_exec(
        *program,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return Result(args, proc.returncode, out.decode(), err.decode())


async def _cli_all(
    *calls: Sequence[str], dsn: str | None = None, cwd: Path | None = None
) -> list[Result]:
    return list(await asyncio.gather(*(_cli(*call, dsn=dsn, cwd=cwd) for call in calls)))


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


async def _finished(store: RunStore, to: str, **fields: Any) -> Run:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(run.id, "running")
    return await store.transition_run(run.id, to, **fields)


# -- no database ---------------------------------------------------------------


USAGE_ERRORS: tuple[list[str], ...] = (
    [],  # no command
    ["runs"],  # no runs command
    ["runs", "list", "--dsn", "mysql://localhost/db"],
    ["runs", "list", "--dsn", "postgresql://x@h/d", "--status", "sleeping"],
    ["runs", "list", "--dsn", "postgresql://x@h/d", "--limit", "0"],
    ["runs", "list", "--dsn", "postgresql://x@h/d", "--limit", "1001"],
    ["runs", "prune", "--dsn", "postgresql://x@h/d", "--older-than", "30"],
    ["runs", "prune", "--dsn", "postgresql://x@h/d", "--older-than", "d"],
    ["runs", "prune", "--dsn", "postgresql://x@h/d", "--older-than", "1d-2h"],
    ["runs", "prune", "--dsn", "postgresql://x@h/d"],  # --older-than is required
    ["runs", "replay", "r", "--dsn", "postgresql://x@h/d"],  # --workflows is required
    ["runs", "replay", "r", "--dsn", "postgresql://x@h/d", "--workflows", "nocolon"],
    ["runs", "show", "--dsn", "postgresql://x@h/d"],  # RUN_ID is required
    ["runs", "counts"],  # no --dsn, no $SQUIDMESH_DSN
    ["migrate"],
)


async def test_version_and_usage_errors() -> None:
    version, no_dsn, bad_duration = await _cli_all(
        ["--version"],
        ["runs", "list"],  # no --dsn, no $SQUIDMESH_DSN
        ["runs", "prune", "--dsn", "postgresql://x@h/d", "--older-than", "3x"],
    )
    assert version.code == 0
    assert version.out.strip() == f"squidmesh {squidmesh.__version__}"
    for result in (no_dsn, bad_duration):
        assert result.code == 2, result
        assert result.out == "" and "Traceback" not in result.err, result
    assert no_dsn.err.endswith("error: no database: pass --dsn URL or set SQUIDMESH_DSN\n")
    assert "argument --older-than: invalid duration '3x'" in bad_duration.err


def test_usage_errors_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's own exit status 2, with its usage line, for every malformed call
    (in process: parsing needs no subprocess and no database)."""
    monkeypatch.delenv("SQUIDMESH_DSN", raising=False)
    for argv in USAGE_ERRORS:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and "usage: squidmesh" in err, (argv, err)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"squidmesh {squidmesh.__version__}\n"


async def test_unreachable_database_is_one_line_without_password(pg_admin_dsn: str) -> None:
    port = _closed_port()
    secret = "n0t-4-pr1nt"
    closed = f"postgresql://someone:{secret}@127.0.0.1:{port}/db"
    # A server that answers, and a database it does not have.
    base = pg_admin_dsn.rsplit("/", 1)[0].replace("://postgres@", f"://postgres:{secret}@")
    missing = f"{base}/no_such_db_{uuid.uuid4().hex}"
    results = await _cli_all(
        ["runs", "list", "--dsn", closed],
        ["--dsn", closed, "runs", "show", str(uuid.uuid4()), "--json"],
        ["migrate", "--dsn", closed],
        ["demo", "--dsn", closed],
        ["runs", "list", "--dsn", missing],
    )
    for result in results:
        assert result.code == 1, result
        assert result.out == "", result
        lines = result.err.splitlines()
        assert len(lines) == 1, result
        assert lines[0].startswith("error: cannot connect to PostgreSQL at "), result
        assert secret not in result.err
    assert f"at 127.0.0.1:{port}: " in results[0].err
    assert "does not exist" in results[-1].err


async def test_unmigrated_database_is_an_error(pg_admin_dsn: str) -> None:
    name = f"cli_{uuid.uuid4().hex}"
    empty = await create_database(pg_admin_dsn, name)
    try:
        (listed,) = await _cli_all(["runs", "list"], dsn=empty)
        assert listed.code == 1, listed
        assert listed.err.startswith("error: ") and len(listed.err.splitlines()) == 1
        assert "squidmesh migrate" in listed.err
        migrated = await _cli("migrate", "--json", dsn=empty)
        assert migrated.json()["applied"][0] == "0001_initial"
        again, listed = await _cli_all(["migrate"], ["runs", "list"], dsn=empty)
        assert (again.code, again.out.strip()) == (0, "schema is up to date")
        assert (listed.code, listed.out.strip()) == (0, "no runs")
    finally:
        await drop_database(pg_admin_dsn, name)


# -- reads ---------------------------------------------------------------------


async def test_list_counts_and_show(store: RunStore, dsn: str) -> None:
    pending = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    nightly = await store.create_run(INVOICE_REMINDER, {}, trigger="nightly")
    failed = await _finished(store, "failed", last_error={"message": "boom"})
    completed = await _finished(store, "completed", context={"done": True})
    etl = await store.create_run(ETL_DAILY, {})
    newest_first = [etl, completed, failed, nightly, pending]

    (
        page1,
        show,
        show_json,
        counts,
        counts_etl,
        by_status,
        by_trigger,
        by_wf,
        table,
        bad,
    ) = await _cli_all(
        ["runs", "list", "--json", "--limit", "2"],
        ["runs", "show", str(failed.id)],
        ["runs", "show", str(completed.id), "--json"],
        ["runs", "counts", "--json"],
        ["runs", "counts", "--workflow", "etl.daily"],
        ["runs", "list", "--json", "--status", "pending", "--status", "failed"],
        ["runs", "list", "--json", "--trigger", "nightly"],
        ["runs", "list", "--json", "--workflow", "etl.daily"],
        ["runs", "list"],
        ["runs", "list", "--cursor", "not-a-cursor"],
        dsn=dsn,
    )
    # Pages: --limit and --cursor walk every run once, newest first.
    first = page1.json()
    assert [r["id"] for r in first["runs"]] == [str(r.id) for r in newest_first[:2]]
    assert first["next_cursor"]
    assert not set(HISTORY_FIELDS) & set(first["runs"][0])
    page2 = (await _cli("runs", "list", "--json", "--cursor", first["next_cursor"], dsn=dsn)).json()
    assert [r["id"] for r in page2["runs"]] == [str(r.id) for r in newest_first[2:]]
    assert page2["next_cursor"] is None
    # The runs as their Struct JSON: decoding gives back the stored run.
    assert msgspec.json.decode(json.dumps(first["runs"][0]), type=Run) == etl

    # Filters.
    assert [r["id"] for r in by_status.json()["runs"]] == [
        str(r.id) for r in (etl, failed, nightly, pending)
    ]
    assert [r["id"] for r in by_trigger.json()["runs"]] == [str(nightly.id)]
    assert [r["id"] for r in by_wf.json()["runs"]] == [str(etl.id)]

    # The table: a header, one line per run, newest first; no cursor line.
    assert table.code == 0, table
    lines = table.out.splitlines()
    header = ["ID", "WORKFLOW", "TRIGGER", "STATUS", "STEP", "CREATED", "REPLAY_OF"]
    assert lines[0].split() == header
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [str(r.id) for r in newest_first]
    assert all(len(row) == len(header) for row in rows)
    assert rows[2][1:5] == [
        "billing.invoice_reminder",
        "invoice_delivery",
        "failed",
        "load_invoice",
    ]
    assert rows[2][5] == failed.inserted_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "next cursor" not in table.out
    paged = await _cli("runs", "list", "--limit", "4", dsn=dsn)
    assert paged.out.splitlines()[-1].startswith("next cursor: ")

    # An invalid cursor is an error of the library: exit 1, one line.
    assert bad.code == 1 and bad.err.startswith("error: InvalidCursor"), bad

    # Counts: every status, zeros included; the text has a total.
    assert counts.json() == {
        **{s.value: 0 for s in RunStatus},
        "pending": 3,
        "failed": 1,
        "completed": 1,
    }
    assert counts_etl.code == 0
    count_lines = dict(line.split() for line in counts_etl.out.splitlines()[1:])
    assert count_lines["pending"] == "1" and count_lines["total"] == "1"

    # Show: the fields as text, the run as JSON.
    assert show.code == 0, show
    fields = dict(line.split(None, 1) for line in show.out.splitlines())
    assert fields["id"] == str(failed.id)
    assert fields["status"] == "failed"
    assert fields["last_error"] == '{"message":"boom"}'
    assert fields["version"] == str(failed.version)
    assert show_json.run() == completed
    assert not set(HISTORY_FIELDS) & set(show_json.json())


async def test_dsn_before_or_after_the_command(store: RunStore, dsn: str) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    closed = f"postgresql://x@127.0.0.1:{_closed_port()}/db"
    show = ("runs", "show", str(run.id), "--json")
    results = await asyncio.gather(
        # After the command, before it, and between the levels; the last one
        # given wins, and any beats $SQUIDMESH_DSN.
        _cli(*show, "--dsn", dsn, dsn=closed),
        _cli("--dsn", dsn, *show),
        _cli("--dsn", closed, "runs", "--dsn", closed, "show", str(run.id), "--dsn", dsn),
    )
    assert results[0].run() == run
    assert results[1].run() == run
    assert results[2].code == 0 and f"id               {run.id}" in results[2].out


async def test_show_history_timeline(tmp_path: Path, store: RunStore, dsn: str) -> None:
    (tmp_path / "cli_workflows.py").write_text(WORKFLOWS_MODULE, encoding="utf-8")
    run = await store.create_run(INVOICE_REMINDER, {**PAYLOAD, "note": "VIP"})
    await store.transition_run(run.id, "running")
    load = await store.begin_step(run.id, "load_invoice", {"invoice_id": "inv_5"})
    first = await store.begin_attempt(load.id)
    await store.fail_attempt(first.id, {"message": "ledger API 503"})
    second = await store.begin_attempt(load.id)
    await store.complete_attempt(second.id)
    await store.complete_step(load.id, {"amount_cents": 5_000})
    approve = await store.begin_step(run.id, "approve", {"amount_cents": 5_000})
    attempt = await store.begin_attempt(approve.id)
    await store.pause_run(
        run.id, approve.id, attempt.id, squidmesh.RunChanges(current_step="approve")
    )
    await store.complete_attempt(attempt.id)
    await store.complete_manual_step(
        approve.id,
        {"approved": True},
        {"type": "approved", "actor": "dana@finance", "comment": "ok"},
    )
    await store.transition_run(run.id, "running", current_step="send_email")
    send = await store.begin_step(run.id, "send_email", {})
    await store.fail_step(send.id, {"message": "SMTP down"})
    await store.transition_run(run.id, "failed", current_step=None)
    full = await store.get_run(run.id, include_history=True)

    text, as_json, declared = await _cli_all(
        ["runs", "show", str(run.id), "--history"],
        [
            "runs",
            "show",
            str(run.id),
            "--history",
            "--json",
            "--workflows",
            "cli_workflows:WORKFLOWS",
        ],
        ["runs", "show", str(run.id), "--history", "--workflows", "cli_workflows:INVOICE"],
        dsn=dsn,
        cwd=tmp_path,
    )
    # JSON: the run with its whole history, as get_run(include_history=True) reads it.
    assert as_json.run() == full
    assert all(as_json.json()[name] is not None for name in HISTORY_FIELDS)

    # Text: the fields, the steps, then the timeline sorted by time.
    assert text.code == 0, text
    out = text.out
    assert "\nsteps\n" in out and "\ntimeline\n" in out
    entries = out.split("\ntimeline\n", 1)[1].splitlines()
    stamps = [line.split()[0] for line in entries]
    assert stamps == sorted(stamps)
    assert entries[0].split()[1] == "+0.000s"
    events = [line.split(maxsplit=2)[2] for line in entries]
    expected = [
        "run created: pending",
        "run pending -> running",
        'step \'load_invoice\' started, input {"invoice_id":"inv_5"}',
        "attempt 1 of 'load_invoice' started",
        "attempt 1 of 'load_invoice' failed: ledger API 503",
        "attempt 2 of 'load_invoice' completed",
        "step 'load_invoice' completed, output {\"amount_cents\":5000}",
        "audit: paused at 'approve'",
        "run running -> paused",
        "attempt 1 of 'approve' completed",
        "audit: approved at 'approve' by dana@finance: 'ok'",
        "run paused -> running",
        "step 'send_email' failed: SMTP down",
        "run running -> failed",
    ]
    positions = [events.index(item) for item in expected]
    assert positions == sorted(positions), events
    # 5 status changes, 4 steps started or finished... every entry is there once.
    assert len(events) == 19, events
    # Without the workflows only the steps that ran are listed; with them, all declared.
    steps_part = out.split("\nsteps\n", 1)[1].split("\ntimeline\n", 1)[0]
    assert "record_rejection" not in steps_part
    assert declared.code == 0, declared
    declared_steps = declared.out.split("\nsteps\n", 1)[1].split("\ntimeline\n", 1)[0]
    assert "record_rejection  waiting" in declared_steps


async def test_run_not_found_is_exit_3(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "cli_workflows.py").write_text(WORKFLOWS_MODULE, encoding="utf-8")
    unknown = str(uuid.uuid4())
    results = await _cli_all(
        ["runs", "show", unknown, "--history", "--json"],
        ["runs", "show", "not-a-uuid"],
        ["runs", "cancel", unknown],
        ["runs", "replay", "42", "--workflows", "cli_workflows:WORKFLOWS"],
        dsn=dsn,
        cwd=tmp_path,
    )
    for result in results:
        assert result.code == 3, result
        assert result.out == "", result
        assert result.err.startswith("error: run ") and result.err.endswith("not found\n"), result


# -- writes --------------------------------------------------------------------


async def test_cancel(store: RunStore, dsn: str) -> None:
    pending = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    running = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(running.id, "running")
    completed = await _finished(store, "completed")

    now_cancelled, now_cancelling, refused = await _cli_all(
        ["runs", "cancel", str(pending.id)],
        ["runs", "cancel", str(running.id), "--json"],
        ["runs", "cancel", str(completed.id), "--json"],
        dsn=dsn,
    )
    assert now_cancelled.code == 0, now_cancelled
    assert now_cancelled.out.strip() == f"run {pending.id}: cancelled"
    assert (await store.get_run(pending.id)).status is RunStatus.CANCELLED
    cancelling = now_cancelling.run()
    assert cancelling == await store.get_run(running.id)
    assert cancelling.status is RunStatus.CANCELLING
    # Refused: exit 4, one line, nothing written.
    assert refused.code == 4, refused
    assert refused.out == ""
    assert refused.err == (
        "error: InvalidTransition: cannot move run from 'completed' to 'cancelling'\n"
    )
    assert await store.get_run(completed.id) == completed
    again = await _cli("runs", "cancel", str(pending.id), dsn=dsn)
    assert again.code == 4, again


async def test_replay_with_workflows_module(tmp_path: Path, store: RunStore, dsn: str) -> None:
    (tmp_path / "cli_workflows.py").write_text(WORKFLOWS_MODULE, encoding="utf-8")
    failed = await _finished(store, "failed", last_error={"message": "boom"})
    as_json, as_text, no_attr, no_module, not_workflows, unregistered = await _cli_all(
        ["runs", "replay", str(failed.id), "--workflows", "cli_workflows:WORKFLOWS", "--json"],
        ["runs", "replay", str(failed.id), "--workflows", "cli_workflows:INVOICE"],
        ["runs", "replay", str(failed.id), "--workflows", "cli_workflows:MISSING"],
        ["runs", "replay", str(failed.id), "--workflows", "no_such_module_xyz:W"],
        ["runs", "replay", str(failed.id), "--workflows", "cli_workflows:NOT_WORKFLOWS"],
        ["runs", "replay", str(failed.id), "--workflows", "cli_workflows:ONLY_ETL"],
        dsn=dsn,
        cwd=tmp_path,
    )
    replay = as_json.run()
    assert replay.replayed_from_run_id == failed.id
    assert replay.status is RunStatus.PENDING
    assert replay.payload == failed.payload and replay.trigger == failed.trigger
    assert await store.get_run(replay.id) == replay
    assert as_text.code == 0, as_text
    assert f"a replay of {failed.id}" in as_text.out
    replays = await store.list_runs(replayed_from=failed.id)
    assert len(replays) == 2
    for result, says in (
        (no_attr, "has no attribute 'MISSING'"),
        (no_module, "cannot import module 'no_such_module_xyz'"),
        (not_workflows, "names a dict, not a Workflow or a non-empty list of workflows"),
        (unregistered, "InvalidWorkflow"),
    ):
        assert result.code == 1, result
        assert result.err.startswith("error: ") and says in result.err, result
        assert len(result.err.splitlines()) == 1, result
    assert (await store.get_run(failed.id)) == failed


async def test_prune_dry_run_then_for_real(store: RunStore, dsn: str) -> None:
    done = await _finished(store, "completed")
    step = await store.begin_step(done.id, "load_invoice")
    await store.complete_attempt((await store.begin_attempt(step.id)).id)
    await store.complete_step(step.id)
    await _finished(store, "failed", last_error={"message": "x"})
    cancelled = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.cancel_run(cancelled.id)
    pending = await store.create_run(INVOICE_REMINDER, PAYLOAD)

    dry_json, dry_text, too_recent = await _cli_all(
        ["runs", "prune", "--older-than", "0s", "--dry-run", "--json"],
        ["runs", "prune", "--older-than", "0s", "--dry-run"],
        ["runs", "prune", "--older-than", "2w", "--json"],
        dsn=dsn,
    )
    report = {
        "runs": 3,
        "step_runs": 1,
        "attempts": 1,
        "by_status": {"failed": 1, "completed": 1, "cancelled": 1},
    }
    assert dry_json.json() == {**report, "dry_run": True}
    assert dry_text.code == 0, dry_text
    assert dry_text.out.startswith("would delete 3 run(s) not written for 0s")
    assert too_recent.json()["runs"] == 0
    assert await store.count_runs() == 4  # nothing deleted yet

    real = await _cli("runs", "prune", "--older-than", "0s", dsn=dsn)
    assert real.code == 0, real
    assert real.out == (
        "deleted 3 run(s) not written for 0s (failed 1, completed 1, cancelled 1), "
        "with 1 step run(s) and 1 attempt(s)\n"
    )
    assert [r.id for r in await store.list_runs()] == [pending.id]
    empty = await _cli("runs", "prune", "--older-than", "90m", "--json", dsn=dsn)
    assert empty.json() == {
        "runs": 0,
        "step_runs": 0,
        "attempts": 0,
        "by_status": {"failed": 0, "completed": 0, "cancelled": 0},
        "dry_run": False,
    }


# -- the installed script ------------------------------------------------------


async def test_console_script(tmp_path: Path, store: RunStore, dsn: str) -> None:
    if not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT}: install the package (pip install -e .)")
    (tmp_path / "cli_workflows.py").write_text(WORKFLOWS_MODULE, encoding="utf-8")
    failed = await _finished(store, "failed")
    script = (str(SCRIPT),)
    version, replayed = await asyncio.gather(
        _cli("--version", program=script),
        # The module is found in the working directory, which the script
        # (unlike python -m) does not put on sys.path by itself.
        _cli(
            "runs",
            "replay",
            str(failed.id),
            "--workflows",
            "cli_workflows:WORKFLOWS",
            "--json",
            "--dsn",
            dsn,
            cwd=tmp_path,
            program=script,
        ),
    )
    assert version.code == 0 and version.out.strip() == f"squidmesh {squidmesh.__version__}"
    assert replayed.run().replayed_from_run_id == failed.id


def _readme_cli_block() -> tuple[Path, str]:
    """The console script, and the sh block of the README's CLI section."""
    script = Path(sys.executable).with_name("squidmesh")
    if not script.exists():
        pytest.skip(f"no console script at {script} (pip install -e . installs it)")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Operating from a shell (the `squidmesh` command)", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert match, "the README's CLI section has no sh block"
    return script, match.group(1)


async def test_the_readme_cli_block_runs_as_written(dsn: str, store: RunStore) -> None:
    """The README's example commands, through the installed console script."""
    script, block = _readme_cli_block()
    run = await store.create_run("billing.invoice_reminder", {"account_id": "a"})
    env = {
        **os.environ,
        "SQUIDMESH_DSN": dsn,
        "RUN": str(run.id),
        "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", "set -euo pipefail\n" + block],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"to_status": "pending"' in done.stdout or '"to_status":"pending"' in done.stdout
