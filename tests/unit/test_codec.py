"""JSON at the asyncpg boundary: what is refused, and what round-trips."""

from __future__ import annotations

import math
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from squidmesh import InvalidRun, Run, RunStatus, _codec
from squidmesh._codec import MAX_DEPTH, MAX_INT_DIGITS, json_problem


class _Thing:
    pass


def _nest(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _nest_dicts(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"k": value}
    return value


ACCEPTED: list[object] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**63 - 1,
    1.5,
    -0.0,
    1e308,
    "",
    "plain",
    "unicode \u00e9\u4e2d\U0001f600",
    "\\u0000 is only text",
    [],
    {},
    {"a": [1, 2.5, "x", None, True, {"b": []}]},
    _nest(MAX_DEPTH - 1),
    _nest_dicts(MAX_DEPTH - 1),
]

REFUSED: list[tuple[object, str]] = [
    (math.nan, "finite"),
    (math.inf, "finite"),
    (-math.inf, "finite"),
    ({"a": [1, math.nan]}, "finite"),
    ("a\x00b", "NUL"),
    ("\ud800", "surrogate"),
    ({"k\udc00": 1}, "surrogate"),
    ({"note": "x\x00"}, "NUL"),
    ({"k\x00": 1}, "NUL"),
    ([["\x00"]], "NUL"),
    ({1: "x"}, "not a string"),
    ({None: "x"}, "not a string"),
    ({("a",): 1}, "not a string"),
    ({"outer": {2.5: 1}}, "not a string"),
    ({1, 2}, "set"),
    (frozenset(), "frozenset"),
    ((1, 2), "tuple"),
    ({"a": (1,)}, "tuple"),
    (_Thing(), "_Thing"),
    (object(), "object"),
    (b"bytes", "bytes"),
    (bytearray(b"x"), "bytearray"),
    (Decimal("1.5"), "Decimal"),
    (datetime.now(UTC), "datetime"),
    (uuid4(), "UUID"),
    (RunStatus.PENDING, "RunStatus"),
    (OrderedDict(a=1), "OrderedDict"),
    (_nest(MAX_DEPTH + 1), "deeper"),
    (_nest_dicts(MAX_DEPTH + 1), "deeper"),
]


@pytest.mark.parametrize("value", ACCEPTED, ids=lambda v: repr(v)[:40])
def test_json_problem_accepts_json_values(value: object) -> None:
    assert json_problem(value) is None


@pytest.mark.parametrize(("value", "needle"), REFUSED, ids=lambda v: repr(v)[:40])
def test_json_problem_refuses(value: object, needle: str) -> None:
    problem = json_problem(value)
    assert problem is not None
    assert needle in problem


def test_json_problem_names_the_path() -> None:
    problem = json_problem({"a": {"b": [0, 1, math.nan]}}, "context")
    assert problem is not None
    assert problem.startswith("context.a.b[2]:")
    assert json_problem(math.inf).startswith("$")  # type: ignore[union-attr]


def test_bool_subclass_and_int_subclass_are_refused() -> None:
    class MyInt(int):
        pass

    class MyStr(str):
        pass

    assert json_problem(MyInt(3)) is not None
    assert json_problem(MyStr("x")) is not None
    assert json_problem({"a": MyInt(1)}) is not None


# -- ints: at most MAX_INT_DIGITS digits ------------------------------------------

LARGEST_INT = 10**MAX_INT_DIGITS - 1


@pytest.fixture
def lowest_int_str_limit() -> Iterator[None]:
    """The lowest int/str conversion limit a process can set, restored afterwards."""
    saved = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(sys.int_info.str_digits_check_threshold)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(saved)


def test_max_int_digits_is_within_every_int_str_limit() -> None:
    # A process may lower its limit to the threshold but no further, so ints
    # within it convert (and msgspec decodes them) in every process.
    assert MAX_INT_DIGITS <= sys.int_info.str_digits_check_threshold


@pytest.mark.parametrize(
    ("value", "path"),
    [
        pytest.param(10**MAX_INT_DIGITS, "$", id="one-past-the-largest"),
        pytest.param(-(10**MAX_INT_DIGITS), "$", id="one-past-the-smallest"),
        pytest.param(10**4300, "$", id="10**4300"),
        pytest.param(-(10**5000), "$", id="-10**5000"),
        pytest.param(2 ** (2**20), "$", id="2**2**20"),
        pytest.param({"a": [0, 10**4300]}, "$.a[1]", id="nested"),
    ],
)
def test_an_int_with_too_many_digits_is_refused_without_converting_it(
    value: object, path: str
) -> None:
    problem = json_problem(value)
    assert problem is not None
    assert problem.startswith(f"{path}: int has more than {MAX_INT_DIGITS} digits")


@pytest.mark.parametrize("value", [LARGEST_INT, -LARGEST_INT], ids=["largest", "smallest"])
def test_the_largest_allowed_int_round_trips_exactly(value: int) -> None:
    assert json_problem(value) is None
    doc = {"n": value, "nested": [value]}
    assert _codec.decode_map(_codec.encode(doc)) == doc


@pytest.mark.usefixtures("lowest_int_str_limit")
def test_the_largest_allowed_int_round_trips_under_the_lowest_int_str_limit() -> None:
    doc = {"pos": LARGEST_INT, "neg": -LARGEST_INT}
    text = _codec.encode(doc)
    assert _codec.decode_map(text) == doc
    assert (
        _codec.decode_run(msgspec.json.encode(_run_json(payload=doc, context=doc))).payload == doc
    )


