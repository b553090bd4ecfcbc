"""JSON at the asyncpg boundary: msgspec in both directions.

Values cross the boundary as text (``$n::text::jsonb`` in, ``::text`` out) so
that a user's pool with any jsonb codec, or none, behaves the same. Encoders
and decoders are created once and reused.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, Final

import msgspec

from ._types import JSONMap, Run

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
            problem = text_problem(k)
            if problem:
                return f"{path}: key {k!r} {problem}"
            p = _problem(v, f"{path}.{k}", depth + 1)
            if p:
                return p
        return None
    if t is list:
        for i, v in enumerate(value):  # type: ignore[arg-type]
            p = _problem(v, f"{path}[{i}]", depth + 1)
            if p:
                return p
        return None
    return (
        f"{path}: {t.__name__} is not a JSON value (use dict, list, str, int, float, bool or None)"
    )


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character"
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone surrogate (not encodable as UTF-8)"
    return None


def encode(value: object) -> str:
    """Encode an already-checked JSON value to the text a ``::text::jsonb`` parameter takes."""
    data = _encoder.encode(value)
    if _POSITIVE_EXPONENT.search(data):
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


def decode_run(text: str | bytes) -> Run:
    return run_decoder.decode(text)
