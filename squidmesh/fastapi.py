"""Serve runs over HTTP from a FastAPI app (``pip install 'squidmesh[fastapi]'``).

Three pieces, and an app needs nothing else but its workflows and its auth::

    from fastapi import Depends, FastAPI
    from squidmesh.fastapi import lifespan, runs_router

    app = FastAPI(lifespan=lifespan(dsn, workflows=[invoice_reminder], migrate=True))
    app.include_router(runs_router(dependencies=[Depends(require_user)], prefix="/api"))

- ``lifespan(dsn, ...)`` opens a ``RunStore`` (``RunStore.connect``) when the
  app starts, keeps it on ``app.state.squidmesh`` and closes it when the app
  stops. Use it as ``FastAPI(lifespan=...)``, or inside the app's own
  lifespan: ``async with lifespan(dsn, ...)(app): yield``.
- ``get_store(request)`` is the dependency the routes use to reach it (and
  yours may too: ``store: Annotated[RunStore, Depends(get_store)]``).
- ``runs_router(dependencies=..., prefix=...)`` is an ``APIRouter`` with the
  run API. Nothing is served unless the app includes it, and every route
  runs the ``dependencies`` (authorisation) first.
- ``dashboard_router(dependencies=..., prefix=..., actions=False)`` is an
  ``APIRouter`` with the web dashboard (HTML pages, live over server-sent
  events; cancel and replay buttons only with ``actions=True``), guarded the
  same way. It needs Jinja2, which the ``fastapi`` extra brings.

Routes (relative to ``prefix``):

========================================  ==========================================
``GET /runs``                             200 ``{"runs": [...], "next_cursor": ...}``
``GET /runs/counts``                      200 ``{"pending": n, ...}`` (all eight)
``GET /runs/{run_id}``                    200; with ``?wait=``, 202 if not terminal in time
``POST /workflows/{workflow}/runs``       201 created, 200 when an Idempotency-Key made it earlier
``POST /runs/{run_id}/cancel``            200 (the run, now cancelled or cancelling)
``POST /runs/{run_id}/replay``            201 (the new run)
========================================  ==========================================

Errors are JSON ``{"error": "<snake_case name>", "message": "...", <details>}``
where the details are the attributes of the squidmesh error (``run_id``;
``missing_fields``, ``unknown_fields``, ``invalid_types``, ``expected_map``;
``from_status``, ``to_status``; ``expected``, ``actual``; ...):

- 400 ``invalid_if_match``: an ``If-Match`` this API did not make (below).
- 404 ``run_not_found``; ``invalid_workflow`` (the workflow in the path, or
  the one of a run being replayed, is not registered with the store).
- 409 ``invalid_transition`` (e.g. cancelling a completed run),
  ``idempotency_conflict`` (a key reused with another trigger or payload).
- 412 ``version_conflict``: ``If-Match`` names another version.
- 415 ``unsupported_media_type``: a request body that is not JSON.
- 422 ``invalid_payload`` (every problem at once), ``invalid_trigger``,
  ``invalid_argument``, ``invalid_cursor``, ``unknown_status``,
  ``invalid_run`` (a payload squidmesh cannot store), and
  ``invalid_request``: a query, path or header value FastAPI itself refuses
  (a limit that is not an int from 1 to 1000, a date that is not one, a body
  that is not JSON), with every problem in ``problems`` (``loc``, ``msg``,
  ``type``, as FastAPI reports them).

The mapping lives on the router's own route class, so the app registers no
exception handlers. Errors the dependencies raise (an ``HTTPException(401)``)
are left to the app. Other errors propagate (a 500).

Decisions where the contract is silent:

- Runs are encoded with msgspec (``MsgspecResponse``); ``step_runs``,
  ``steps``, ``audit_events`` and ``transitions`` are present only with
  ``?history=true`` and left out otherwise (not ``null``).
- A run's ``ETag`` is its version as a strong entity tag, ``"3"``, on every
  response that holds one run (its version after the operation; for a
  replay, the new run's). ``If-Match`` (cancel, replay) accepts ``*`` or one
  such tag; a mismatch is 412. Anything else (an unquoted ``3``, a weak
  ``W/"3"``, a list of tags, a tag this API never makes) is 400
  ``invalid_if_match``, saying what to send, rather than a 412 the client
  could not act on. For a replay the source run is read and its version
  compared, then the replay is made (a replay copies only what never
  changes: workflow, trigger and payload).
- A run id in the path that is not a UUID names no run: 404, as in the store.
- ``?wait=SECONDS`` waits at most ``MAX_WAIT_SECONDS`` (60); a longer wait is
  refused (422) rather than shortened. It answers 200 as soon as the run is
  terminal (completed, failed or cancelled), or 202 with the run as it is
  when the time runs out. All waiters share the store's one watcher.
- The create body is the payload, a JSON object; an empty body means ``{}``
  (for triggers without fields). A body with a ``Content-Type`` other than
  JSON (``application/json`` or ``*/*+json``) is 415; no ``Content-Type`` is
  read as JSON. ``Location`` names the run (``.../runs/{id}``).
- Cancelling answers 200 whether the run is now cancelled or cancelling
  (cooperative: read ``status``).
- Time bounds must carry a time zone (``2025-01-31T00:00:00Z``); a naive one
  is 422 ``invalid_argument``. Write ``+`` as ``%2B`` in a URL (``+`` reads as
  a space). ``GET /runs`` also takes ``replayed_from`` (a run id).

Documenting the payloads: the create route's OpenAPI operation lists each
workflow's triggers and their payload fields (a JSON schema per trigger in
the request body, and a summary in the description). Workflows live on the
store, which exists only once the app runs, so: ``runs_router(workflows=[...])``
documents the ones given (and the document is then complete without a
database, e.g. to generate a client in CI); without it, ``lifespan`` documents
the workflows registered with its store when the app starts (and drops a
cached OpenAPI document so that it is rebuilt). Workflows registered later
are served but not documented until the app restarts.

Importing ``squidmesh`` never imports FastAPI; importing this module does.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from fastapi import APIRouter, Depends, Header, Path, Query, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from . import state_machine
from ._errors import (
    IdempotencyConflict,
    InvalidArgument,
    InvalidCursor,
    InvalidPayload,
    InvalidRun,
    InvalidTransition,
    InvalidTrigger,
    InvalidWorkflow,
    RunNotFound,
    SquidMeshError,
    UnknownStatus,
    VersionConflict,
    WaitTimeout,
)
from ._events import Listener
from ._store import RunStore
from ._types import Run, RunPage, RunStatus
from ._workflow import NOW_ISO8601, TODAY_ISO8601, Trigger, Workflow

__all__ = (
    "MAX_WAIT_SECONDS",
    "MsgspecResponse",
    "dashboard_router",
    "get_store",
    "lifespan",
    "runs_router",
)

MAX_WAIT_SECONDS: Final = 60.0
"""The longest ``?wait=`` a ``GET /runs/{run_id}`` accepts, in seconds."""

_HISTORY_FIELDS: Final = ("step_runs", "steps", "audit_events", "transitions")
_MAX_VERSION: Final = 2**63 - 1
_ETAG: Final = re.compile(r'"([1-9][0-9]{0,18})"')
_JSON_MEDIA: Final = re.compile(r"application/(?:[\w.+-]+\+)?json")


# -- responses -------------------------------------------------------------


def _text(value: object) -> str:
    """What msgspec cannot encode in an error detail, as text."""
    return str(value)


_ENCODER: Final = msgspec.json.Encoder(enc_hook=_text)


class MsgspecResponse(Response):
    """A JSON response encoded with msgspec: Structs (``Run``, ``RunPage``...),
    UUIDs, datetimes and enums as they are, anything else as ``str``."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content)


