"""The dashboard's routes: three pages, their event stream, static files, actions.

Routes (relative to the router's ``prefix``; none in the OpenAPI document):

=====================================  =================================================
``GET /``                              the runs page (filters in the query string)
``GET /runs/{run_id}``                 a run: fields, timeline, lineage
``GET /workflows``                     the registered workflows
``GET /events``                        server-sent events: the change feed
``GET /static/{name}``                 the dashboard's own stylesheet and script
``POST /runs/{run_id}/cancel``         only with ``actions=True``
``POST /runs/{run_id}/replay``         only with ``actions=True``
=====================================  =================================================

Errors are those of the run API (``squidmesh.fastapi``): the same status
codes and the same ``{"error": ..., "message": ..., <details>}`` body, as
JSON for a client that does not ask for HTML, and as a page showing the
same for a browser.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, urlencode

import anyio
import jinja2
import msgspec
from fastapi import APIRouter, Depends, Header, Path, Query, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import state_machine
from .._errors import InvalidArgument, RunNotFound, SquidMeshError
from .._store import RunStore
from .._types import Run, RunStatus
from ..fastapi import MsgspecResponse, _error_response, _invalid_request, _Refused, get_store
from . import events, security, views

__all__ = ("build_router",)

_Store = Annotated[RunStore, Depends(get_store)]
_STATIC: Final = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_MAX_FORM_BYTES: Final = 8192
_REPLAYS_SHOWN: Final = 20
_NOTICES: Final = {
    "cancelled": "The run is cancelled.",
    "cancelling": "The run is cancelling: its runtime stops it after the current step.",
    "replayed": "This run is a replay, created just now.",
}
_RANGES: Final = (("last hour", {"hours": 1}), ("24 h", {"days": 1}), ("7 days", {"days": 7}))
# A time with an offset whose "+" arrived as a space: "2025-01-31T10:00 01:00".
_OFFSET_SPACE: Final = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")


# -- templates and static files ----------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("squidmesh._dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = views.format_time
    env.filters["precise_time"] = lambda value: views.format_time(value, precise=True)
    env.filters["iso"] = views.iso_time
    env.filters["pct"] = lambda value: f"{value:.3f}%"
    env.filters["json"] = views.pretty_json
    env.filters["error_line"] = views.error_summary
    return env


_ENV: Final = _environment()


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _load_static() -> dict[str, _Asset]:
    folder = resources.files("squidmesh._dashboard").joinpath("static")
    assets = {}
    for name, media_type in _STATIC.items():
        body = folder.joinpath(name).read_bytes()
        assets[name] = _Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])
    return assets


_ASSETS: Final = _load_static()


@dataclass(frozen=True, slots=True)
class _Site:
    """What every page of one router needs: where it lives, whether it acts."""

    prefix: str
    actions: bool

    def base(self, request: Request) -> str:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return root + self.prefix

    def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        base = self.base(request)
        token, new = security.csrf_token(request) if self.actions else ("", False)
        html = _ENV.get_template(template).render(
            base=base,
            static={name: f"{base}/static/{name}?v={a.etag}" for name, a in _ASSETS.items()},
            actions=self.actions,
            csrf_field=security.CSRF_FIELD,
            csrf_token=token,
            statuses=[status.value for status in state_machine.STATES],
            **context,
        )
        response = HTMLResponse(html, status_code)
        if new:
            security.set_csrf_cookie(response, request, token, base or "/")
        security.secure_headers(response)
        return response

    def error(self, request: Request, response: MsgspecResponse) -> Response:
        """The API's error answer, as a page when the client asks for HTML."""
        if "text/html" not in request.headers.get("accept", ""):
            security.secure_headers(response)
            return response
        body = msgspec.json.decode(response.body)
        details = {key: value for key, value in body.items() if key not in ("error", "message")}
        return self.render(
            request,
            "error.html",
            response.status_code,
            page="error",
            title=f"{response.status_code} {body.get('error', 'error')}",
            code=response.status_code,
            error=body.get("error", ""),
            message=body.get("message", ""),
            details=details,
        )