def test_depth_limit_boundary() -> None:
    # MAX_DEPTH nested containers are fine; one more is refused.
    assert json_problem(_nest(MAX_DEPTH)) is None
    assert json_problem(_nest(MAX_DEPTH + 1)) is not None
    assert json_problem(_nest_dicts(MAX_DEPTH)) is None
    assert json_problem(_nest_dicts(MAX_DEPTH + 1)) is not None
    # Far deeper than Python's recursion limit would allow an unbounded walk.
    assert json_problem(_nest(100_000)) is not None


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": 1, "b": [1, 2, {"c": None}], "d": "\u00e9", "e": 1.25, "f": False},
        {"big": 2**62, "neg": -7, "float": 1e-300, "str": 'tab\tnewline\n"quote"'},
        {"nested": _nest_dicts(50)},
    ],
    ids=lambda v: repr(v)[:30],
)
def test_encode_decode_map_round_trip(value: dict[str, Any]) -> None:
    text = _codec.encode(value)
    assert isinstance(text, str)
    decoded = _codec.decode_map(text)
    assert decoded == value
    assert _codec.decode_opt_map(text) == value


def test_decode_opt_map_none() -> None:
    assert _codec.decode_opt_map(None) is None


def test_decode_map_rejects_a_non_map() -> None:
    with pytest.raises(msgspec.ValidationError):
        _codec.decode_map("[1, 2]")


def test_encode_refuses_oversized_values() -> None:
    big = "x" * (_codec.MAX_ENCODED_BYTES + 1)
    with pytest.raises(InvalidRun) as info:
        _codec.encode({"v": big})
    assert str(_codec.MAX_ENCODED_BYTES) in info.value.reason


RUN_ID = UUID("01890a5d-ac96-7a7b-8c3b-0123456789ab")
SOURCE_ID = UUID("01890a5d-ac96-7a7b-8c3b-ba9876543210")


def _run_json(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": str(RUN_ID),
        "workflow": "billing.invoice_reminder",
        "trigger": "invoice_delivery",
        "status": "running",
        "payload": {"account_id": "acct_1", "posted_on": "2024-05-01"},
        "context": {"attempt": 2},
        "current_step": "approve",
        "last_error": {"message": "boom"},
        "replayed_from_run_id": str(SOURCE_ID),
        "version": 3,
        "inserted_at": "2024-05-01T09:00:00.123456Z",
        "updated_at": "2024-05-01T09:00:01.000001Z",
    }
    doc.update(overrides)
    return doc


def test_decode_run_from_the_database_shape() -> None:
    run = _codec.decode_run(msgspec.json.encode(_run_json()))
    assert isinstance(run, Run)
    assert run.id == RUN_ID
    assert run.status is RunStatus.RUNNING
    assert run.payload == {"account_id": "acct_1", "posted_on": "2024-05-01"}
    assert run.context == {"attempt": 2}
    assert run.current_step == "approve"
    assert run.last_error == {"message": "boom"}
    assert run.replayed_from_run_id == SOURCE_ID
    assert run.version == 3
    assert run.inserted_at == datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)
    assert run.updated_at.tzinfo is not None
    assert run.updated_at.utcoffset() == UTC.utcoffset(None)
    assert run.updated_at.microsecond == 1
    # Without history, the three history fields are absent (None), not empty.
    assert run.step_runs is None
    assert run.steps is None
    assert run.audit_events is None


def test_decode_run_accepts_str_and_nulls() -> None:
    text = msgspec.json.encode(
        _run_json(current_step=None, last_error=None, replayed_from_run_id=None)
    ).decode()
    run = _codec.decode_run(text)
    assert run.current_step is None
    assert run.last_error is None
    assert run.replayed_from_run_id is None


def test_decode_run_rejects_an_unknown_status() -> None:
    with pytest.raises(msgspec.ValidationError):
        _codec.decode_run(msgspec.json.encode(_run_json(status="RUNNING")))


def test_run_struct_round_trip() -> None:
    run = _codec.decode_run(msgspec.json.encode(_run_json()))
    again = _codec.decode_run(msgspec.json.encode(run))
    assert again == run


def test_run_is_frozen() -> None:
    run = _codec.decode_run(msgspec.json.encode(_run_json()))
    with pytest.raises(AttributeError):
        run.status = RunStatus.FAILED  # type: ignore[misc]


@pytest.mark.parametrize(
    "value", [1e300, -1e23, 1.7976931348623157e308, 1.5e16, 5e-324, 2.0, 0.1], ids=repr
)
def test_encoded_floats_keep_a_fraction_or_stay_small(value: float) -> None:
    # jsonb rewrites numbers without exponent; a positive exponent in the text
    # sent would come back as an int. The encoded text must decode to the same
    # float even after that rewrite.
    text = _codec.encode({"v": value, "in_list": [value]})
    assert "e+" not in text
    assert not re.search(r"[0-9]e[0-9]", text)
    decoded = _codec.decode_map(text)
    assert decoded == {"v": value, "in_list": [value]}
    assert type(decoded["v"]) is float


def test_text_that_looks_like_an_exponent_is_untouched() -> None:
    value = {"s": "1e300", "k1e5": [1, "2e9"]}
    assert _codec.decode_map(_codec.encode(value)) == value
