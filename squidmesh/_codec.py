"""Values at the asyncpg boundary: JSON with msgspec in both directions, and runs.

JSON crosses the boundary as text (``$n::text::jsonb`` in, ``::text`` out) so
that a user's pool with any jsonb codec, or none, behaves the same. A run
comes back as plain columns of types no pool codec is set for (see
``decode_run``). Encoders and decoders are created once and reused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import msgspec
from asyncpg import Record
from asyncpg.pgproto.pgproto import UUID

from ._types import JSONMap, Run, RunStatus

# A value nested deeper than this is refused before it reaches PostgreSQL,
# whose own parser would fail on a far deeper value with a less clear error.
MAX_DEPTH: Final = 256
# jsonb refuses values over 256 MiB; refuse far earlier with a clear message.
MAX_ENCODED_BYTES: Final = 64 * 1024 * 1024
# The most decimal digits a stored int may have. msgspec writes and reads big
# ints through Python's int/str conversion, which raises past
# sys.get_int_max_str_digits() (4300 by default, settable per process), and
# its decoder also refuses number text longer than 4300 characters. 640 is the
# lowest limit a process can set (sys.int_info.str_digits_check_threshold), so
# an int within it encodes here and decodes back exactly in every process,
# whatever its setting: a row written by one process never becomes unreadable
# in another.
MAX_INT_DIGITS: Final = 640
# Compared against instead of converting to str, which is both slow and the
# very conversion that fails.
_INT_BOUND: Final = 10**MAX_INT_DIGITS

_encoder: Final = msgspec.json.Encoder()
# For the rare value holding a float that needs writing out in full (see encode).
_decimal_encoder: Final = msgspec.json.Encoder(decimal_format="number")
# A number in exponent form with a positive exponent ("1e300", "1.5e16"). Also
# matches such text inside strings: that only costs a walk, never correctness.
_POSITIVE_EXPONENT: Final = re.compile(rb"[0-9]e[0-9]")
# A lone surrogate cannot be encoded as UTF-8, so neither msgspec nor asyncpg
# can send it.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_map_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_opt_map_decoder: Final = msgspec.json.Decoder(dict[str, Any] | None)
run_decoder: Final = msgspec.json.Decoder(Run)


def json_problem(value: object, path: str = "$") -> str | None:
    """Describe why ``value`` is not a storable JSON value, or return None.

    Refuses what msgspec would otherwise encode lossily or PostgreSQL cannot
    store: sets and tuples, arbitrary objects, NaN and infinities, NUL
    characters, non-string keys, nesting deeper than ``MAX_DEPTH``, and ints
    of more than ``MAX_INT_DIGITS`` digits (which could not be read back).
    """
    if _plainly_fine(value):  # a payload field's str or number: no walk
        return None
    return _problem(value, path, 0)


def _problem(value: object, path: str, depth: int) -> str | None:
    # Exact type checks: subclasses (bool of int, enums of str) are decided
    # explicitly rather than by isinstance accidents.
    t = type(value)
    if t is int:
        if -_INT_BOUND < value < _INT_BOUND:  # type: ignore[operator]
            return None
        return (
            f"{path}: int has more than {MAX_INT_DIGITS} digits, more than can be "
            "stored and read back exactly (store it as a string)"
        )
    if value is None or t is bool:
        return None
    if t is str:
        problem = text_problem(value)  # type: ignore[arg-type]
        return f"{path}: string {problem}" if problem else None
    if t is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return None
        return f"{path}: {value!r} is not a finite number"
    if depth >= MAX_DEPTH:
        return f"{path}: nested deeper than {MAX_DEPTH} levels"
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                return f"{path}: key {k!r} is not a string"
            if "\x00" in k or not k.isascii():
                problem = text_problem(k)
                if problem:
                    return f"{path}: key {k!r} {problem}"
            # The common values are decided here, without a call or a path
            # built for them (most of the cost of checking a small map);
            # anything else, or anything doubtful, gets the full check.
            if not _plainly_fine(v):
                p = _problem(v, f"{path}.{k}", depth + 1)
                if p:
                    return p
        return None
    if t is list:
        for i, v in enumerate(value):  # type: ignore[arg-type]
            if not _plainly_fine(v):
                p = _problem(v, f"{path}[{i}]", depth + 1)
                if p:
                    return p
        return None
    return (
        f"{path}: {t.__name__} is not a JSON value (use dict, list, str, int, float, bool or None)"
    )


def _plainly_fine(v: object) -> bool:
    t = type(v)
    if t is str:
        return "\x00" not in v and v.isascii()  # type: ignore[operator, attr-defined]
    if t is int:
        return -_INT_BOUND < v < _INT_BOUND  # type: ignore[operator]
    return v is None or t is bool or (t is float and math.isfinite(v))  # type: ignore[arg-type]


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character"
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone surrogate (not encodable as UTF-8)"
    return None


def encode(value: object, *, floats: bool = True) -> str:
    """Encode an already-checked JSON value to the text a ``::text::jsonb`` parameter takes.

    ``floats=False``: the caller knows ``value`` holds no float (a payload
    of a trigger whose fields cannot), so the look for exponents is skipped.
    """
    data = _encoder.encode(value)
    if floats and _POSITIVE_EXPONENT.search(data):
        # jsonb stores numbers as numeric, whose text form writes every digit
        # and no exponent: 1e300 would come back as a 301-digit int, which is
        # not equal to the float. Written out in full with ".0", the number
        # keeps a fractional scale and decodes back to the same float.
        data = _decimal_encoder.encode(_expand_floats(value))
    if len(data) > MAX_ENCODED_BYTES:
        from ._errors import InvalidRun

        raise InvalidRun(
            f"encoded JSON is {len(data)} bytes; the limit is {MAX_ENCODED_BYTES} bytes"
        )
    return data.decode()


def _expand_floats(value: object) -> object:
    t = type(value)
    if t is float:
        text = _encoder.encode(value)
        if b"e" in text and b"e-" not in text:
            return Decimal(format(Decimal(text.decode()), "f") + ".0")
        return value
    if t is dict:
        return {k: _expand_floats(v) for k, v in value.items()}  # type: ignore[attr-defined]
    if t is list:
        return [_expand_floats(v) for v in value]  # type: ignore[attr-defined]
    return value


def decode_map(text: str) -> JSONMap:
    return _map_decoder.decode(text)


def decode_opt_map(text: str | None) -> JSONMap | None:
    return None if text is None else _map_decoder.decode(text)


#: How many columns a run takes at the start of a row (see sql/queries/runs.sql).
RUN_COLUMNS: Final = 13
_STATUS: Final = {status.value: status for status in RunStatus}
_decode_map: Final = _map_decoder.decode
_from_epoch: Final = datetime.fromtimestamp
_DATETIMES: Final = list[datetime]
_convert: Final = msgspec.convert


def decode_run(row: Record | tuple[Any, ...] | str | bytes) -> Run:
    """The Run of a query's row: its first ``RUN_COLUMNS`` columns.

    Every query that returns runs returns them so (the header of
    sql/queries/runs.sql has the list): ids as their 16 bytes (bytea), the
    jsonb columns as text, the timestamps as float8 seconds since 1970 UTC,
    the rest as text and int8. None of them is a type a pool's codecs are set
    for, so a user's codec for jsonb, json, uuid, timestamptz or timestamp
    changes nothing, and neither does the session's TimeZone. The ids become
    asyncpg's own ``uuid.UUID`` subclass (what asyncpg returns for a uuid
    column), built from the bytes in C; a float8 timestamp converts back to
    the exact microsecond for the years 1900 to 2200.

    A text or bytes value is a run in the JSON shape of ``squidmesh.run_json``
    (which ``squidmesh.cancel_run_v2`` still returns), decoded by msgspec.
    """
    if isinstance(row, (str, bytes)):
        return run_decoder.decode(row)
    return _run(row, _from_epoch(row[11], UTC), _from_epoch(row[12], UTC))


def decode_runs(rows: Sequence[Record | tuple[Any, ...]]) -> list[Run]:
    """``decode_run`` of each row, the timestamps of all converted in one call."""
    stamps = iter(decode_times([t for row in rows for t in (row[11], row[12])]))
    return [
        _run(row, inserted_at, updated_at)
        for row, inserted_at, updated_at in zip(rows, stamps, stamps, strict=True)
    ]


def _run(row: Record | tuple[Any, ...], inserted_at: datetime, updated_at: datetime) -> Run:
    (
        run_id,
        workflow,
        trigger,
        status,
        payload,
        context,
        current_step,
        last_error,
        replayed,
        version,
        idempotency_key,
    ) = row[:11]
    return Run(
        id=UUID(run_id),
        workflow=workflow,
        trigger=trigger,
        status=_STATUS.get(status) or RunStatus(status),
        payload=_decode_map(payload),
        context=_decode_map(context),
        current_step=current_step,
        last_error=None if last_error is None else _decode_map(last_error),
        replayed_from_run_id=None if replayed is None else UUID(replayed),
        version=version,
        idempotency_key=idempotency_key,
        inserted_at=inserted_at,
        updated_at=updated_at,
    )


def decode_status(value: str) -> RunStatus:
    """A status a query returns as text (a dict lookup: ``RunStatus(value)`` costs
    several times more)."""
    return _STATUS.get(value) or RunStatus(value)


def decode_id(value: bytes) -> UUID:
    """An id that a query returns as ``pg_catalog.uuid_send(...)`` (bytea)."""
    return UUID(value)


def decode_time(value: float) -> datetime:
    """A timestamp that a query returns as ``pg_catalog.date_part('epoch', ...)``."""
    return _from_epoch(value, UTC)


def decode_times(values: list[float]) -> list[datetime]:
    """``decode_time`` of each value, in one call: msgspec converts seconds since
    1970 into aware UTC datetimes (lax mode) about five times faster than a
    ``datetime.fromtimestamp`` per value, to the same microsecond."""
    return _convert(values, _DATETIMES, strict=False)