def _run_body(run: Run, *, history: bool = False) -> dict[str, Any]:
    """A run as a JSON object; without ``history``, without the history fields."""
    body = msgspec.structs.asdict(run)
    if not history:
        for name in _HISTORY_FIELDS:
            del body[name]
    return body


def _etag(run: Run) -> str:
    return f'"{run.version}"'


def _run_response(
    run: Run, status_code: int, *, history: bool = False, location: str | None = None
) -> MsgspecResponse:
    headers = {"ETag": _etag(run)}
    if location is not None:
        headers["Location"] = location
    return MsgspecResponse(_run_body(run, history=history), status_code, headers=headers)


def _location(request: Request, run: Run) -> str:
    """The path of ``GET /runs/{id}`` for ``run`` on the router that served ``request``."""
    return request.url_for("squidmesh_get_run", run_id=str(run.id)).path


# -- errors ----------------------------------------------------------------


class _Refused(Exception):
    """An error response decided here rather than by the store."""

    def __init__(self, status_code: int, error: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = {"error": error, "message": message, **details}


# The squidmesh errors a route can meet: status code and the attributes that
# are the body's details. Order matters only for subclasses (none overlap here).
_ERRORS: Final[tuple[tuple[type[SquidMeshError], int, tuple[str, ...]], ...]] = (
    (RunNotFound, 404, ("run_id",)),
    (InvalidWorkflow, 404, ("name",)),
    (InvalidTransition, 409, ("from_status", "to_status")),
    (IdempotencyConflict, 409, ("workflow", "idempotency_key", "run_id")),
    (VersionConflict, 412, ("run_id", "expected", "actual")),
    (
        InvalidPayload,
        422,
        ("missing_fields", "unknown_fields", "invalid_types", "expected_map"),
    ),
    (InvalidTrigger, 422, ("name", "workflow")),
    (InvalidArgument, 422, ("name", "reason")),
    (InvalidCursor, 422, ("cursor",)),
    (UnknownStatus, 422, ("value",)),
    (InvalidRun, 422, ("reason",)),
)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _error_response(exc: SquidMeshError) -> MsgspecResponse | None:
    for cls, status_code, attributes in _ERRORS:
        if isinstance(exc, cls):
            body: dict[str, object] = {"error": _snake_case(cls.__name__), "message": str(exc)}
            body.update((name, getattr(exc, name)) for name in attributes)
            return MsgspecResponse(body, status_code)
    return None


def _invalid_request(problems: Sequence[Any]) -> MsgspecResponse:
    """FastAPI's own validation errors, in this API's error shape."""
    listed = [
        {
            "loc": [str(part) for part in problem.get("loc", ())],
            "msg": str(problem.get("msg", "")),
            "type": str(problem.get("type", "")),
        }
        for problem in problems
        if isinstance(problem, dict)
    ]
    message = "invalid request: " + "; ".join(
        f"{'.'.join(problem['loc'])}: {problem['msg']}" for problem in listed
    )
    return MsgspecResponse(
        {"error": "invalid_request", "message": message, "problems": listed}, 422
    )


class _RunsRoute(APIRoute):
    """An ``APIRoute`` that answers squidmesh errors and FastAPI's request
    validation errors in the error shape, so the app needs no handlers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _invalid_request(exc.errors())
            except _Refused as exc:
                return MsgspecResponse(exc.body, exc.status_code)
            except SquidMeshError as exc:
                response = _error_response(exc)
                if response is None:
                    raise
                return response

        return handle


def _expected_version(if_match: str | None) -> int | None:
    """The version an ``If-Match`` header requires; None for none or ``*``."""
    if if_match is None or if_match.strip() == "*":
        return None
    match = _ETAG.fullmatch(if_match.strip())
    if match is None or int(match.group(1)) > _MAX_VERSION:
        raise _Refused(
            400,
            "invalid_if_match",
            f'If-Match must be * or one entity tag of this API, such as "3" '
            f"(the ETag of GET /runs/{{run_id}}), not {if_match!r}",
            if_match=if_match,
        )
    return int(match.group(1))


# -- the store on the app ----------------------------------------------------


def lifespan(
    dsn: str,
    *,
    workflows: Iterable[Workflow] = (),
    listeners: Iterable[Listener] = (),
    migrate: bool = False,
    **pool_options: Any,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that opens a ``RunStore`` for the app's lifetime.

    The store (``RunStore.connect(dsn, ...)``: a pool of its own, wake-ups
    for ``?wait=`` from a LISTEN connection) is kept on
    ``app.state.squidmesh`` while the app runs, then closed with its pool.
    Use ``FastAPI(lifespan=lifespan(dsn, ...))``, or enter it in the app's own
    lifespan: ``async with lifespan(dsn, ...)(app): yield``.

    Args:
        dsn: a libpq connection URL.
        workflows, listeners: as for ``RunStore``. The workflows are also
            documented on the create route of every ``runs_router`` of the app
            that was not given ``workflows=``.
        migrate: apply pending schema migrations at startup.
        pool_options: passed to ``RunStore.connect`` (``min_size``,
            ``max_size``, ``listen``, ``poll_interval``, and on to
            ``asyncpg.create_pool``).
    """
    workflows = tuple(workflows)
    listeners = tuple(listeners)

    @contextlib.asynccontextmanager
    async def open_store(app: Starlette) -> AsyncIterator[None]:
        async with RunStore.connect(
            dsn, workflows=workflows, listeners=listeners, migrate=migrate, **pool_options
        ) as store:
            app.state.squidmesh = store
            _document_app(app, store.workflows.values())
            try:
                yield
            finally:
                if getattr(app.state, "squidmesh", None) is store:
                    del app.state.squidmesh

    return open_store


def get_store(request: HTTPConnection) -> RunStore:
    """The app's ``RunStore`` (``app.state.squidmesh``), for ``Depends(get_store)``.

    Raises:
        RuntimeError: the app has no store: its lifespan is not
            ``squidmesh.fastapi.lifespan`` (or the app has not started).
    """
    store = getattr(request.app.state, "squidmesh", None)
    if not isinstance(store, RunStore):
        raise RuntimeError(
            "no squidmesh RunStore on app.state.squidmesh: create the app with "
            "FastAPI(lifespan=squidmesh.fastapi.lifespan(dsn, workflows=[...])), enter "
            "`async with lifespan(dsn, ...)(app): yield` in your own lifespan, or set "
            "app.state.squidmesh = store yourself"
        )
    return store


_Store = Annotated[RunStore, Depends(get_store)]

# -- the routes ----------------------------------------------------------------

_RunId = Annotated[
    str,
    Path(description="The run's id, a UUID (anything else names no run: 404)."),
]
_IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Act only if the run is at this version: its ETag, such as "3", or *.',
    ),
]


