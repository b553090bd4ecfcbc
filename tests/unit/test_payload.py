"""Payload defaults and validation: every rule, all problems reported together."""

from __future__ import annotations

import copy
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from squidmesh._errors import InvalidPayload
from squidmesh._payload import build_payload
from squidmesh._workflow import NOW_ISO8601, TODAY_ISO8601, Field, Trigger

NOW = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)

INVOICE = Trigger(
    "invoice_delivery",
    payload=[
        Field("account_id", str),
        Field("note", str, required=False),
        Field("posted_on", str, default=TODAY_ISO8601),
    ],
)

TYPED = Trigger(
    "typed",
    [
        Field("s", str),
        Field("i", int),
        Field("f", float),
        Field("b", bool),
        Field("d", dict),
        Field("l", list),
    ],
)

GOOD_TYPED: dict[str, Any] = {"s": "x", "i": 1, "f": 1.5, "b": True, "d": {}, "l": []}


def rejected(trigger: Trigger, payload: object, **kwargs: Any) -> InvalidPayload:
    with pytest.raises(InvalidPayload) as info:
        build_payload(trigger, payload, **kwargs)
    return info.value


# -- shape ------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [None, [], [("a", 1)], "account_id", 3, ("a",)])
def test_non_dict_payload_expects_a_map(payload: object) -> None:
    error = rejected(INVOICE, payload)
    assert error.expected_map is True
    assert error.missing_fields == []
    assert error.unknown_fields == []
    assert error.invalid_types == {}


def test_trigger_without_fields_accepts_only_empty_map() -> None:
    trigger = Trigger("nightly", cron="0 9 * * *")
    assert build_payload(trigger, {}) == {}
    error = rejected(trigger, {"x": 1})
    assert error.unknown_fields == ["x"]
    assert error.expected_map is False


def test_valid_payload_passes_through() -> None:
    result = build_payload(TYPED, dict(GOOD_TYPED))
    assert result == GOOD_TYPED
    assert type(result) is dict


def test_dict_subclass_is_a_map_and_result_is_plain_dict() -> None:
    payload = OrderedDict(GOOD_TYPED)
    result = build_payload(TYPED, payload)
    assert result == GOOD_TYPED
    assert type(result) is dict


def test_result_follows_declaration_order() -> None:
    payload = {"note": "n", "account_id": "a", "posted_on": "2020-01-01"}
    result = build_payload(INVOICE, payload)
    assert list(result) == ["account_id", "note", "posted_on"]


# -- missing and unknown -------------------------------------------------------------


def test_missing_required_fields_are_all_listed_sorted() -> None:
    error = rejected(TYPED, {"s": "x"})
    assert error.missing_fields == ["b", "d", "f", "i", "l"]
    assert error.unknown_fields == []
    assert error.invalid_types == {}
    assert "missing fields: b, d, f, i, l" in str(error)


def test_optional_field_may_be_absent_and_is_not_filled() -> None:
    result = build_payload(INVOICE, {"account_id": "a"}, now=NOW)
    assert "note" not in result


def test_unknown_fields_are_all_listed_sorted() -> None:
    error = rejected(INVOICE, {"account_id": "a", "zeta": 1, "alpha": 2})
    assert error.unknown_fields == ["alpha", "zeta"]
    assert error.missing_fields == []
    assert error.invalid_types == {}


def test_non_string_keys_are_unknown_by_repr() -> None:
    error = rejected(INVOICE, {"account_id": "a", 1: "x", None: "y", ("t",): 0})
    assert error.unknown_fields == sorted(["1", "None", "('t',)"])


def test_non_string_key_alone_is_unknown() -> None:
    error = rejected(Trigger("t"), {b"account_id": "a"})
    assert error.unknown_fields == ["b'account_id'"]


