"""squidmesh.fastapi.dashboard_router against a real PostgreSQL, over ASGI (no browser).

The HTML routes: status codes, what the pages say, escaping, the errors of
the run API, the guard on every route, the cross-site checks of the action
forms. The event stream is read over real HTTP (uvicorn on 127.0.0.1),
since httpx's ASGI transport waits for a response to end before it returns
it. The browser tests (test_dashboard_browser.py) import the helpers here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException

from squidmesh import Run, RunStatus, RunStore
from squidmesh.fastapi import dashboard_router, lifespan, runs_router
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

USER, PASSWORD = "ops", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
AUTH = {"Authorization": BASIC}
HTML = {"Accept": "text/html"}
XSS = "<script>window.__pwned=1</script>"
REPO = Path(__file__).resolve().parents[2]
INVOICE = INVOICE_REMINDER.name


async def require_user(authorization: Annotated[str | None, Header()] = None) -> None:
    """HTTP Basic, as a browser sends it."""
    if authorization != BASIC:
        raise HTTPException(401, "who are you?", headers={"WWW-Authenticate": 'Basic realm="ops"'})


def make_app(*, actions: bool) -> FastAPI:
    app = FastAPI()
    guard = [Depends(require_user)]
    app.include_router(runs_router(dependencies=guard, prefix="/api"))
    app.include_router(dashboard_router(dependencies=guard, prefix="/dashboard", actions=actions))
    return app


@contextlib.asynccontextmanager
async def opened(dsn: str, *, actions: bool) -> AsyncIterator[tuple[FastAPI, RunStore]]:
    """The app with its store open (the ASGI transport runs no lifespan)."""
    app = make_app(actions=actions)
    async with lifespan(dsn, workflows=WORKFLOWS)(app):
        store = app.state.squidmesh
        assert isinstance(store, RunStore)
        yield app, store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` under uvicorn on 127.0.0.1 (in this event loop); yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        assert not task.done(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def story(store: RunStore, *, payload: dict[str, Any] | None = None) -> Run:
    """A run with everything a run page shows: a failed and a retried
    attempt, an approval by a person, a step that failed, the run failed."""
    run = await store.create_run(
        INVOICE, payload or {"account_id": XSS, "note": "net 30"}, trigger="invoice_delivery"
    )
    await store.transition_run(run.id, "running", context={"invoice": 42, "lines": [1, 2]})
    load = await store.begin_step(run.id, "load_invoice", {"invoice": 42})
    first = await store.begin_attempt(load.id)
    await store.fail_attempt(first.id, {"message": "billing API timed out"})
    second = await store.begin_attempt(load.id)
    await store.complete_attempt(second.id)
    await store.complete_step(load.id, {"total": 120})
    approve = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(approve.id)
    await store.pause_run(run.id, approve.id, attempt.id, {"current_step": "approve"})
    await store.complete_manual_step(
        approve.id, {}, {"type": "approved", "actor": "alice", "comment": "looks right"}
    )
    await store.transition_run(run.id, "running", current_step="send_email")
    send = await store.begin_step(run.id, "send_email", {})
    mail = await store.begin_attempt(send.id)
    await store.fail_attempt(mail.id, {"message": "SMTP 550 mailbox unavailable"})
    await store.fail_step(send.id, {"message": "SMTP 550 mailbox unavailable"})
    return await store.transition_run(
        run.id, "failed", last_error={"message": "SMTP 550 mailbox unavailable", "code": 550}
    )


async def some_runs(store: RunStore, count: int, *, workflow: str = INVOICE) -> list[Run]:
    runs = []
    for i in range(count):
        payload = {"account_id": f"acct-{i}"} if workflow == INVOICE else {}
        runs.append(await store.create_run(workflow, payload))
    return runs


def rows(html: str) -> list[str]:
    """The run ids of the runs table, in order."""
    return re.findall(r'<tr data-run-id="([0-9a-f-]{36})"', html)


def statuses_shown(html: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(r'data-count="(\w+)">(\d+)<', html)}


@pytest.fixture
async def app_and_store(dsn: str) -> AsyncIterator[tuple[FastAPI, RunStore]]:
    async with opened(dsn, actions=True) as pair:
        yield pair


@pytest.fixture
def app_store(app_and_store: tuple[FastAPI, RunStore]) -> RunStore:
    return app_and_store[1]


@pytest.fixture
async def client(app_and_store: tuple[FastAPI, RunStore]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_and_store[0])
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/dashboard", headers=AUTH
    ) as client:
        yield client


# -- the pages ---------------------------------------------------------------------


async def test_runs_page_lists_runs_newest_first_with_counts(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    runs = await some_runs(app_store, 3)
    await app_store.transition_run(runs[0].id, "running")
    await app_store.cancel_run(runs[1].id)
    response = await client.get("/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert rows(response.text) == [str(r.id) for r in reversed(runs)]
    counts = statuses_shown(response.text)
    assert counts["pending"] == 1 and counts["running"] == 1 and counts["cancelled"] == 1
    assert counts["failed"] == 0 and len(counts) == 8
    assert "<b data-total>3</b> runs of every workflow, all time" in response.text
    # The live stream starts where the page was rendered.
    assert re.search(r'data-events="/dashboard/events\?after=1\.[0-9a-f]+\.\.0"', response.text)


async def test_runs_page_filters_are_kept_in_the_url(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    invoices = await some_runs(app_store, 2)
    etl = await some_runs(app_store, 2, workflow="etl.daily")
    await app_store.transition_run(etl[0].id, "running")
    page = await client.get("/", params={"workflow": "etl.daily"})
    assert rows(page.text) == [str(r.id) for r in reversed(etl)]
    assert "<b data-total>2</b> runs of etl.daily, all time" in page.text
    assert '<option value="etl.daily" selected>' in page.text
    page = await client.get("/", params=[("workflow", "etl.daily"), ("status", "running")])
    assert rows(page.text) == [str(etl[0].id)]
    assert 'value="running" checked' in page.text
    # The status links of the legend keep the workflow.
    assert 'href="?workflow=etl.daily&amp;status=failed"' in page.text
    page = await client.get("/", params={"trigger": "invoice_delivery"})
    assert rows(page.text) == [str(r.id) for r in reversed(invoices)]
    # Empty form fields mean "any"; a time without an offset is UTC.
    page = await client.get(
        "/",
        params={"workflow": "", "trigger": "", "created_after": "2000-01-01T00:00"},
    )
    assert len(rows(page.text)) == 4
    assert 'name="created_after" step="1" value="2000-01-01T00:00:00"' in page.text
    assert "created since 2000-01-01 00:00:00 UTC" in page.text
    page = await client.get("/", params={"created_before": "2000-01-01T00:00:00+00:00"})
    assert rows(page.text) == [] and "No runs match these filters." in page.text
    assert "<b data-total>0</b>" in page.text


async def test_runs_page_pages_by_cursor(client: httpx.AsyncClient, app_store: RunStore) -> None:
    runs = list(reversed(await some_runs(app_store, 5)))
    first = await client.get("/", params={"limit": 2})
    assert rows(first.text) == [str(r.id) for r in runs[:2]]
    seen = rows(first.text)
    html = first.text
    while (match := re.search(r'<a rel="next" href="\?([^"]+)"', html)) is not None:
        html = (await client.get("/?" + match.group(1).replace("&amp;", "&"))).text
        assert "« Newest" in html
        seen += rows(html)
    assert seen == [str(r.id) for r in runs]
    assert "No older runs." in html


async def test_runs_page_refuses_what_the_api_refuses(client: httpx.AsyncClient) -> None:
    bad = await client.get("/", params={"cursor": "nope"}, headers=HTML)
    assert bad.status_code == 422
    assert "invalid_cursor" in bad.text and "text/html" in bad.headers["content-type"]
    bad = await client.get("/", params={"status": "sleeping"})
    assert bad.status_code == 422
    assert bad.json()["error"] == "unknown_status" and bad.json()["value"] == "sleeping"
    bad = await client.get("/", params={"created_after": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_argument"
    bad = await client.get("/", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"


async def test_run_page_shows_fields_timeline_audit_and_lineage(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = await story(app_store)
    replay = await app_store.replay_run(run.id)
    response = await client.get(f"/runs/{run.id}")
    assert response.status_code == 200, response.text
    html = response.text
    assert f'<code class="run-id">{run.id}</code>' in html
    assert '<span class="status status-failed">failed</span>' in html
    # payload, context and the last error as formatted JSON, escaped
    assert "&#34;account_id&#34;: &#34;&lt;script&gt;window.__pwned=1&lt;/script&gt;&#34;" in html
    assert XSS not in html
    assert "&#34;lines&#34;: [\n    1,\n    2\n  ]" in html
    assert "&#34;code&#34;: 550" in html
    # the timeline: one lane for the status and each step, one for decisions
    assert html.count('data-lane="step"') == 3
    assert html.count('data-lane="status"') == 1 and html.count('data-lane="audit"') == 1
    assert html.count('class="attempt attempt-failed"') == 2
    assert 'data-failed-attempts="2"' in html
    assert "load_invoice attempt 1 failed: billing API timed out" in html
    assert "pending → running" in html and "running → failed" in html
    # the decision
    assert "approve: approved by alice — “looks right”" in html
    assert "<td>alice</td>" in html and "<td>looks right</td>" in html
    # lineage both ways
    assert f'href="/dashboard/runs/{replay.id}"' in html
    page = await client.get(f"/runs/{replay.id}")
    assert f'href="/dashboard/runs/{run.id}"' in page.text
    assert "Replayed from:" in page.text


async def test_run_page_of_an_unknown_run_is_the_api_404(client: httpx.AsyncClient) -> None:
    for run_id in ("00000000-0000-7000-8000-000000000000", "not-a-uuid"):
        as_json = await client.get(f"/runs/{run_id}")
        assert as_json.status_code == 404
        assert as_json.json() == {
            "error": "run_not_found",
            "message": f"run {run_id!r} not found",
            "run_id": run_id,
        }
        as_page = await client.get(f"/runs/{run_id}", headers=HTML)
        assert as_page.status_code == 404
        assert "<code>run_not_found</code>" in as_page.text


async def test_workflows_page_lists_triggers_fields_schedules_and_steps(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/workflows")).text
    assert html.index("billing.invoice_reminder") < html.index("etl.daily")
    assert '<tr data-trigger="invoice_delivery">' in html and '<tr data-trigger="nightly">' in html
    assert '<code>account_id</code> <span class="type">str</span>' in html
    assert "default: today (UTC)" in html
    assert '<code class="cron">0 9 * * 1-5</code>' in html and "in Etc/UTC" in html
    assert "At 09:00 on Monday through Friday" in html
    assert "next: " in html
    # transition steps in the order runs meet them, then the edges
    order = re.findall(r'<li data-step="(\w+)">', html)
    assert order[:4] == ["load_invoice", "approve", "send_email", "record_rejection"]
    assert order[4:] == ["extract", "transform", "audit", "load"]
    assert "on <code>error</code> → <code>record_rejection</code>" in html
    assert "after transform" in html


async def test_a_payload_is_escaped_everywhere(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = await app_store.create_run(
        INVOICE, {"account_id": XSS, "note": '"><img src=x onerror=alert(1)>'}
    )
    await app_store.transition_run(run.id, "running")
    await app_store.transition_run(
        run.id, "failed", last_error={"message": XSS}, current_step="<b>step</b>"
    )
    for path in ("/", f"/runs/{run.id}"):
        html = (await client.get(path)).text
        assert XSS not in html and "<img src=x" not in html and "<b>step</b>" not in html
    html = (await client.get(f"/runs/{run.id}")).text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html


# -- the guard ----------------------------------------------------------------------


async def test_every_route_needs_the_dependencies(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = (await some_runs(app_store, 1))[0]
    for method, path in (
        ("GET", "/"),
        ("GET", f"/runs/{run.id}"),
        ("GET", "/workflows"),
        ("GET", "/events"),
        ("GET", "/static/dashboard.js"),
        ("POST", f"/runs/{run.id}/cancel"),
        ("POST", f"/runs/{run.id}/replay"),
    ):
        response = await client.request(method, path, headers={"Authorization": ""})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == 'Basic realm="ops"'
    assert (await app_store.get_run(run.id)).status == RunStatus.PENDING


async def test_static_files_are_the_packages_own(client: httpx.AsyncClient) -> None:
    script = await client.get("/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text and "http" not in script.text.replace("https", "")
    again = await client.get(
        "/static/dashboard.js", headers={"If-None-Match": script.headers["etag"]}
    )
    assert again.status_code == 304
    css = await client.get("/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "url(" not in css.text and "@import" not in css.text
    assert (await client.get("/static/../router.py")).status_code == 404
    assert (await client.get("/static/nope.js")).status_code == 404
    page = (await client.get("/")).text
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith(("/dashboard", "?")), url


async def test_no_route_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    doc = (await client.get("http://test/openapi.json")).json()
    assert not [path for path in doc["paths"] if path.startswith("/dashboard")]


# -- actions ----------------------------------------------------------------------------


async def csrf(client: httpx.AsyncClient, run: Run) -> str:
    """Load the run page as a browser would (which sets the cookie); its form token."""
    page = await client.get(f"/runs/{run.id}")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "no action form on the run page"
    assert client.cookies.get("squidmesh_csrf") == match.group(1)
    return match.group(1)


SAME_SITE = {"Sec-Fetch-Site": "same-origin", "Origin": "http://test", **HTML}


async def test_cancel_from_the_page(client: httpx.AsyncClient, app_store: RunStore) -> None:
    run = (await some_runs(app_store, 1))[0]
    token = await csrf(client, run)
    page = (await client.get(f"/runs/{run.id}")).text
    assert ">Cancel run</button>" in page and ">Replay</button>" in page
    response = await client.post(
        f"/runs/{run.id}/cancel",
        data={"csrf_token": token, "version": str(run.version)},
        headers=SAME_SITE,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/dashboard/runs/{run.id}?notice=cancelled"
    assert (await app_store.get_run(run.id)).status == RunStatus.CANCELLED
    page = (await client.get("http://test" + response.headers["location"])).text
    assert "The run is cancelled." in page and ">Cancel run</button>" not in page


async def test_replay_from_the_page(client: httpx.AsyncClient, app_store: RunStore) -> None:
    run = (await some_runs(app_store, 1))[0]
    token = await csrf(client, run)
    response = await client.post(
        f"/runs/{run.id}/replay", data={"csrf_token": token}, headers=SAME_SITE
    )
    assert response.status_code == 303, response.text
    replay_id = response.headers["location"].split("/")[-1].split("?")[0]
    replay = await app_store.get_run(replay_id)
    assert replay.replayed_from_run_id == run.id and replay.status == RunStatus.PENDING


async def test_actions_answer_the_api_errors(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = (await some_runs(app_store, 1))[0]
    token = await csrf(client, run)
    form = {"csrf_token": token}
    stale = await client.post(
        f"/runs/{run.id}/cancel",
        data={**form, "version": "7"},
        headers={**SAME_SITE, "Accept": "application/json"},
    )
    assert stale.status_code == 412
    assert stale.json() | {"message": ""} == {
        "error": "version_conflict",
        "message": "",
        "run_id": str(run.id),
        "expected": 7,
        "actual": 1,
    }
    await app_store.cancel_run(run.id)
    again = await client.post(f"/runs/{run.id}/cancel", data=form, headers=SAME_SITE)
    assert again.status_code == 409
    assert "<code>invalid_transition</code>" in again.text and "cancelled" in again.text
    api = await client.post(f"http://test/api/runs/{run.id}/cancel")
    assert api.status_code == 409 and api.json()["error"] == "invalid_transition"
    missing = "00000000-0000-7000-8000-000000000000"
    gone = await client.post(
        f"/runs/{missing}/replay", data=form, headers={**SAME_SITE, "Accept": "*/*"}
    )
    assert gone.status_code == 404 and gone.json()["error"] == "run_not_found"
    not_a_form = await client.post(
        f"/runs/{run.id}/replay", json=form, headers={**SAME_SITE, "Accept": "*/*"}
    )
    assert not_a_form.status_code == 415
    assert not_a_form.json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("headers", "token", "why"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, "good", "Sec-Fetch-Site: cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "good", "Sec-Fetch-Site: same-site"),
        ({"Origin": "http://evil.example"}, "good", "another origin"),
        ({"Origin": "null"}, "good", "another origin"),
        ({}, "", "token does not match"),
        ({}, "x" * 43, "token does not match"),
    ],
)
async def test_cross_site_actions_are_refused(
    client: httpx.AsyncClient,
    app_store: RunStore,
    headers: dict[str, str],
    token: str,
    why: str,
) -> None:
    run = (await some_runs(app_store, 1))[0]
    good = await csrf(client, run)
    for action in ("cancel", "replay"):
        response = await client.post(
            f"/runs/{run.id}/{action}",
            data={"csrf_token": good if token == "good" else token},
            headers={"Accept": "application/json", **headers},
        )
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "cross_site_request"
        assert why in response.json()["message"]
    assert (await app_store.get_run(run.id)).status == RunStatus.PENDING
    assert (await app_store.page_runs(replayed_from=run.id)).runs == []


async def test_an_action_without_the_cookie_is_refused(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = (await some_runs(app_store, 1))[0]
    token = await csrf(client, run)
    client.cookies.clear()
    response = await client.post(
        f"/runs/{run.id}/cancel", data={"csrf_token": token}, headers={"Accept": "*/*"}
    )
    assert response.status_code == 403 and "cookie is missing" in response.json()["message"]


async def test_without_actions_there_are_no_buttons_and_no_routes(dsn: str) -> None:
    async with opened(dsn, actions=False) as (app, store):
        run = (await some_runs(store, 1))[0]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test/dashboard", headers=AUTH
        ) as client:
            page = await client.get(f"/runs/{run.id}")
            assert page.status_code == 200
            assert '<form method="post"' not in page.text and "csrf_token" not in page.text
            assert "squidmesh_csrf" not in page.headers.get("set-cookie", "")
            for action in ("cancel", "replay"):
                response = await client.post(
                    f"/runs/{run.id}/{action}", data={"csrf_token": "x"}, headers=SAME_SITE
                )
                assert response.status_code in (404, 405), response.text
        assert (await store.get_run(run.id)).status == RunStatus.PENDING


def test_prefix_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        dashboard_router(prefix="dashboard")


# -- the event stream, over real HTTP ----------------------------------------------------


class Events:
    """The events of an open ``text/event-stream`` response, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, wanted: int) -> list[tuple[str, str, str]]:
        """The next ``wanted`` events (id, event, data); fewer if 10 s pass first."""
        found: list[tuple[str, str, str]] = []
        fields: dict[str, str] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                async for line in self.lines:
                    if line.startswith(":"):
                        continue
                    if line:
                        name, _, value = line.partition(": ")
                        fields[name] = value
                        continue
                    if "event" in fields:
                        found.append(
                            (fields.get("id", ""), fields["event"], fields.get("data", ""))
                        )
                        if len(found) >= wanted:
                            break
                    fields = {}
        return found