def _route_class(site: _Site) -> type[APIRoute]:
    class DashboardRoute(APIRoute):
        """Answers squidmesh errors, refused requests and FastAPI's validation
        errors as the run API does (``squidmesh.fastapi``)."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return site.error(request, _invalid_request(exc.errors()))
                except _Refused as exc:
                    return site.error(request, MsgspecResponse(exc.body, exc.status_code))
                except SquidMeshError as exc:
                    response = _error_response(exc)
                    if response is None:
                        raise
                    return site.error(request, response)

            return handle

    return DashboardRoute


# -- query values --------------------------------------------------------------------


def _time_bound(name: str, text: str) -> datetime | None:
    """A time filter from the query string: ISO 8601, UTC when it has no offset
    (the form's inputs are UTC); empty for none."""
    text = text.strip()
    if not text:
        return None
    # A "+" written unescaped in a URL arrives as a space.
    text = _OFFSET_SPACE.sub(r"\1+\2", text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            name, f"must be a date and time such as 2025-01-31T09:00 (UTC), not {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _input_time(value: datetime | None) -> str:
    """A time as a ``datetime-local`` input shows it: UTC, without an offset."""
    if value is None:
        return ""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def _query(**values: str | list[str] | None) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in values.items():
        if isinstance(value, list):
            pairs += [(key, item) for item in value]
        elif value:
            pairs.append((key, value))
    return "?" + urlencode(pairs) if pairs else ""


async def _gather(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Await the calls concurrently (each on a pooled connection of its own);
    their results in order. The first error is raised as itself, not in an
    exception group, so that the route's error mapping sees it."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int) -> None:
        results[index] = await calls[index]()

    try:
        async with anyio.create_task_group() as group:
            for index in range(len(calls)):
                group.start_soon(one, index)
    except BaseExceptionGroup as errors:
        first = next((e for e in errors.exceptions if isinstance(e, Exception)), None)
        if first is None:
            raise
        raise first from None
    return results


async def _counts(
    store: RunStore, workflow: str | None, after: datetime | None, before: datetime | None
) -> dict[str, int]:
    """The runs in each status for a workflow and time range: one statement
    (``count_runs_by_status``), or one per status when the range has an end."""
    if before is None:
        counts = await store.count_runs_by_status(workflow=workflow, created_after=after)
        return {str(status): n for status, n in counts.items()}

    def count(status: RunStatus) -> Callable[[], Awaitable[int]]:
        return lambda: store.count_runs(
            workflow=workflow, status=status, created_after=after, created_before=before
        )

    found = await _gather(*(count(status) for status in state_machine.STATES))
    return {status.value: n for status, n in zip(state_machine.STATES, found, strict=True)}


def _row(run: Run, now: datetime) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "workflow": run.workflow,
        "trigger": run.trigger,
        "status": str(run.status),
        "current_step": run.current_step or "",
        "inserted_at": run.inserted_at,
        "updated_at": run.updated_at,
        "version": run.version,
        "duration": views.run_duration(run, now=now),
        "error": views.error_summary(run.last_error),
        "replayed_from": str(run.replayed_from_run_id) if run.replayed_from_run_id else "",
    }


# -- forms ---------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of at most 8 KiB, first value per name."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise _Refused(
            415,
            "unsupported_media_type",
            "the dashboard's actions take a form (application/x-www-form-urlencoded), "
            f"not {media or 'no Content-Type'!r}",
            content_type=request.headers.get("content-type"),
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise _Refused(413, "request_too_large", f"a form is at most {_MAX_FORM_BYTES} bytes")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=16)
    return {key: values[0] for key, values in parsed.items()}


def _check_csrf(request: Request, form: dict[str, str]) -> None:
    problem = security.csrf_problem(request, form.get(security.CSRF_FIELD))
    if problem is not None:
        raise _Refused(403, "cross_site_request", f"refused: {problem}")


def _form_version(form: dict[str, str]) -> int | None:
    text = form.get("version", "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise InvalidArgument("version", f"must be a run version (a positive int), not {text!r}")
    return int(text)


# -- the router ---------------------------------------------------------------------------


def build_router(
    *, dependencies: Sequence[params.Depends], prefix: str, actions: bool
) -> APIRouter:
    """See ``squidmesh.fastapi.dashboard_router``."""
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"prefix must start with '/', not {prefix!r}")
    site = _Site(prefix, actions)
    router = APIRouter(
        prefix=prefix,
        dependencies=list(dependencies),
        route_class=_route_class(site),
        default_response_class=HTMLResponse,
        include_in_schema=False,
    )

    async def runs_page(
        request: Request,
        store: _Store,
        workflow: str = "",
        status: Annotated[list[str] | None, Query()] = None,
        trigger: str = "",
        created_after: str = "",
        created_before: str = "",
        replayed_from: str = "",
        cursor: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Response:
        now = datetime.now(UTC)
        after = _time_bound("created_after", created_after)
        before = _time_bound("created_before", created_before)
        statuses = [s for s in status or () if s]
        chosen = workflow.strip() or None
        position = await store.head_position()
        filters: dict[str, Any] = {
            "workflow": chosen,
            "status": statuses or None,
            "trigger": trigger.strip() or None,
            "created_after": after,
            "created_before": before,
            "replayed_from": replayed_from.strip() or None,
        }
        run_page, counts = await _gather(
            lambda: store.page_runs(**filters, limit=limit, cursor=cursor or None),
            lambda: _counts(store, chosen, after, before),
        )
        query = {
            "workflow": chosen,
            "status": statuses,
            "trigger": filters["trigger"],
            "created_after": views.iso_time(after) or None,
            "created_before": views.iso_time(before) or None,
            "replayed_from": filters["replayed_from"],
            "limit": str(limit) if limit != 50 else None,
        }
        base = site.base(request)
        registered = store.workflows
        triggers = sorted(
            {
                t.name
                for w in registered.values()
                if chosen is None or w.name == chosen
                for t in w.triggers
            }
        )
        ranges = [
            (
                label,
                _query(
                    **{
                        **query,
                        "created_after": views.iso_time(views.since(now, **delta)),
                        "created_before": None,
                    }
                ),
            )
            for label, delta in _RANGES
        ]
        ranges.append(
            ("all time", _query(**{**query, "created_after": None, "created_before": None}))
        )
        status_links = {
            s: _query(**{**query, "status": [s]}) for s in (st.value for st in state_machine.STATES)
        }
        events_query = _query(workflow=chosen, after=position)
        return site.render(
            request,
            "runs.html",
            page="runs",
            title="Runs" + (f" of {chosen}" if chosen else ""),
            runs=[_row(run, now) for run in run_page.runs],
            bar=views.counts_bar(counts),
            counts_scope=_counts_scope(chosen, after, before),
            workflows=sorted({*registered, *([chosen] if chosen else [])}),
            triggers=triggers,
            filters={
                "workflow": chosen or "",
                "status": statuses,
                "trigger": filters["trigger"] or "",
                "created_after": _input_time(after),
                "created_before": _input_time(before),
                "replayed_from": filters["replayed_from"] or "",
                "limit": limit,
            },
            ranges=ranges,
            status_links=status_links,
            clear_status=_query(**{**query, "status": None}),
            next_url=(
                _query(**query, cursor=run_page.next_cursor) if run_page.next_cursor else None
            ),
            first_url=_query(**query) or "?" if cursor else None,
            events_url=f"{base}/events{events_query}",
        )

    async def run_page(
        request: Request,
        store: _Store,
        run_id: Annotated[str, Path()],
        notice: str = "",
    ) -> Response:
        now = datetime.now(UTC)
        position = await store.head_position()
        run, replay_page = await _gather(
            lambda: store.get_run(run_id, include_history=True),
            lambda: store.page_runs(replayed_from=run_id, limit=_REPLAYS_SHOWN),
        )
        source: Run | None = None
        source_missing = False
        if run.replayed_from_run_id is not None:
            try:
                source = await store.get_run(run.replayed_from_run_id)
            except RunNotFound:
                source_missing = True
        base = site.base(request)
        steps = [
            {
                "step": state.step,
                "status": state.status,
                "depends_on": state.depends_on,
                "attempts": len(state.attempts),
                "failed": sum(1 for a in state.attempts if a.status == "failed"),
                "inserted_at": state.inserted_at,
                "updated_at": state.updated_at,
                "last_error": state.last_error,
                "errors": [
                    (a.attempt_number, a.error) for a in state.attempts if a.error is not None
                ],
            }
            for state in run.steps or ()
        ]
        listed = {s["step"] for s in steps}
        for step_run in run.step_runs or ():
            if step_run.step not in listed:  # a step the workflow no longer declares
                steps.append(
                    {
                        "step": step_run.step,
                        "status": step_run.status,
                        "depends_on": [],
                        "attempts": len(step_run.attempts),
                        "failed": sum(1 for a in step_run.attempts if a.status == "failed"),
                        "inserted_at": step_run.inserted_at,
                        "updated_at": step_run.updated_at,
                        "last_error": step_run.last_error,
                        "errors": [
                            (a.attempt_number, a.error)
                            for a in step_run.attempts
                            if a.error is not None
                        ],
                    }
                )
        return site.render(
            request,
            "run.html",
            page="run",
            title=f"{run.workflow} · {run.id}",
            run=_row(run, now),
            record=run,
            terminal=state_machine.is_terminal(run.status),
            timeline=views.timeline(run, now=now),
            steps=steps,
            audit=sorted(run.audit_events or (), key=lambda e: e.at),
            source=_row(source, now) if source is not None else None,
            source_id=str(run.replayed_from_run_id) if run.replayed_from_run_id else "",
            source_missing=source_missing,
            replays=[_row(r, now) for r in replay_page.runs],
            more_replays=(
                f"{base}/{_query(replayed_from=str(run.id))}" if replay_page.next_cursor else None
            ),
            registered=run.workflow in store.workflows,
            notice=_NOTICES.get(notice, ""),
            events_url=base
            + "/events"
            + _query(workflow=run.workflow, run_id=str(run.id), after=position),
        )

    async def workflows_page(request: Request, store: _Store) -> Response:
        now = datetime.now(UTC)
        return site.render(
            request,
            "workflows.html",
            page="workflows",
            title="Workflows",
            workflows=views.workflow_views(store.workflows.values(), now=now),
        )

    async def event_stream(
        store: _Store,
        workflow: str = "",
        run_id: str = "",
        after: str = "",
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        position, reset = await events.start_position(store, last_event_id, after)
        return events.EventStream(
            store,
            position,
            reset=reset,
            workflow=workflow.strip() or None,
            run_id=run_id.strip().lower() or None,
            headers={
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def static_file(
        name: Annotated[str, Path()],
        if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    ) -> Response:
        asset = _ASSETS.get(name)
        if asset is None:
            return Response("not found", 404, media_type="text/plain")
        etag = f'"{asset.etag}"'
        headers = {
            "ETag": etag,
            "Cache-Control": "private, max-age=86400",
            "X-Content-Type-Options": "nosniff",
        }
        if if_none_match is not None and etag in if_none_match:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    async def cancel(request: Request, store: _Store, run_id: Annotated[str, Path()]) -> Response:
        form = await _form(request)
        _check_csrf(request, form)
        run = await store.cancel_run(run_id, expected_version=_form_version(form))
        return RedirectResponse(
            f"{site.base(request)}/runs/{run.id}?notice={run.status}", status_code=303
        )

    async def replay(request: Request, store: _Store, run_id: Annotated[str, Path()]) -> Response:
        form = await _form(request)
        _check_csrf(request, form)
        run = await store.replay_run(run_id)
        return RedirectResponse(
            f"{site.base(request)}/runs/{run.id}?notice=replayed", status_code=303
        )

    router.add_api_route("/", runs_page, methods=["GET"], name="squidmesh_dashboard_runs")
    router.add_api_route(
        "/runs/{run_id}", run_page, methods=["GET"], name="squidmesh_dashboard_run"
    )
    router.add_api_route(
        "/workflows", workflows_page, methods=["GET"], name="squidmesh_dashboard_workflows"
    )
    router.add_api_route(
        "/events", event_stream, methods=["GET"], name="squidmesh_dashboard_events"
    )
    router.add_api_route(
        "/static/{name}", static_file, methods=["GET"], name="squidmesh_dashboard_static"
    )
    if actions:
        router.add_api_route(
            "/runs/{run_id}/cancel",
            cancel,
            methods=["POST"],
            name="squidmesh_dashboard_cancel",
        )
        router.add_api_route(
            "/runs/{run_id}/replay",
            replay,
            methods=["POST"],
            name="squidmesh_dashboard_replay",
        )
    return router


def _counts_scope(workflow: str | None, after: datetime | None, before: datetime | None) -> str:
    """What the counts cover, after "N runs": ``of billing.x, created since ...``."""
    scope = f"of {workflow}" if workflow else "of every workflow"
    if after and before:
        return (
            f"{scope}, created from {views.format_time(after)} to {views.format_time(before)} UTC"
        )
    if after:
        return f"{scope}, created since {views.format_time(after)} UTC"
    if before:
        return f"{scope}, created before {views.format_time(before)} UTC"
    return f"{scope}, all time"