# -- types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("s", 1, "expected str, got int"),
        ("s", b"x", "expected str, got bytes"),
        ("i", "1", "expected int, got str"),
        ("i", True, "expected int, got bool"),
        ("i", 1.0, "expected int, got float"),
        ("f", "1.5", "expected float, got str"),
        ("f", False, "expected float, got bool"),
        ("b", 1, "expected bool, got int"),
        ("b", "true", "expected bool, got str"),
        ("d", [], "expected dict, got list"),
        ("l", {}, "expected list, got dict"),
        ("l", (1, 2), "expected list, got tuple"),
        ("l", {1, 2}, "expected list, got set"),
        ("s", None, "expected str, got None"),
    ],
)
def test_wrong_type(field: str, value: object, message: str) -> None:
    error = rejected(TYPED, {**GOOD_TYPED, field: value})
    assert error.invalid_types == {field: message}
    assert error.missing_fields == []
    assert error.unknown_fields == []


def test_int_is_accepted_for_float() -> None:
    result = build_payload(TYPED, {**GOOD_TYPED, "f": 3})
    assert result["f"] == 3
    assert type(result["f"]) is int


def test_subclasses_are_not_the_declared_type() -> None:
    class Text(str):
        pass

    error = rejected(TYPED, {**GOOD_TYPED, "s": Text("x")})
    assert error.invalid_types == {"s": "expected str, got Text"}


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("f", float("nan"), "$.f: nan is not a finite number"),
        ("f", float("inf"), "$.f: inf is not a finite number"),
        ("s", "a\x00b", "$.s: string contains a NUL character"),
        ("s", "\x00", "$.s: string contains a NUL character"),
        ("s", "é\x00", "$.s: string contains a NUL character"),
        ("s", "caf\udce9", "$.s: string contains a lone surrogate"),
        ("l", [1, {2, 3}], "$.l[1]: set is not a JSON value"),
        ("l", [(1, 2)], "$.l[0]: tuple is not a JSON value"),
        ("d", {"k": float("-inf")}, "$.d.k: -inf is not a finite number"),
        ("d", {1: "x"}, "$.d: key 1 is not a string"),
        ("d", {"k": object()}, "$.d.k: object is not a JSON value"),
        ("d", {"k\x00": 1}, "contains a NUL character"),
    ],
)
def test_values_json_cannot_store(field: str, value: object, fragment: str) -> None:
    error = rejected(TYPED, {**GOOD_TYPED, field: value})
    assert list(error.invalid_types) == [field]
    assert fragment in error.invalid_types[field]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        pytest.param("i", 10**4300, "$.i: int has more than 640 digits", id="int-field"),
        pytest.param("i", -(10**4300), "$.i: int has more than 640 digits", id="negative"),
        pytest.param("i", 10**640, "$.i: int has more than 640 digits", id="one-past"),
        pytest.param("f", 10**4300, "$.f: int has more than 640 digits", id="float-field"),
        pytest.param("d", {"k": [10**4300]}, "$.d.k[0]: int has more than", id="in-dict"),
        pytest.param("l", [1, 10**4300], "$.l[1]: int has more than", id="in-list"),
    ],
)
def test_ints_too_big_to_store_are_invalid(field: str, value: object, fragment: str) -> None:
    error = rejected(TYPED, {**GOOD_TYPED, field: value})
    assert list(error.invalid_types) == [field]
    assert fragment in error.invalid_types[field]
    assert "invalid types: " + field in str(error)


def test_the_largest_allowed_int_is_accepted() -> None:
    largest = 10**640 - 1
    payload = {**GOOD_TYPED, "i": largest, "f": -largest, "d": {"k": largest}}
    assert build_payload(TYPED, payload) == payload


def test_a_factory_default_too_big_to_store_is_invalid() -> None:
    trigger = Trigger("t", [Field("n", int, default=lambda: 10**4300)])
    error = rejected(trigger, {})
    assert list(error.invalid_types) == ["n"]