async def test_event_stream_sends_changes_as_they_commit(dsn: str) -> None:
    async with opened(dsn, actions=False) as (app, store), served(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            refused = await http.get("/dashboard/events")
            assert refused.status_code == 401
            async with http.stream("GET", "/dashboard/events", headers=AUTH) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                stream = Events(response)
                (ready,) = await stream.next(1)
                assert ready[1] == "ready" and ready[2] == '{"reset":false}'
                run = (await some_runs(store, 1))[0]
                await store.transition_run(run.id, "running")
                created, moved = await stream.next(2)
            assert [e[1] for e in (created, moved)] == ["change", "change"]
            assert f'"run_id":"{run.id}"' in created[2] and '"from_status":null' in created[2]
            assert '"from_status":"pending","to_status":"running"' in moved[2]
            # Resuming from the last id sends only what followed it.
            async with http.stream(
                "GET", "/dashboard/events", headers={**AUTH, "Last-Event-ID": created[0]}
            ) as response:
                ready, again = await Events(response).next(2)
            assert ready == (created[0], "ready", '{"reset":false}')
            assert again == moved


async def test_event_stream_filters_by_workflow_and_run(dsn: str) -> None:
    async with opened(dsn, actions=False) as (app, store), served(app) as base:
        run = (await some_runs(store, 1))[0]
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=AUTH) as http:
            async with http.stream(
                "GET", "/dashboard/events", params={"workflow": INVOICE, "run_id": str(run.id)}
            ) as response:
                stream = Events(response)
                await stream.next(1)
                await some_runs(store, 2, workflow="etl.daily")
                await some_runs(store, 1)
                await store.transition_run(run.id, "running")
                (change,) = await stream.next(1)
            assert f'"run_id":"{run.id}"' in change[2] and '"to_status":"running"' in change[2]


