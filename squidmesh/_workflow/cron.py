"""Cron schedules: parse an expression in a time zone, and compute its ticks.

A *tick* is an instant at which a cron trigger is due, as an aware UTC
``datetime`` with whole seconds. Expressions are read by ``cronsim`` (the
parser healthchecks.io runs), in the trigger's time zone (``zoneinfo``; UTC
when the trigger names none), with Debian cron's rules on daylight-saving
days, which ``cronsim`` follows:

- an expression with a fixed minute and hour (``30 2 * * *``) fires once a
  day whatever the clocks do: on a day without 02:30 at the first instant
  after the gap (03:00), on a day with two 02:30s at the first of them;
- an expression with a wildcard minute or hour (``*/15 * * * *``,
  ``0 * * * *``) fires on the instants that match, so it skips the hour that
  does not exist and fires in both passes of the hour that repeats: its runs
  stay evenly spaced in real time.

Only the classic five fields are accepted (minute, hour, day of month, month,
day of week; ``L``, ``LW``, ``#`` and names such as ``MON`` or ``JAN``
included), plus the nicknames ``@yearly``, ``@annually``, ``@monthly``,
``@weekly``, ``@daily``, ``@midnight`` and ``@hourly``. A sixth (seconds)
field is refused: the scheduler fires at most once a second, and six-field
expressions get none of cron's daylight-saving rules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = (
    "CRON_KEY_PREFIX",
    "MAX_CATCH_UP",
    "MAX_CRON_TRIGGER_NAME",
    "CronSchedule",
    "cron_problem",
    "tick_key",
    "timezone_problem",
)

MAX_CATCH_UP: Final = 1000
"""The most missed ticks one cron trigger catches up on (``Trigger(catch_up=...)``)."""

CRON_KEY_PREFIX: Final = "cron:"

# "2026-03-29T01:00:00+00:00": a tick's instant as tick_key writes it.
_TICK_TEXT: Final = 25
MAX_CRON_TRIGGER_NAME: Final = 255 - len(CRON_KEY_PREFIX) - 1 - _TICK_TEXT
"""The longest name of a cron trigger: its runs' idempotency keys
``cron:<trigger>:<tick>`` must fit the 255 characters a key may have."""

_NICKNAMES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS: Final = "minute hour day-of-month month day-of-week"
# Zones whose rules are UTC's for ever: read as datetime.UTC, which needs no
# time zone database and which cronsim iterates without daylight-saving work.
_UTC_NAMES: Final = frozenset({"UTC", "Etc/UTC"})
# A valid check walks at most this many candidates past the one it wants: a
# tick later than `now` met in a reverse walk, or one not after `now` met in
# a forward walk (both only around a repeated hour).
_SLACK: Final = 64
_SECOND: Final = timedelta(seconds=1)
# Where a definition's expression is tried: any fixed instant does, since a
# cron expression repeats within 28 years and cronsim looks 50 ahead.
_PROBE: Final = datetime(2000, 1, 1, tzinfo=UTC)


def tick_key(trigger: str, tick: datetime) -> str:
    """The idempotency key of the run a cron trigger creates for a tick:
    ``cron:<trigger>:<tick>``, the tick as an ISO-8601 UTC instant
    (``cron:nightly:2026-03-29T01:00:00+00:00``)."""
    return f"{CRON_KEY_PREFIX}{trigger}:{tick.astimezone(UTC).isoformat()}"


def _expression(cron: str) -> str:
    """The five fields of ``cron`` (a nickname spelled out).

    Raises:
        ValueError: not five fields.
    """
    text = cron.strip()
    nickname = _NICKNAMES.get(text.lower())
    if nickname is not None:
        return nickname
    count = len(text.split())
    if count != 5:
        raise ValueError(f"expected 5 fields ({_FIELDS}), got {count}")
    return text


def _zone(timezone: str | None) -> tzinfo:
    """The zone named ``timezone`` (UTC for None).

    Raises:
        ValueError: no such zone, or ``localtime``.
    """
    if timezone is None or timezone in _UTC_NAMES:
        return UTC
    if timezone == "localtime":
        # A link to the host's zone: processes on two hosts would disagree.
        raise ValueError("'localtime' is the host's zone; name an IANA zone")
    try:
        return ZoneInfo(timezone)
    except ZoneInfoNotFoundError:
        raise ValueError(
            "no such IANA time zone (e.g. 'Europe/Berlin', 'America/New_York', 'Etc/UTC')"
        ) from None
    except Exception as exc:  # ValueError, OSError: a key that is no zone file's name
        raise ValueError(f"not an IANA time zone name ({exc})") from None


def cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a cron expression squidmesh fires, or None."""
    try:
        CronSchedule(cron, None)
    except ValueError as exc:
        return str(exc)
    return None