def test_deeply_nested_json_is_accepted() -> None:
    value: dict[str, Any] = {"a": [{"b": [1, 2.5, None, True, "x"]}]}
    assert build_payload(TYPED, {**GOOD_TYPED, "d": value})["d"] is value


def test_none_is_accepted_for_optional_fields_only() -> None:
    assert build_payload(INVOICE, {"account_id": "a", "note": None}, now=NOW)["note"] is None
    assert (
        build_payload(INVOICE, {"account_id": "a", "posted_on": None}, now=NOW)["posted_on"] is None
    )
    error = rejected(INVOICE, {"account_id": None})
    assert error.invalid_types == {"account_id": "expected str, got None"}


# -- all problems together ------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    payload = {
        "s": 5,
        "i": True,
        "f": float("nan"),
        "l": ["ok", {1}],
        "extra": 1,
        2: "two",
    }
    error = rejected(TYPED, payload)
    assert error.expected_map is False
    assert error.missing_fields == ["b", "d"]
    assert error.unknown_fields == ["2", "extra"]
    assert set(error.invalid_types) == {"s", "i", "f", "l"}
    assert error.invalid_types["s"] == "expected str, got int"
    assert error.invalid_types["i"] == "expected int, got bool"
    assert "not a finite number" in error.invalid_types["f"]
    assert "$.l[1]" in error.invalid_types["l"]
    message = str(error)
    assert "missing fields: b, d" in message
    assert "unknown fields: 2, extra" in message
    assert "s (expected str, got int)" in message


# -- defaults ----------------------------------------------------------------------


def test_today_default_uses_utc_date_of_now() -> None:
    result = build_payload(INVOICE, {"account_id": "a"}, now=NOW)
    assert result == {"account_id": "a", "posted_on": "2024-02-29"}