async def _list_runs(
    store: _Store,
    workflow: Annotated[str | None, Query(description="Only runs of this workflow.")] = None,
    status: Annotated[
        list[str] | None,
        Query(
            description="Only runs in this status; repeat for several. One of: "
            + ", ".join(state_machine.STATES)
            + "."
        ),
    ] = None,
    trigger: Annotated[
        str | None, Query(description="Only runs created through this trigger.")
    ] = None,
    created_after: Annotated[
        datetime | None,
        Query(description="Only runs created at or after this instant (with a time zone)."),
    ] = None,
    created_before: Annotated[
        datetime | None,
        Query(description="Only runs created strictly before this instant (with a time zone)."),
    ] = None,
    replayed_from: Annotated[UUID | None, Query(description="Only replays of this run.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="The page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page, with the same filters."),
    ] = None,
) -> Response:
    """List runs, newest first, one page at a time.

    Pass `next_cursor` back as `cursor` (with the same filters) for the next
    page; it is null on the last page. The runs come without their history.
    """
    page = await store.page_runs(
        workflow=workflow,
        status=status,
        trigger=trigger,
        created_after=created_after,
        created_before=created_before,
        replayed_from=replayed_from,
        limit=limit,
        cursor=cursor,
    )
    return MsgspecResponse(
        {"runs": [_run_body(run) for run in page.runs], "next_cursor": page.next_cursor}
    )


async def _count_runs(
    store: _Store,
    workflow: Annotated[str | None, Query(description="Only runs of this workflow.")] = None,
    created_after: Annotated[
        datetime | None,
        Query(description="Only runs created at or after this instant (with a time zone)."),
    ] = None,
) -> Response:
    """Count the runs in each status: all eight statuses, zeros included."""
    counts = await store.count_runs_by_status(workflow=workflow, created_after=created_after)
    return MsgspecResponse(counts)


async def _get_run(
    store: _Store,
    run_id: _RunId,
    history: Annotated[
        bool,
        Query(description="Include step_runs, steps, audit_events and transitions."),
    ] = False,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Long-poll: wait up to this many seconds (at most "
            f"{MAX_WAIT_SECONDS:g}) for the run to be terminal.",
        ),
    ] = None,
) -> Response:
    """Read one run, with its version as the `ETag`.

    With `?wait=SECONDS`, answer as soon as the run is terminal (completed,
    failed or cancelled: 200), or with the run as it is when the time runs
    out (202).
    """
    if wait is None:
        run = await store.get_run(run_id, include_history=history)
        return _run_response(run, 200, history=history)
    try:
        run = await store.wait_for(run_id, timeout=wait)
    except WaitTimeout:
        run = await store.get_run(run_id, include_history=history)
    else:
        if history:
            run = await store.get_run(run_id, include_history=True)
    return _run_response(
        run, 200 if state_machine.is_terminal(run.status) else 202, history=history
    )