def timezone_problem(timezone: str) -> str | None:
    """Why ``timezone`` names no time zone, or None."""
    try:
        _zone(timezone)
    except ValueError as exc:
        return str(exc)
    return None


class CronSchedule:
    """A cron expression read in a time zone: the instants a trigger is due.

    Raises:
        ValueError: the expression cannot be parsed or never matches, or the
            zone is unknown; the message says which.
    """

    __slots__ = ("_expression", "_zone", "cron", "timezone")

    def __init__(self, cron: str, timezone: str | None) -> None:
        self.cron = cron
        self.timezone = timezone
        self._zone = _zone(timezone)
        self._expression = _expression(cron)
        try:
            # Parses, and tries one match (cronsim gives up after 50 years).
            next(CronSim(self._expression, _PROBE.astimezone(self._zone)))
        except CronSimError as exc:
            raise ValueError(f"{exc} (fields: {_FIELDS})") from None
        except StopIteration:
            raise ValueError("the expression matches no date") from None
        except Exception as exc:  # anything else cronsim may raise on odd input
            raise ValueError(f"{type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"CronSchedule({self.cron!r}, {self.timezone!r})"

    def latest(self, now: datetime, *, after: datetime | None, limit: int) -> list[datetime]:
        """The last ``limit`` ticks at or before ``now`` and after ``after``, oldest first.

        Args:
            now: an aware datetime; a tick at exactly ``now`` is included.
            after: an aware datetime (ticks at or before it are left out),
                or None for no lower bound.
            limit: how many ticks at most (>= 1).

        Returns:
            UTC datetimes, strictly increasing; empty when none.
        """
        # In UTC: an ambiguous local time never compares equal to another
        # zone's (PEP 495).
        now = now.astimezone(UTC)
        after = None if after is None else after.astimezone(UTC)
        # cronsim walks back from the second before its start (or from the
        # start itself when it has microseconds): start one second past `now`
        # (whole seconds), so that a tick at `now` is the first candidate.
        start = now.replace(microsecond=0) + _SECOND
        found: list[datetime] = []
        budget = limit + _SLACK
        try:
            for local in CronSim(self._expression, start.astimezone(self._zone), reverse=True):
                tick = local.astimezone(UTC)
                budget -= 1
                if budget < 0:
                    break
                if tick > now or (found and tick >= found[-1]):
                    continue
                if after is not None and tick <= after:
                    break
                found.append(tick)
                if len(found) >= limit:
                    break
        except OverflowError:  # a walk that reaches datetime.min
            pass
        found.reverse()
        return found

    def next_after(self, now: datetime) -> datetime | None:
        """The first tick strictly after ``now`` (UTC), or None when none comes."""
        now = now.astimezone(UTC)
        budget = _SLACK
        try:
            for local in CronSim(self._expression, now.astimezone(self._zone)):
                tick = local.astimezone(UTC)
                if tick > now:
                    return tick
                budget -= 1
                if budget < 0:
                    break
        except OverflowError:  # a walk that reaches datetime.max
            pass
        return None