async def test_event_stream_restarts_from_the_head_after_a_bad_position(dsn: str) -> None:
    async with opened(dsn, actions=False) as (app, _store), served(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=AUTH) as http:
            async with http.stream(
                "GET", "/dashboard/events", headers={"Last-Event-ID": "garbage"}
            ) as response:
                (ready,) = await Events(response).next(1)
            assert ready[1] == "ready" and ready[2] == '{"reset":true}'


# -- the example app ---------------------------------------------------------------------


async def test_the_example_app_serves_the_dashboard(dsn: str, tmp_path: Path) -> None:
    """`uvicorn examples.fastapi_app:app`: the dashboard at /dashboard/, behind
    HTTP Basic with SQUIDMESH_API_TOKEN as the password, with its actions."""
    port = free_port()
    token = "example-token"
    env = dict(os.environ, SQUIDMESH_DSN=dsn, SQUIDMESH_API_TOKEN=token)
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                assert server.returncode is None, log_path.read_text()
                try:
                    if (await http.get("/openapi.json")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
                await asyncio.sleep(0.1)
            refused = await http.get("/dashboard/")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Basic realm="squidmesh dashboard"'
            wrong = await http.get("/dashboard/", auth=("ops", "nope"))
            assert wrong.status_code == 401
            created = await http.post(
                "/api/workflows/billing.invoice_reminder/runs",
                json={"account_id": "acct-1"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201, created.text
            page = await http.get("/dashboard/", auth=("anyone", token))
            assert page.status_code == 200 and rows(page.text) == [created.json()["id"]]
            run = await http.get(f"/dashboard/runs/{created.json()['id']}", auth=("ops", token))
            assert ">Cancel run</button>" in run.text
            flows = await http.get("/dashboard/workflows", auth=("ops", token))
            assert "billing.invoice_reminder" in flows.text
    finally:
        if server.returncode is None:
            server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 20)
        except TimeoutError:
            server.kill()
            await server.wait()


# -- the README ---------------------------------------------------------------------------

README_SECTION = "A dashboard in the browser"


def _readme_blocks(heading: str) -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    if f"\n## {heading}\n" not in readme:
        pytest.skip(f"the README has no section {heading!r} yet")
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


async def test_readme_dashboard_block_serves_the_dashboard(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's dashboard block, run as written after its FastAPI block."""
    from squidmesh._demo import invoice_reminder

    (dashboard,) = _readme_blocks(README_SECTION)
    (api,) = _readme_blocks("Serving runs over HTTP (FastAPI)")
    monkeypatch.setenv("SQUIDMESH_DSN", dsn)
    monkeypatch.setenv("SQUIDMESH_API_TOKEN", "t0ken")
    monkeypatch.setenv("SQUIDMESH_DASHBOARD_PASSWORD", "pa55")
    namespace: dict[str, Any] = {"invoice_reminder": invoice_reminder}
    exec(compile(api, "README.md", "exec"), namespace)
    exec(compile(dashboard, "README.md", "exec"), namespace)
    app = namespace["app"]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            refused = await client.get("/dashboard/")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Basic")
            assert (await client.get("/dashboard/", auth=("ops", "nope"))).status_code == 401
            page = await client.get("/dashboard/workflows", auth=("ops", "pa55"))
            assert page.status_code == 200 and "billing.invoice_reminder" in page.text
