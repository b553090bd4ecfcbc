"""Listing, paging and counting runs: ``page_runs``, ``list_runs``, ``count_runs``
and ``count_runs_by_status``.

Every call is one statement of ``sql/queries/listing.sql``, chosen by which
equality filters are given (one fixed text per shape, so each keeps its index
when PostgreSQL switches a prepared statement to its generic plan). The
filters are checked and normalised here, before anything is sent: the
statuses become a distinct list (all eight when none are given), which drives
every query; the page cursor and ``created_before`` become one upper bound on
``(inserted_at, id)``.

A page cursor is ``base64url(msgpack([version, inserted_at, id, filters]) +
tag)``: the position of the last run of the page (``inserted_at`` in
microseconds since the Unix epoch, the id's 16 bytes), a digest of the
filters it was made for, and a keyed BLAKE2b tag over all of it. The tag
tells a cursor squidmesh made from anything else (a typo, a truncated copy, a
hand-edited position); the filter digest refuses a cursor made for other
filters, whose position would silently skip or repeat runs. The key is not a
secret: a cursor authorises nothing. It only names a position in a listing
that the same filters (with ``created_before``) reach anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final, LiteralString, NamedTuple
from uuid import UUID

import asyncpg
import msgspec

from . import _codec, _queries, state_machine
from ._errors import InvalidArgument, InvalidCursor
from ._ids import parse_id
from ._queries import SQL
from ._types import Run, RunPage, RunStatus
from ._values import MAX_BIGINT, aware_datetime
from ._workflow import Workflow

#: The largest page ``page_runs`` returns: a page is one statement's result,
#: held in memory on both sides.
MAX_PAGE_SIZE: Final = 1000

# list_runs: an int past PostgreSQL's bigint cannot be a LIMIT, and no table
# holds that many rows: it means "no limit" like any other non-positive value.

_ALL_STATUSES: Final = tuple(status.value for status in state_machine.STATES)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_CURSOR_VERSION: Final = 1
# Integrity, not secrecy (see the module docstring). A new cursor format gets
# a new version, and a new key with it, so no old cursor passes the tag.
_CURSOR_KEY: Final = b"squidmesh.page_runs.cursor.v1"
_TAG_BYTES: Final = 8
_DIGEST_BYTES: Final = 8
# A cursor is about 64 characters; anything much longer is refused unread.
_MAX_CURSOR_CHARS: Final = 256


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    version: int
    inserted_at: int  # microseconds since the Unix epoch
    id: bytes  # the run id's 16 bytes
    filters: bytes  # _Filters.digest()


_cursor_encoder: Final = msgspec.msgpack.Encoder()
_cursor_decoder: Final = msgspec.msgpack.Decoder(_Cursor)


class _Filters(NamedTuple):
    """The filters of one call, normalised; ``empty`` when no run can match them."""

    workflow: str | None
    statuses: tuple[str, ...]
    trigger: str | None
    created_after: datetime | None
    created_before: datetime | None
    replayed_from: UUID | None
    empty: bool

    def digest(self) -> bytes:
        """What a cursor is checked against: the same runs, the same digest.

        Timestamps are taken as instants (the same moment in another time zone
        is the same filter) and statuses as a set (given as None or as all
        eight, or in another order, they are the same filter).
        """
        h = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=b"squidmesh-filter")
        parts = (
            self.workflow,
            ",".join(self.statuses),
            self.trigger,
            None if self.created_after is None else _micros(self.created_after),
            None if self.created_before is None else _micros(self.created_before),
            self.replayed_from,
        )
        for part in parts:
            # Length-prefixed, so ("ab", None) and ("a", "b") differ; a name
            # that cannot be stored (a lone surrogate) still has a digest.
            data = b"" if part is None else b"=" + str(part).encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(4, "big"))
            h.update(data)
        return h.digest()


class _Bound(NamedTuple):
    """Only runs strictly before (inserted_at, id) in the listing order."""

    inserted_at: datetime
    id: UUID


_NIL: Final = UUID(int=0)


class ListingOps:
    """The listing reads of a store (see the ``RunStore`` methods of the same names)."""

    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def page(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        trigger: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        replayed_from: UUID | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                "limit", f"must be an int from 1 to {MAX_PAGE_SIZE}, not {limit!r}"
            )
        filters = _filters(workflow, status, trigger, created_after, created_before, replayed_from)
        digest = filters.digest()
        after = None if cursor is None else _decode_cursor(cursor, digest)
        if filters.empty:
            return RunPage(runs=[])
        # One run more than the page: whether it comes back says whether
        # there is a next page, without a second query or a count.
        runs = await self._select(filters, after, limit + 1)
        if len(runs) <= limit:
            return RunPage(runs=runs)
        del runs[limit:]
        return RunPage(runs=runs, next_cursor=_encode_cursor(runs[-1], digest))

    async def find(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        trigger: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        replayed_from: UUID | str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        lim = limit if type(limit) is int and 0 < limit <= MAX_BIGINT else None
        filters = _filters(workflow, status, trigger, created_after, created_before, replayed_from)
        if filters.empty:
            return []
        return await self._select(filters, None, lim)

    async def count(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        trigger: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        filters = _filters(workflow, status, trigger, created_after, created_before, None)
        if filters.empty:
            return 0
        return sum(n for _, n in await self._count(filters))

    async def count_by_status(
        self,
        *,
        workflow: Workflow | str | None = None,
        created_after: datetime | None = None,
    ) -> dict[RunStatus, int]:
        filters = _filters(workflow, None, None, created_after, None, None)
        counts = dict.fromkeys(state_machine.STATES, 0)
        if not filters.empty:
            for status, n in await self._count(filters):
                counts[RunStatus(status)] = n
        return counts

    # -- statements -----------------------------------------------------------

    async def _select(self, f: _Filters, after: _Bound | None, limit: int | None) -> list[Run]:
        bound = after
        if f.created_before is not None:
            # Runs inserted before created_before are exactly those before
            # (created_before, nil uuid): no id sorts below the nil uuid.
            cut = _Bound(f.created_before, _NIL)
            bound = cut if bound is None else min(bound, cut)
        args: tuple[object, ...] = (
            list(f.statuses),
            None if bound is None else bound.inserted_at,
            None if bound is None else bound.id,
            f.created_after,
            limit,
        )
        query: LiteralString
        if len(f.statuses) == 1 and f.trigger is None and f.replayed_from is None:
            # One status (maybe a workflow, any bounds) is one ordered range of
            # one index: read the runs straight from it, with no merge of
            # ranges and no second lookup by id.
            (status,) = f.statuses
            if f.workflow is None:
                query, args = SQL.list_runs_by_status, (status, *args[1:])
            else:
                query, args = SQL.list_runs_by_workflow_status, (status, *args[1:], f.workflow)
        elif f.replayed_from is not None:
            # The replays of one run are few: one index fixes them, the rest filters.
            query = SQL.select_runs_by_replayed_from
            args = (*args, f.replayed_from, f.workflow, f.trigger)
        elif f.workflow is not None and f.trigger is not None:
            query, args = SQL.select_runs_by_workflow_trigger, (*args, f.workflow, f.trigger)
        elif f.workflow is not None:
            query, args = SQL.select_runs_by_workflow, (*args, f.workflow)
        elif f.trigger is not None:
            query, args = SQL.select_runs_by_trigger, (*args, f.trigger)
        else:
            query = SQL.select_runs
        return _codec.decode_runs(await _queries.rows(self._pool, query, *args))

    async def _count(self, f: _Filters) -> list[tuple[str, int]]:
        args: tuple[object, ...] = (list(f.statuses), f.created_after, f.created_before)
        query: LiteralString
        if f.workflow is not None and f.trigger is not None:
            query, args = SQL.count_runs_by_workflow_trigger, (*args, f.workflow, f.trigger)
        elif f.workflow is not None:
            query, args = SQL.count_runs_by_workflow, (*args, f.workflow)
        elif f.trigger is not None:
            query, args = SQL.count_runs_by_trigger, (*args, f.trigger)
        else:
            query = SQL.count_runs
        return [(row[0], row[1]) for row in await _queries.rows(self._pool, query, *args)]


# -- filters ---------------------------------------------------------------------


def _filters(
    workflow: object,
    status: object,
    trigger: object,
    created_after: object,
    created_before: object,
    replayed_from: object,
) -> _Filters:
    """Check and normalise the filters.

    Raises ``UnknownStatus`` and ``InvalidArgument`` (a timestamp that is not an
    aware datetime). A name no run can have (not a str, or one PostgreSQL
    cannot store) and a ``replayed_from`` that is not a run id are not errors:
    they match nothing, as ``get_run`` answers RunNotFound for such an id.
    """
    name = workflow.name if isinstance(workflow, Workflow) else workflow
    after = aware_datetime("created_after", created_after)
    before = aware_datetime("created_before", created_before)
    statuses = _statuses(status)
    source = None if replayed_from is None else parse_id(replayed_from)
    empty = (
        not statuses
        or not _storable(name)
        or not _storable(trigger)
        or (replayed_from is not None and source is None)
        or (after is not None and before is not None and after >= before)
    )
    return _Filters(
        workflow=_name(name),
        statuses=statuses,
        trigger=_name(trigger),
        created_after=after,
        created_before=before,
        replayed_from=source,
        empty=empty,
    )


def _statuses(status: object) -> tuple[str, ...]:
    """The distinct statuses asked for, in state-machine order; all eight for None."""
    if status is None:
        return _ALL_STATUSES
    if isinstance(status, str) or not isinstance(status, Iterable):
        # A str (a RunStatus is one too) is one status, not its characters;
        # anything else that is not iterable raises UnknownStatus here.
        return (state_machine.coerce_status(status).value,)
    wanted = {state_machine.coerce_status(s) for s in status}
    # Distinct: each status is one index range, and a repeated one would
    # return its runs twice.
    return tuple(s.value for s in state_machine.STATES if s in wanted)


def _storable(name: object) -> bool:
    return name is None or (isinstance(name, str) and _codec.text_problem(name) is None)


def _name(name: object) -> str | None:
    """A name filter as the digest sees it (a name that is not a str matches nothing)."""
    return name if name is None or isinstance(name, str) else repr(name)


def _micros(value: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch (exact: both are integers)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


# -- cursors -----------------------------------------------------------------------


def _tag(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_TAG_BYTES, key=_CURSOR_KEY).digest()


def _encode_cursor(last: Run, digest: bytes) -> str:
    """A cursor after ``last`` for the filters whose ``_Filters.digest()`` is ``digest``."""
    payload = _cursor_encoder.encode(
        _Cursor(_CURSOR_VERSION, _micros(last.inserted_at), last.id.bytes, digest)
    )
    return base64.urlsafe_b64encode(payload + _tag(payload)).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: object, digest: bytes) -> _Bound:
    """The position a cursor continues from; ``InvalidCursor`` unless squidmesh
    made it, in this format, for the filters whose digest is ``digest``."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR_CHARS:
        raise InvalidCursor(cursor)
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise InvalidCursor(cursor) from None
    payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    # Only the one spelling squidmesh writes: base64 lets the last character
    # carry bits no byte uses, so a different string could decode the same.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == cursor
    if not canonical or not payload or not hmac.compare_digest(tag, _tag(payload)):
        raise InvalidCursor(cursor)
    try:
        decoded = _cursor_decoder.decode(payload)
        at = _EPOCH + timedelta(microseconds=decoded.inserted_at)
        run_id = _codec.decode_id(decoded.id)
    except (msgspec.DecodeError, OverflowError, ValueError):
        raise InvalidCursor(cursor) from None
    if decoded.version != _CURSOR_VERSION or not hmac.compare_digest(decoded.filters, digest):
        raise InvalidCursor(cursor)
    return _Bound(at, run_id)