async def _create_run(
    request: Request,
    store: _Store,
    workflow: Annotated[str, Path(description="The name of a registered workflow.")],
    trigger: Annotated[
        str | None, Query(description="The trigger; default: the workflow's first.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Create at most one run per key (1 to 255 characters) and workflow: "
            "a repeat with the same trigger and payload answers 200 with that run, one "
            "with another trigger or payload 409.",
        ),
    ] = None,
) -> Response:
    """Create a run; the body is its payload (a JSON object; empty means `{}`)."""
    payload = await _payload(request)
    if idempotency_key is None:
        run = await store.create_run(workflow, payload, trigger=trigger)
        created = True
    else:
        run, created = await store.get_or_create_run(
            workflow, payload, trigger=trigger, idempotency_key=idempotency_key
        )
    return _run_response(run, 201 if created else 200, location=_location(request, run))


async def _payload(request: Request) -> object:
    body = await request.body()
    if not body.strip():
        return {}
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if not _JSON_MEDIA.fullmatch(media):
            raise _Refused(
                415,
                "unsupported_media_type",
                f"the body must be JSON (Content-Type: application/json), not {media!r}",
                content_type=content_type,
            )
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"not valid JSON: {exc}", "type": "json_invalid"}]
        ) from None


async def _cancel_run(store: _Store, run_id: _RunId, if_match: _IfMatch = None) -> Response:
    """Cancel a run: pending or paused runs become cancelled, running or
    retrying ones cancelling (the runtime finishes the step, then cancels)."""
    run = await store.cancel_run(run_id, expected_version=_expected_version(if_match))
    return _run_response(run, 200)


