"""``squidmesh scheduler`` in a subprocess: it starts, creates a due run, and
stops on SIGTERM or SIGINT (Ctrl-C) with exit status 0.

The workflows module has a ``* * * * *`` trigger, which is due the moment a
scheduler first sees it (its latest tick, at most a minute old): no test
waits for a wall-clock minute.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from squidmesh._cli import main
from squidmesh.testing import create_database, drop_database

WORKFLOWS_MODULE = textwrap.dedent(
    """
    from squidmesh import Field, Step, Trigger, Workflow

    EVERY_MINUTE = Workflow(
        "cli.every_minute",
        triggers=[
            Trigger("manual", [Field("note", str)]),
            Trigger("tick", [Field("source", str, default="cron")], cron="* * * * *"),
        ],
        steps=[Step("work")],
    )
    WORKFLOWS = [EVERY_MINUTE]
    """
)

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    name = f"cron_wf_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(WORKFLOWS_MODULE, encoding="utf-8")
    (tmp_path / "module_name").write_text(name, encoding="utf-8")
    return tmp_path


async def _start(module_dir: Path, dsn: str, *extra: str) -> asyncio.subprocess.Process:
    module = (module_dir / "module_name").read_text(encoding="utf-8")
    env = {**os.environ}
    env.pop("SQUIDMESH_DSN", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "squidmesh",
        "scheduler",
        "--workflows",
        f"{module}:WORKFLOWS",
        "--dsn",
        dsn,
        *extra,
        cwd=module_dir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_until(proc: asyncio.subprocess.Process, text: str, within: float) -> list[str]:
    """stderr lines up to and including the first that contains ``text``."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {text!r} in {within} s: {lines}"
        line = (await asyncio.wait_for(proc.stderr.readline(), remaining)).decode()
        assert line, f"stderr closed before {text!r} (exit {await proc.wait()}): {lines}"
        lines.append(line)
        if text in line:
            return lines


async def _runs(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT id, trigger, idempotency_key, payload::text AS payload FROM squidmesh.runs"
            " WHERE workflow = 'cli.every_minute' ORDER BY idempotency_key"
        )
    finally:
        await conn.close()


async def _stop(proc: asyncio.subprocess.Process, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_the_command_creates_a_due_run_and_stops_on_a_signal_with_status_0(
    module_dir: Path, dsn: str, signum: signal.Signals
) -> None:
    proc = await _start(module_dir, dsn, "--interval", "0.05")
    try:
        started = await _read_until(proc, "scheduler started", within=60)
        assert "1 cron trigger(s) of 1 workflow(s), every 0.05 s" in started[-1]
        # The first call ran before "started": the minute's run exists (and
        # the next minute's, if one began meanwhile).
        run, *later = await _runs(dsn)
        assert len(later) <= 1
        assert run["trigger"] == "tick" and run["idempotency_key"].startswith("cron:tick:")
        assert run["payload"] == '{"source": "cron"}'
        code, err = await _stop(proc, signum)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert f"scheduler stopped ({signum.name})" in err
    assert "Traceback" not in err
    lines = "".join(started) + err
    assert "fired for " in lines and str(run["id"]) in lines


async def test_two_schedulers_create_the_minutes_run_once(module_dir: Path, dsn: str) -> None:
    procs = [await _start(module_dir, dsn, "--interval", "0.01") for _ in range(2)]
    try:
        for proc in procs:
            await _read_until(proc, "scheduler started", within=60)
        await asyncio.sleep(0.3)  # both keep firing meanwhile
        keys = [r["idempotency_key"] for r in await _runs(dsn)]
        assert len(keys) == len(set(keys)) and 1 <= len(keys) <= 2  # 2: a minute turned
        results = [await _stop(proc, signal.SIGTERM) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [code for code, _ in results] == [0, 0], results


async def test_an_unmigrated_database_fails_the_command_at_once(
    module_dir: Path, pg_admin_dsn: str
) -> None:
    name = f"sched_{uuid.uuid4().hex}"
    empty = await create_database(pg_admin_dsn, name)
    try:
        proc = await _start(module_dir, empty)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, err
        text = err.decode()
        assert text.startswith("error: ") and len(text.splitlines()) == 1, text
        assert "squidmesh migrate" in text
    finally:
        await drop_database(pg_admin_dsn, name)


async def test_workflows_that_cannot_be_loaded_fail_the_command(module_dir: Path, dsn: str) -> None:
    module = (module_dir / "module_name").read_text(encoding="utf-8")
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "squidmesh",
        "scheduler",
        "--workflows",
        f"{module}:MISSING",
        "--dsn",
        dsn,
        cwd=module_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 1
    assert err.decode().startswith(f"error: '{module}' has no attribute 'MISSING'")


def test_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SQUIDMESH_DSN", raising=False)
    for argv, says in [
        (["scheduler", "--dsn", "postgresql://x@h/d"], "--workflows"),
        (["scheduler", "--dsn", "postgresql://x@h/d", "--workflows", "nocolon"], "MODULE:ATTR"),
        (["scheduler", "--workflows", "m:W"], "no database"),
        (["scheduler", "--dsn", "postgresql://x@h/d", "--workflows", "m:W", "--interval", "0"],
         "invalid interval '0'"),
        (["scheduler", "--dsn", "postgresql://x@h/d", "--workflows", "m:W", "--interval", "x"],
         "invalid interval 'x'"),
    ]:  # fmt: skip
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and "usage: squidmesh scheduler" in err and says in err, (argv, err)
