"""Time-ordered UUIDs (RFC 9562 version 7), generated client-side.

New runs land at the right edge of the primary-key index instead of at random
pages, and ids sort roughly by creation time.
"""

from __future__ import annotations

import os
import time
from uuid import UUID


def uuid7() -> UUID:
    """A new UUIDv7: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b (62 bits)
    return UUID(int=value)


def parse_id(value: object) -> UUID | None:
    """A UUID from a ``UUID`` or its string form; None for anything else.

    Callers turn None into the matching not-found error: an id that is not a
    UUID names nothing, which is not a crash.
    """
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            return None
    return None