async def _replay_run(
    request: Request, store: _Store, run_id: _RunId, if_match: _IfMatch = None
) -> Response:
    """Create a new pending run with the workflow, trigger and payload of this one."""
    expected = _expected_version(if_match)
    if expected is not None:
        source = await store.get_run(run_id)
        if source.version != expected:
            raise VersionConflict(run_id, expected, source.version)
    run = await store.replay_run(run_id)
    return _run_response(run, 201, location=_location(request, run))


# -- OpenAPI -----------------------------------------------------------------


def _inline(node: Any, components: dict[str, Any]) -> Any:
    """A msgspec schema with its ``$ref``s replaced by the schemas they name.

    The route's responses cannot add to the document's ``components``, so each
    schema is inlined (the Structs are not recursive).
    """
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(components[ref.removeprefix("#/$defs/")], components)
        return {key: _inline(value, components) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, components) for value in node]
    return node


@cache
def _run_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON schemas of a run with its history fields, and of one without."""
    (full_ref,), components = msgspec.json.schema_components([Run])
    full: dict[str, Any] = _inline(full_ref, components)
    brief = dict(full, properties=dict(full["properties"]))
    for name in _HISTORY_FIELDS:
        del brief["properties"][name]
    brief["description"] = "A run, without its history fields (see `?history=true`)."
    full["description"] = (
        "A run. `step_runs`, `steps`, `audit_events` and `transitions` are present "
        "only with `?history=true`."
    )
    return full, brief


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


def _errors(description: str, *names: str) -> dict[str, Any]:
    schema = {
        "title": "Error",
        "type": "object",
        "properties": {
            "error": {"type": "string", "enum": list(names)},
            "message": {"type": "string"},
        },
        "required": ["error", "message"],
        "additionalProperties": True,
        "description": "The error's snake_case name, a message, and its details.",
    }
    return _json(schema, description)


_ETAG_HEADER: Final = 'The run\'s version, such as "3" (for If-Match).'
_LOCATION_HEADER: Final = "The path of the run."
_INVALID = ("invalid_request",)


def _run_json(description: str, *, history: bool = False, location: bool = False) -> dict[str, Any]:
    full, brief = _run_schemas()
    headers = {"ETag": _ETAG_HEADER}
    if location:
        headers["Location"] = _LOCATION_HEADER
    return _json(full if history else brief, description, **headers)


def _page_json() -> dict[str, Any]:
    (page_ref,), components = msgspec.json.schema_components([RunPage])
    page: dict[str, Any] = _inline(page_ref, components)
    page["properties"]["runs"] = {"type": "array", "items": _run_schemas()[1]}
    page["description"] = "One page of runs, newest first; `next_cursor` is null on the last."
    return _json(page, "A page of runs.")


def _counts_json() -> dict[str, Any]:
    statuses = [status.value for status in RunStatus]
    schema = {
        "title": "RunCounts",
        "type": "object",
        "properties": {status: {"type": "integer", "minimum": 0} for status in statuses},
        "required": statuses,
        "additionalProperties": False,
    }
    return _json(schema, "The number of runs in each status.")


_FIELD_TYPES: Final[dict[type, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def _trigger_schema(workflow: Workflow, trigger: Trigger) -> dict[str, Any]:
    """The JSON schema of the payload a trigger accepts."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in trigger.payload:
        declared: dict[str, Any] = {"type": _FIELD_TYPES.get(field.type, "string")}
        schema: dict[str, Any] = (
            {"anyOf": [declared, {"type": "null"}]} if field.is_optional else dict(declared)
        )
        if field.default is TODAY_ISO8601:
            declared["format"] = "date"
            schema["description"] = "Default: the date of creation (UTC), YYYY-MM-DD."
        elif field.default is NOW_ISO8601:
            declared["format"] = "date-time"
            schema["description"] = "Default: the time of creation (UTC), ISO 8601."
        elif field.has_default and callable(field.default):
            schema["description"] = "Default: computed at creation."
        elif field.has_default:
            with contextlib.suppress(TypeError, ValueError):
                schema["default"] = msgspec.to_builtins(field.default)
        if not field.is_optional:
            required.append(field.name)
        properties[field.name] = schema
    schema = {
        "title": f"{workflow.name}: {trigger.name}",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "x-squidmesh-workflow": workflow.name,
        "x-squidmesh-trigger": trigger.name,
    }
    if required:
        schema["required"] = required
    return schema


