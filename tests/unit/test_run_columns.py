"""Every query that returns a run returns the same thirteen columns, as
``_codec.decode_run`` reads them (the list is in the header of sql/queries/runs.sql)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import msgspec
import pytest

from squidmesh import RunStatus, _codec
from squidmesh._sql import Q

RUNS_SQL = Path(__file__).resolve().parents[2] / "sql" / "queries" / "runs.sql"


def _normal(text: str) -> str:
    return " ".join(text.split())


def _documented() -> str:
    """The list as the header of runs.sql writes it (comment lines)."""
    header = re.split(r"(?m)^-- name:", RUNS_SQL.read_text(encoding="utf-8"), maxsplit=1)[0]
    lines = [line[2:] for line in header.splitlines() if line.startswith("--   ")]
    start = next(i for i, line in enumerate(lines) if "uuid_send(r.id) AS id" in line)
    block = []
    for line in lines[start:]:
        block.append(line)
        if line.rstrip().endswith("AS updated_at"):
            break
    return _normal(" ".join(block))


COLUMNS = _documented()


def test_the_documented_list_has_the_decoded_columns() -> None:
    names = re.findall(r"(?:AS (\w+)|r\.(\w+))\s*(?:,|$)", COLUMNS)
    assert [a or b for a, b in names] == [
        "id",
        "workflow",
        "trigger",
        "status",
        "payload",
        "context",
        "current_step",
        "last_error",
        "replayed_from_run_id",
        "version",
        "idempotency_key",
        "inserted_at",
        "updated_at",
    ]
    assert len(names) == _codec.RUN_COLUMNS


@pytest.mark.parametrize("name", sorted(n for n in Q if "uuid_send(r.id) AS id" in Q[n]))
def test_a_query_returns_the_run_columns_as_listed(name: str) -> None:
    code = _normal(re.sub(r"--[^\n]*", "", Q[name]))
    assert code.count("pg_catalog.uuid_send(r.id) AS id") == code.count(COLUMNS) >= 1, name


def test_queries_that_return_runs_use_the_list() -> None:
    returning = {n for n in Q if COLUMNS in _normal(re.sub(r"--[^\n]*", "", Q[n]))}
    assert {"get_run", "insert_run", "list_runs_by_status", "select_runs", "claim_runs"} <= (
        returning
    )
    assert not any("run_json" in Q[n] for n in returning)


def test_decode_run_reads_the_columns() -> None:
    raw = UUID("0192d7a4-8d4b-7c3e-9e2a-1b2c3d4e5f60")
    row = (
        raw.bytes,
        "w",
        "t",
        "retrying",
        '{"a": [1, 2.5, null, "\\u00e9"]}',
        '{"n": 12345678901234567890}',
        "step",
        '{"message": "x"}',
        None,
        7,
        "key",
        1735689610.123456,
        -1.000001,
    )
    run = _codec.decode_run(row)
    assert run.id == raw and isinstance(run.id, UUID)
    assert run.status is RunStatus.RETRYING
    assert run.payload == {"a": [1, 2.5, None, "\u00e9"]}
    assert run.context == {"n": 12345678901234567890}
    assert run.last_error == {"message": "x"} and run.current_step == "step"
    assert run.replayed_from_run_id is None
    assert (run.version, run.idempotency_key) == (7, "key")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert run.inserted_at == epoch + timedelta(seconds=1735689610, microseconds=123456)
    assert run.updated_at == epoch - timedelta(seconds=1, microseconds=1)
    assert run.inserted_at.tzinfo is UTC
    # The JSON shape (squidmesh.run_json, still returned by cancel_run_v2) decodes alike.
    assert _codec.decode_run(msgspec.json.encode(run)) == run


def test_float_timestamps_are_exact_to_the_microsecond_from_1900_to_2200() -> None:
    # What PostgreSQL's date_part('epoch', ts) computes: the int64 microseconds
    # divided by 1e6 as a double.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    low = int((datetime(1900, 1, 1, tzinfo=UTC) - epoch).total_seconds()) * 10**6
    high = int((datetime(2200, 1, 1, tzinfo=UTC) - epoch).total_seconds()) * 10**6
    step = (high - low) // 200_003
    values = [*range(low, high, step), low, high, 0, -1, 1, 499_999, 500_000, 999_999]
    expected = [epoch + timedelta(microseconds=micros) for micros in values]
    assert [_codec.decode_time(micros / 1e6) for micros in values] == expected
    converted = _codec.decode_times([micros / 1e6 for micros in values])
    assert converted == expected
    assert all(stamp.tzinfo is UTC for stamp in converted)


def test_decode_runs_is_decode_run_of_each_row() -> None:
    rows = [
        (UUID(int=n).bytes, "w", "t", "pending", "{}", "{}", None, None, None, n, None, n * 1.5, n)
        for n in range(1, 5)
    ]
    assert _codec.decode_runs(rows) == [_codec.decode_run(row) for row in rows]
    assert _codec.decode_runs([]) == []


def test_an_unknown_status_is_refused() -> None:
    row = (b"\x00" * 16, "w", "t", "RUNNING", "{}", "{}", None, None, None, 1, None, 0.0, 0.0)
    with pytest.raises(ValueError, match="RUNNING"):
        _codec.decode_run(row)