def test_today_default_converts_an_aware_now_to_utc() -> None:
    # 23:30 on the 28th in UTC-05:00 is already the 29th in UTC.
    local = datetime(2024, 2, 28, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert build_payload(INVOICE, {"account_id": "a"}, now=local)["posted_on"] == "2024-02-29"


def test_now_default_is_iso8601_utc_with_microseconds() -> None:
    trigger = Trigger("t", [Field("at", str, default=NOW_ISO8601)])
    assert build_payload(trigger, {}, now=NOW) == {"at": "2024-02-29T23:59:58.123456+00:00"}
    whole_second = NOW.replace(microsecond=0)
    assert build_payload(trigger, {}, now=whole_second)["at"] == "2024-02-29T23:59:58.000000+00:00"


def test_now_default_treats_naive_now_as_utc() -> None:
    trigger = Trigger("t", [Field("at", str, default=NOW_ISO8601)])
    naive = datetime(2024, 1, 2, 3, 4, 5, 6)
    assert build_payload(trigger, {}, now=naive)["at"] == "2024-01-02T03:04:05.000006+00:00"


def test_now_default_converts_aware_now_to_utc() -> None:
    trigger = Trigger("t", [Field("at", str, default=NOW_ISO8601)])
    local = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert build_payload(trigger, {}, now=local)["at"] == "2024-01-02T01:04:05.000006+00:00"


def test_sentinel_defaults_use_the_current_time_without_now() -> None:
    trigger = Trigger(
        "t", [Field("day", str, default=TODAY_ISO8601), Field("at", str, default=NOW_ISO8601)]
    )
    before = datetime.now(UTC)
    result = build_payload(trigger, {})
    after = datetime.now(UTC)
    at = datetime.fromisoformat(result["at"])
    assert at.utcoffset() == timedelta(0)
    assert before <= at <= after
    assert result["day"] in {before.date().isoformat(), after.date().isoformat()}
    assert date.fromisoformat(result["day"])


def test_given_value_wins_over_default() -> None:
    result = build_payload(INVOICE, {"account_id": "a", "posted_on": "1999-12-31"}, now=NOW)
    assert result["posted_on"] == "1999-12-31"


def test_value_default() -> None:
    trigger = Trigger("t", [Field("n", int, default=7), Field("f", float, default=0.5)])
    assert build_payload(trigger, {}) == {"n": 7, "f": 0.5}


def test_mutable_value_default_is_copied_per_payload() -> None:
    template: dict[str, Any] = {"tags": ["a"]}
    trigger = Trigger("t", [Field("meta", dict, default=template)])
    first = build_payload(trigger, {})
    first["meta"]["tags"].append("changed")
    second = build_payload(trigger, {})
    assert second == {"meta": {"tags": ["a"]}}
    assert template == {"tags": ["a"]}


def test_callable_default_is_called_per_payload() -> None:
    calls: list[int] = []

    def next_number() -> int:
        calls.append(1)
        return len(calls)

    trigger = Trigger("t", [Field("n", int, default=next_number), Field("l", list, default=list)])
    assert build_payload(trigger, {}) == {"n": 1, "l": []}
    assert build_payload(trigger, {}) == {"n": 2, "l": []}
    assert build_payload(trigger, {"n": 10}) == {"n": 10, "l": []}
    assert len(calls) == 2
    assert build_payload(trigger, {})["l"] is not build_payload(trigger, {})["l"]


def test_callable_default_result_is_validated() -> None:
    trigger = Trigger(
        "t",
        [Field("n", int, default=lambda: "seven"), Field("x", float, default=lambda: float("nan"))],
    )
    error = rejected(trigger, {})
    assert error.invalid_types["n"] == "expected int, got str"
    assert "not a finite number" in error.invalid_types["x"]


def test_field_with_default_is_never_missing_even_if_required() -> None:
    trigger = Trigger("t", [Field("n", int, required=True, default=1)])
    assert build_payload(trigger, {}) == {"n": 1}


def test_defaults_are_applied_even_when_other_fields_fail() -> None:
    # Defaults are applied first, so only the genuinely missing field is reported.
    error = rejected(INVOICE, {"note": 3}, now=NOW)
    assert error.missing_fields == ["account_id"]
    assert error.invalid_types == {"note": "expected str, got int"}


# -- the input is never changed -------------------------------------------------


def test_input_is_not_mutated_and_result_is_new() -> None:
    payload: dict[str, Any] = {"account_id": "a", "note": "hi"}
    snapshot = copy.deepcopy(payload)
    result = build_payload(INVOICE, payload, now=NOW)
    assert payload == snapshot
    assert "posted_on" not in payload
    assert result is not payload
    result["account_id"] = "changed"
    assert payload["account_id"] == "a"


def test_input_is_not_mutated_when_rejected() -> None:
    payload: dict[object, Any] = {"note": 1, "x": [1], 5: None}
    snapshot = copy.deepcopy(payload)
    rejected(INVOICE, payload, now=NOW)
    assert payload == snapshot


def test_complete_payload_returns_equal_new_dict() -> None:
    payload = dict(GOOD_TYPED)
    result = build_payload(TYPED, payload)
    assert result == payload
    assert result is not payload


@pytest.mark.parametrize("value", ["plain", "", "café", "\U0001f600 emoji"])
def test_storable_strings_are_taken_as_given(value: str) -> None:
    assert build_payload(TYPED, {**GOOD_TYPED, "s": value})["s"] is value


@pytest.mark.parametrize(
    ("types", "no_floats"),
    [
        ((), True),
        ((str, int, bool), True),
        ((str, float), False),
        ((str, dict), False),
        ((list,), False),
    ],
)
def test_a_trigger_knows_whether_its_payloads_can_hold_a_float(
    types: tuple[type, ...], no_floats: bool
) -> None:
    # A payload of a trigger whose fields cannot hold a float is encoded
    # without the look for exponents (1e300 must stay a float in jsonb).
    trigger = Trigger("t", [Field(f"f{i}", t, required=False) for i, t in enumerate(types)])
    assert trigger._no_floats is no_floats