def _field_summary(trigger: Trigger) -> str:
    if not trigger.payload:
        return "no fields (body `{}` or empty)"
    parts = []
    for field in trigger.payload:
        kind = _FIELD_TYPES.get(field.type, field.type_name)
        if field.default is TODAY_ISO8601:
            note = "default: today (UTC)"
        elif field.default is NOW_ISO8601:
            note = "default: now (UTC)"
        elif field.has_default:
            note = "has a default"
        elif field.is_optional:
            note = "optional"
        else:
            note = "required"
        parts.append(f"`{field.name}` ({kind}, {note})")
    return ", ".join(parts)


_CREATE_DESCRIPTION: Final = (
    "Create a run of `{workflow}` through a trigger (`?trigger=`, default: the "
    "workflow's first). The body is the payload, a JSON object (empty means `{}`); "
    "it gets the trigger's defaults and is checked as a whole: every problem is in "
    "the 422 body. 201 with the run (`Location`, `ETag`); with an `Idempotency-Key` "
    "that an earlier request used with the same trigger and payload, 200 with that run."
)


def _create_openapi(workflows: Sequence[Workflow]) -> dict[str, Any]:
    """The create route's ``openapi_extra``: request body and description."""
    schemas = [
        _trigger_schema(workflow, trigger)
        for workflow in workflows
        for trigger in workflow.triggers
    ]
    lines = [_CREATE_DESCRIPTION]
    if workflows:
        lines.append("\nWorkflows and the payload of each trigger:\n")
        for workflow in workflows:
            lines.append(f"- `{workflow.name}`")
            for index, trigger in enumerate(workflow.triggers):
                notes = []
                if index == 0:
                    notes.append("default")
                if trigger.cron:
                    notes.append(f"cron `{trigger.cron}`")
                note = f" ({', '.join(notes)})" if notes else ""
                lines.append(f"  - `{trigger.name}`{note}: {_field_summary(trigger)}")
    else:
        lines.append(
            "\nThe workflows are documented here when the router is given "
            "`workflows=[...]`, or when `squidmesh.fastapi.lifespan` starts."
        )
    body_schema: dict[str, Any] = (
        {"anyOf": schemas}
        if schemas
        else {"type": "object", "description": "The payload: its fields depend on the trigger."}
    )
    return {
        "description": "\n".join(lines),
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": body_schema}},
        },
        "x-squidmesh-workflows": [workflow.name for workflow in workflows],
    }


class _CreateDocs(dict[str, Any]):
    """The create route's ``openapi_extra``, filled in place: FastAPI keeps a
    reference to it (also on routes it copies when a router is included) and
    reads it when it builds the document."""

    def __init__(self, workflows: Iterable[Workflow] | None) -> None:
        super().__init__()
        self.explicit = workflows is not None
        self.fill(workflows or ())

    def fill(self, workflows: Iterable[Workflow]) -> None:
        self.clear()
        self.update(_create_openapi(list(workflows)))


def _create_docs(routes: Iterable[Any], seen: set[int]) -> Iterator[_CreateDocs]:
    """The ``_CreateDocs`` of the routes, through included routers and mounts."""
    for route in routes:
        if id(route) in seen:
            continue
        seen.add(id(route))
        extra = getattr(route, "openapi_extra", None)
        if isinstance(extra, _CreateDocs):
            yield extra
        inner = getattr(route, "original_router", route)  # FastAPI >= 0.13x includes
        children = getattr(inner, "routes", None)
        if isinstance(children, list):
            yield from _create_docs(children, seen)


def _document_app(app: Starlette, workflows: Iterable[Workflow]) -> None:
    """Document ``workflows`` on the create routes that were not given theirs."""
    listed = list(workflows)
    for docs in _create_docs(app.routes, set()):
        if not docs.explicit:
            docs.fill(listed)
    if hasattr(app, "openapi_schema"):
        app.openapi_schema = None  # rebuilt on the next request for it


def runs_router(
    *,
    dependencies: Sequence[params.Depends] = (),
    prefix: str = "",
    workflows: Iterable[Workflow] | None = None,
) -> APIRouter:
    """The run API as an ``APIRouter``: include it with ``app.include_router``.

    Args:
        dependencies: run before every route (authorisation): e.g.
            ``[Depends(require_user)]``; what they raise is the app's to answer.
        prefix: a path prefix for every route, e.g. ``"/api"``.
        workflows: the workflows to document on the create route; by default
            those of the store, when ``lifespan`` starts (see the module docs).

    The routes reach the store through ``get_store`` (``app.state.squidmesh``).
    """
    router = APIRouter(
        prefix=prefix,
        dependencies=list(dependencies),
        route_class=_RunsRoute,
        default_response_class=MsgspecResponse,
        tags=["runs"],
    )
    bad_query = _errors("A query value is refused.", *_INVALID, "invalid_argument")
    not_found = _errors("No run has that id.", "run_not_found")
    if_match = _errors(
        "The If-Match header is not `*` or one ETag of this API.", "invalid_if_match"
    )
    stale = _errors("If-Match names another version of the run.", "version_conflict")
    router.add_api_route(
        "/runs",
        _list_runs,
        methods=["GET"],
        name="squidmesh_list_runs",
        summary="List runs",
        responses={
            200: _page_json(),
            422: _errors(
                "A filter, limit or cursor is refused.",
                *_INVALID,
                "invalid_argument",
                "invalid_cursor",
                "unknown_status",
            ),
        },
    )
    router.add_api_route(
        "/runs/counts",
        _count_runs,
        methods=["GET"],
        name="squidmesh_count_runs",
        summary="Count runs by status",
        responses={200: _counts_json(), 422: bad_query},
    )
    router.add_api_route(
        "/runs/{run_id}",
        _get_run,
        methods=["GET"],
        name="squidmesh_get_run",
        summary="Read a run (long-poll with ?wait=)",
        responses={
            200: _run_json("The run (terminal, when `?wait=` was given).", history=True),
            202: _run_json("`?wait=` ran out: the run as it is, not terminal yet.", history=True),
            404: not_found,
            422: bad_query,
        },
    )
    router.add_api_route(
        "/workflows/{workflow}/runs",
        _create_run,
        methods=["POST"],
        name="squidmesh_create_run",
        summary="Create a run",
        status_code=201,
        responses={
            201: _run_json("The run, created now.", location=True),
            200: _run_json(
                "The run an earlier request with this Idempotency-Key created.", location=True
            ),
            404: _errors("The workflow is not registered.", "invalid_workflow"),
            409: _errors(
                "The Idempotency-Key was used with another trigger or payload.",
                "idempotency_conflict",
            ),
            415: _errors("The body is not JSON.", "unsupported_media_type"),
            422: _errors(
                "The trigger, payload or key is refused (every payload problem at once).",
                *_INVALID,
                "invalid_payload",
                "invalid_trigger",
                "invalid_argument",
                "invalid_run",
            ),
        },
        openapi_extra=_CreateDocs(None if workflows is None else list(workflows)),
    )
    router.add_api_route(
        "/runs/{run_id}/cancel",
        _cancel_run,
        methods=["POST"],
        name="squidmesh_cancel_run",
        summary="Cancel a run",
        responses={
            200: _run_json("The run, now cancelled or cancelling."),
            400: if_match,
            404: not_found,
            409: _errors(
                "The run is already failed, completed or cancelled.", "invalid_transition"
            ),
            412: stale,
            422: _errors("A value is refused.", *_INVALID),
        },
    )
    router.add_api_route(
        "/runs/{run_id}/replay",
        _replay_run,
        methods=["POST"],
        name="squidmesh_replay_run",
        summary="Replay a run",
        status_code=201,
        responses={
            201: _run_json("The new run.", location=True),
            400: if_match,
            404: _errors(
                "No run has that id, or its workflow is not registered.",
                "run_not_found",
                "invalid_workflow",
            ),
            412: stale,
            422: _errors("A value is refused.", *_INVALID),
        },
    )
    return router


def dashboard_router(
    *,
    dependencies: Sequence[params.Depends] = (),
    prefix: str = "",
    actions: bool = False,
) -> APIRouter:
    """The web dashboard as an ``APIRouter``: include it with ``app.include_router``.

    Server-rendered pages that read without JavaScript, kept live by a small
    script of squidmesh's own over server-sent events from the change feed;
    everything it serves is in the package (no CDN, no build step):

    - ``GET {prefix}/``: the runs, with their counts by status for the chosen
      workflow and time range, filters kept in the URL and keyset pages;
    - ``GET {prefix}/runs/{run_id}``: one run: its fields, payload, context
      and last error, its timeline to scale (transitions, step runs,
      attempts), its audit events and its lineage;
    - ``GET {prefix}/workflows``: the store's workflows, their triggers
      (payload fields, cron schedules) and their steps;
    - ``GET {prefix}/events``: the change feed as ``text/event-stream``;
    - ``GET {prefix}/static/{name}``: its stylesheet, script and icon.

    Args:
        dependencies: run before every route, the event stream and the static
            files included (authorisation), e.g. ``[Depends(require_user)]``;
            what they raise is the app's to answer. A browser sends cookies
            and HTTP Basic credentials by itself, but no ``Authorization:
            Bearer`` header: guard the dashboard with what a browser sends.
        prefix: a path prefix for every route, e.g. ``"/dashboard"``.
        actions: add ``POST {prefix}/runs/{run_id}/cancel`` and ``.../replay``
            and their buttons on the run page. The forms carry a token that
            must match a ``SameSite=Strict`` cookie, and a request whose
            ``Sec-Fetch-Site`` or ``Origin`` names another site is refused
            (403 ``cross_site_request``). Without ``actions`` those routes do
            not exist.

    Errors are this API's (404 ``run_not_found``, 409 ``invalid_transition``,
    412 ``version_conflict``, 422 ``invalid_cursor``...), as a page for a
    browser and as the same JSON otherwise. No route is in the OpenAPI
    document.
    """
    from ._dashboard import build_router

    return build_router(dependencies=dependencies, prefix=prefix, actions=actions)
