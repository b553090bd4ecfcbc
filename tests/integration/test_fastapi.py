"""squidmesh.fastapi against a real PostgreSQL: httpx over ASGI, and once over real HTTP.

The ASGI transport runs no lifespan, so the fixture enters
``lifespan(dsn)(app)`` itself. The test app mounts ``runs_router`` under
``/api`` behind a bearer-token dependency, with the suite's workflows.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException

from squidmesh import RunStatus, RunStore
from squidmesh.fastapi import MAX_WAIT_SECONDS, get_store, lifespan, runs_router
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER, WORKFLOWS

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INVOICE = "/workflows/billing.invoice_reminder/runs"
ETL = "/workflows/etl.daily/runs"
ROUTES = {
    ("GET", "/api/runs"),
    ("GET", "/api/runs/counts"),
    ("GET", "/api/runs/{run_id}"),
    ("POST", "/api/workflows/{workflow}/runs"),
    ("POST", "/api/runs/{run_id}/cancel"),
    ("POST", "/api/runs/{run_id}/replay"),
}
HISTORY = ("step_runs", "steps", "audit_events", "transitions")


async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "no entry", headers={"WWW-Authenticate": "Bearer"})


def make_app() -> FastAPI:
    app = FastAPI()
    app.include_router(runs_router(dependencies=[Depends(require_token)], prefix="/api"))
    return app


@pytest.fixture
async def app(dsn: str) -> AsyncIterator[FastAPI]:
    app = make_app()
    async with lifespan(dsn, workflows=WORKFLOWS)(app):
        yield app


@pytest.fixture
def app_store(app: FastAPI) -> RunStore:
    store = app.state.squidmesh
    assert isinstance(store, RunStore)
    return store


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/api", headers=AUTH
    ) as client:
        yield client


async def create(client: httpx.AsyncClient, account: str = "acct-1") -> dict[str, Any]:
    response = await client.post(INVOICE, json={"account_id": account})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def error(response: httpx.Response, status_code: int, name: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error"] == name, body
    assert isinstance(body["message"], str) and body["message"]
    return body


# -- create ------------------------------------------------------------------------


async def test_create_answers_201_with_location_etag_and_no_history(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(INVOICE, json={"account_id": "acct-1", "note": "hi"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["content-type"] == "application/json"
    assert response.headers["location"] == f"/api/runs/{body['id']}"
    assert response.headers["etag"] == '"1"'
    assert body["workflow"] == "billing.invoice_reminder"
    assert body["trigger"] == "invoice_delivery"
    assert body["status"] == "pending"
    assert body["current_step"] == "load_invoice"
    assert body["payload"]["account_id"] == "acct-1"
    assert body["payload"]["note"] == "hi"
    assert body["payload"]["posted_on"] == datetime.now(UTC).date().isoformat()
    assert body["version"] == 1 and body["idempotency_key"] is None
    for name in HISTORY:
        assert name not in body
    fetched = await client.get(response.headers["location"].removeprefix("/api"))
    assert fetched.status_code == 200 and fetched.json()["id"] == body["id"]


async def test_create_through_a_named_trigger_and_with_an_empty_body(
    client: httpx.AsyncClient,
) -> None:
    nightly = await client.post(INVOICE, params={"trigger": "nightly"}, json={})
    assert nightly.status_code == 201, nightly.text
    assert nightly.json()["trigger"] == "nightly"
    empty = await client.post(ETL)  # no body, no content type: the payload {}
    assert empty.status_code == 201, empty.text
    assert empty.json()["payload"] == {} and empty.json()["trigger"] == "manual"


async def test_create_errors(client: httpx.AsyncClient) -> None:
    body = error(await client.post("/workflows/nope/runs", json={}), 404, "invalid_workflow")
    assert body["name"] == "nope"

    body = error(
        await client.post(INVOICE, params={"trigger": "hourly"}, json={}), 422, "invalid_trigger"
    )
    assert body["name"] == "hourly" and body["workflow"] == "billing.invoice_reminder"

    body = error(
        await client.post(INVOICE, json={"note": 5, "extra": True, "posted_on": 1}),
        422,
        "invalid_payload",
    )
    assert body["missing_fields"] == ["account_id"]
    assert body["unknown_fields"] == ["extra"]
    assert set(body["invalid_types"]) == {"note", "posted_on"}
    assert body["expected_map"] is False

    body = error(await client.post(INVOICE, json=["account_id"]), 422, "invalid_payload")
    assert body["expected_map"] is True

    body = error(
        await client.post(
            INVOICE, content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        422,
        "invalid_request",
    )
    assert body["problems"][0]["loc"] == ["body"]
    assert body["problems"][0]["type"] == "json_invalid"

    body = error(
        await client.post(INVOICE, content=b"account_id=a", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert body["content_type"] == "text/plain"

    ok = await client.post(
        INVOICE,
        content=b'{"account_id": "a"}',
        headers={"Content-Type": "application/merge-patch+json; charset=utf-8"},
    )
    assert ok.status_code == 201, ok.text


async def test_idempotency_key_answers_201_then_200_then_409(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await client.post(INVOICE, json={"account_id": "a", "note": "x"}, headers=key)
    assert first.status_code == 201, first.text
    assert first.json()["idempotency_key"] == "order-42"
    again = await client.post(INVOICE, json={"note": "x", "account_id": "a"}, headers=key)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == '"1"'

    body = error(
        await client.post(INVOICE, json={"account_id": "b"}, headers=key),
        409,
        "idempotency_conflict",
    )
    assert body["run_id"] == first.json()["id"]
    assert body["idempotency_key"] == "order-42"
    assert body["workflow"] == "billing.invoice_reminder"

    # The key is per workflow: another workflow may use it.
    other = await client.post(ETL, json={}, headers=key)
    assert other.status_code == 201, other.text

    body = error(
        await client.post(
            INVOICE, json={"account_id": "a"}, headers={"Idempotency-Key": "k" * 256}
        ),
        422,
        "invalid_argument",
    )
    assert body["name"] == "idempotency_key"


# -- read --------------------------------------------------------------------------


async def test_get_run_with_and_without_history(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = await create(client)
    plain = await client.get(f"/runs/{run['id']}")
    assert plain.status_code == 200
    assert plain.json() == run
    assert plain.headers["etag"] == '"1"'

    step = await app_store.begin_step(run["id"], "load_invoice", {"n": 1})
    await app_store.transition_run(run["id"], RunStatus.RUNNING)
    full = await client.get(f"/runs/{run['id']}", params={"history": "true"})
    assert full.status_code == 200, full.text
    body = full.json()
    assert full.headers["etag"] == '"2"' and body["version"] == 2
    assert [s["id"] for s in body["step_runs"]] == [str(step.id)]
    assert [s["step"] for s in body["steps"]][:1] == ["load_invoice"]
    assert body["audit_events"] == []
    assert [(t["from_status"], t["to_status"]) for t in body["transitions"]] == [
        (None, "pending"),
        ("pending", "running"),
    ]


async def test_get_unknown_run_is_404(client: httpx.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    body = error(await client.get(f"/runs/{missing}"), 404, "run_not_found")
    assert body["run_id"] == missing
    body = error(await client.get("/runs/not-a-uuid"), 404, "run_not_found")
    assert body["run_id"] == "not-a-uuid"


async def test_long_poll_answers_200_when_the_run_finishes_during_the_wait(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = await app_store.create_run(ETL_DAILY, {})

    async def finish() -> None:
        await asyncio.sleep(0.3)
        await app_store.transition_run(run.id, RunStatus.RUNNING)
        await app_store.transition_run(run.id, RunStatus.COMPLETED)

    started = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(finish())
        response = await client.get(f"/runs/{run.id}", params={"wait": 20})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert response.headers["etag"] == '"3"'
    assert time.monotonic() - started < 15

    # With history, and at once for a run that already is terminal.
    again = await client.get(f"/runs/{run.id}", params={"wait": 20, "history": True})
    assert again.status_code == 200
    assert [t["to_status"] for t in again.json()["transitions"]] == [
        "pending",
        "running",
        "completed",
    ]


async def test_long_poll_answers_202_when_the_time_runs_out(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    run = await app_store.create_run(ETL_DAILY, {})
    started = time.monotonic()
    response = await client.get(f"/runs/{run.id}", params={"wait": 0.3})
    assert time.monotonic() - started >= 0.25
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    assert response.headers["etag"] == '"1"'
    assert "step_runs" not in response.json()

    zero = await client.get(f"/runs/{run.id}", params={"wait": 0})
    assert zero.status_code == 202

    body = error(
        await client.get(f"/runs/{uuid.uuid4()}", params={"wait": 1}), 404, "run_not_found"
    )
    assert body["run_id"]

    for wait in (MAX_WAIT_SECONDS + 1, -1, "soon"):
        body = error(
            await client.get(f"/runs/{run.id}", params={"wait": wait}), 422, "invalid_request"
        )
        assert body["problems"][0]["loc"] == ["query", "wait"]


# -- list and count -----------------------------------------------------------


async def test_pages_walk_every_run_once_newest_first(
    client: httpx.AsyncClient, app_store: RunStore
) -> None:
    for n in range(5):
        await create(client, f"acct-{n}")
    await app_store.create_run(ETL_DAILY, {})
    expected = [str(run.id) for run in await app_store.list_runs(workflow=INVOICE_REMINDER)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"workflow": "billing.invoice_reminder", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/runs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"runs", "next_cursor"}
        assert all("step_runs" not in run for run in body["runs"])
        seen += [run["id"] for run in body["runs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 3

    everything = (await client.get("/runs")).json()
    assert len(everything["runs"]) == 6 and everything["next_cursor"] is None


async def test_list_filters(client: httpx.AsyncClient, app_store: RunStore) -> None:
    pending = await create(client, "a")
    cancelled = await create(client, "b")
    await client.post(f"/runs/{cancelled['id']}/cancel")
    nightly = (await client.post(INVOICE, params={"trigger": "nightly"})).json()
    replay = (await client.post(f"/runs/{pending['id']}/replay")).json()

    async def ids(**params: Any) -> set[str]:
        response = await client.get("/runs", params=params)
        assert response.status_code == 200, response.text
        return {run["id"] for run in response.json()["runs"]}

    assert await ids(status="cancelled") == {cancelled["id"]}
    assert await ids(status=["cancelled", "pending"]) == {
        pending["id"],
        cancelled["id"],
        nightly["id"],
        replay["id"],
    }
    assert await ids(trigger="nightly") == {nightly["id"]}
    assert await ids(workflow="etl.daily") == set()
    assert await ids(replayed_from=pending["id"]) == {replay["id"]}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()  # "+00:00", encoded by httpx
    assert await ids(created_after=future) == set()
    assert len(await ids(created_after=past, created_before=future)) == 4
    assert await ids(created_before=past) == set()


async def test_list_errors(client: httpx.AsyncClient) -> None:
    body = error(await client.get("/runs", params={"cursor": "bogus"}), 422, "invalid_cursor")
    assert body["cursor"] == "bogus"
    body = error(await client.get("/runs", params={"status": "stuck"}), 422, "unknown_status")
    assert body["value"] == "stuck"
    body = error(
        await client.get("/runs", params={"created_after": "2025-01-01T00:00:00"}),
        422,
        "invalid_argument",
    )
    assert body["name"] == "created_after"
    for params, loc in (
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 1001}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
        ({"created_before": "yesterday"}, ["query", "created_before"]),
        ({"replayed_from": "not-a-uuid"}, ["query", "replayed_from"]),
    ):
        body = error(await client.get("/runs", params=params), 422, "invalid_request")
        assert [problem["loc"] for problem in body["problems"]] == [loc], body
        assert body["message"].startswith("invalid request: query.")
    two = error(
        await client.get("/runs", params={"limit": "x", "created_after": "y"}),
        422,
        "invalid_request",
    )
    assert len(two["problems"]) == 2


async def test_counts(client: httpx.AsyncClient, app_store: RunStore) -> None:
    await create(client, "a")
    cancelled = await create(client, "b")
    await client.post(f"/runs/{cancelled['id']}/cancel")
    await app_store.create_run(ETL_DAILY, {})

    response = await client.get("/runs/counts")
    assert response.status_code == 200, response.text
    counts = response.json()
    assert set(counts) == {status.value for status in RunStatus}
    assert counts["pending"] == 2 and counts["cancelled"] == 1 and counts["running"] == 0

    only = (await client.get("/runs/counts", params={"workflow": "etl.daily"})).json()
    assert only["pending"] == 1 and only["cancelled"] == 0
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = (await client.get("/runs/counts", params={"created_after": future})).json()
    assert sum(later.values()) == 0

    error(
        await client.get("/runs/counts", params={"created_after": "2025-01-01"}),
        422,
        "invalid_argument",
    )
    error(
        await client.get("/runs/counts", params={"created_after": "never"}), 422, "invalid_request"
    )


# -- cancel and replay ------------------------------------------------------------


async def test_cancel(client: httpx.AsyncClient, app_store: RunStore) -> None:
    run = await create(client)
    response = await client.post(f"/runs/{run['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["current_step"] is None
    assert response.headers["etag"] == '"2"'
    assert "step_runs" not in response.json()

    body = error(await client.post(f"/runs/{run['id']}/cancel"), 409, "invalid_transition")
    assert body["from_status"] == "cancelled" and body["to_status"] == "cancelling"

    running = await app_store.create_run(ETL_DAILY, {})
    await app_store.transition_run(running.id, RunStatus.RUNNING)
    cancelling = await client.post(f"/runs/{running.id}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"

    missing = str(uuid.uuid4())
    body = error(await client.post(f"/runs/{missing}/cancel"), 404, "run_not_found")
    assert body["run_id"] == missing


async def test_cancel_checks_if_match(client: httpx.AsyncClient, app_store: RunStore) -> None:
    run = await create(client)
    await app_store.update_run(run["id"], context={"seen": True})  # now at version 2

    body = error(
        await client.post(f"/runs/{run['id']}/cancel", headers={"If-Match": '"1"'}),
        412,
        "version_conflict",
    )
    assert (body["run_id"], body["expected"], body["actual"]) == (run["id"], 1, 2)
    assert (await app_store.get_run(run["id"])).status == RunStatus.PENDING

    for malformed in ("2", 'W/"2"', '"2", "3"', '"two"', '"0"', '"02"', ""):
        body = error(
            await client.post(f"/runs/{run['id']}/cancel", headers={"If-Match": malformed}),
            400,
            "invalid_if_match",
        )
        assert body["if_match"] == malformed
    assert (await app_store.get_run(run["id"])).status == RunStatus.PENDING

    etag = (await client.get(f"/runs/{run['id']}")).headers["etag"]
    ok = await client.post(f"/runs/{run['id']}/cancel", headers={"If-Match": etag})
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "cancelled" and ok.headers["etag"] == '"3"'

    other = await create(client, "b")
    star = await client.post(f"/runs/{other['id']}/cancel", headers={"If-Match": "*"})
    assert star.status_code == 200, star.text
    error(
        await client.post(f"/runs/{uuid.uuid4()}/cancel", headers={"If-Match": "*"}),
        404,
        "run_not_found",
    )
    # The version is checked before legality: a stale caller learns that first.
    error(
        await client.post(f"/runs/{run['id']}/cancel", headers={"If-Match": '"1"'}),
        412,
        "version_conflict",
    )


async def test_replay(client: httpx.AsyncClient, app_store: RunStore) -> None:
    source = await create(client)
    response = await client.post(f"/runs/{source['id']}/replay")
    assert response.status_code == 201, response.text
    replay = response.json()
    assert replay["replayed_from_run_id"] == source["id"]
    assert replay["id"] != source["id"] and replay["payload"] == source["payload"]
    assert replay["status"] == "pending"
    assert response.headers["location"] == f"/api/runs/{replay['id']}"
    assert response.headers["etag"] == '"1"'

    missing = str(uuid.uuid4())
    body = error(await client.post(f"/runs/{missing}/replay"), 404, "run_not_found")
    assert body["run_id"] == missing


async def test_replay_checks_if_match(client: httpx.AsyncClient, app_store: RunStore) -> None:
    source = await create(client)
    await client.post(f"/runs/{source['id']}/cancel")  # version 2

    body = error(
        await client.post(f"/runs/{source['id']}/replay", headers={"If-Match": '"1"'}),
        412,
        "version_conflict",
    )
    assert (body["expected"], body["actual"]) == (1, 2)
    error(
        await client.post(f"/runs/{source['id']}/replay", headers={"If-Match": "1"}),
        400,
        "invalid_if_match",
    )
    assert await app_store.list_runs(replayed_from=source["id"]) == []

    ok = await client.post(f"/runs/{source['id']}/replay", headers={"If-Match": '"2"'})
    assert ok.status_code == 201, ok.text
    star = await client.post(f"/runs/{source['id']}/replay", headers={"If-Match": "*"})
    assert star.status_code == 201, star.text
    assert len(await app_store.list_runs(replayed_from=source["id"])) == 2
    error(
        await client.post(f"/runs/{uuid.uuid4()}/replay", headers={"If-Match": '"1"'}),
        404,
        "run_not_found",
    )


# -- guarding, lifespan, OpenAPI --------------------------------------------------------


async def test_every_route_refuses_an_unauthorised_request(
    app: FastAPI, app_store: RunStore
) -> None:
    run = await app_store.create_run(INVOICE_REMINDER, {"account_id": "a"})
    calls = [
        ("GET", "/api/runs"),
        ("GET", "/api/runs/counts"),
        ("GET", f"/api/runs/{run.id}"),
        ("GET", f"/api/runs/{run.id}?wait=5"),
        ("POST", f"/api{INVOICE}"),
        ("POST", f"/api/runs/{run.id}/cancel"),
        ("POST", f"/api/runs/{run.id}/replay"),
    ]
    covered = {
        (method, path.split("?")[0].replace(str(run.id), "{run_id}")) for method, path in calls
    }
    assert covered == {
        (method, path.replace("{workflow}", "billing.invoice_reminder")) for method, path in ROUTES
    }
    transport = httpx.ASGITransport(app=app)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as anonymous:
            for method, path in calls:
                kwargs: dict[str, Any] = {"json": {"account_id": "b"}} if method == "POST" else {}
                response = await anonymous.request(method, path, **kwargs)
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
    assert await app_store.list_runs() == [run]  # nothing created, cancelled or replayed


async def test_nothing_is_served_unless_the_router_is_mounted(dsn: str) -> None:
    app = FastAPI()
    async with lifespan(dsn, workflows=WORKFLOWS)(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/runs")).status_code == 404
            assert (await client.post("/workflows/etl.daily/runs", json={})).status_code == 404
            assert "/runs" not in (await client.get("/openapi.json")).json()["paths"]


async def test_lifespan_as_the_apps_lifespan(dsn: str) -> None:
    app = FastAPI(lifespan=lifespan(dsn, workflows=WORKFLOWS, max_size=4))
    app.include_router(runs_router())
    async with app.router.lifespan_context(app):
        store = app.state.squidmesh
        assert isinstance(store, RunStore)
        assert set(store.workflows) == {"billing.invoice_reminder", "etl.daily"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(ETL, json={})
            assert response.status_code == 201, response.text
            assert response.headers["location"] == f"/runs/{response.json()['id']}"
    assert not hasattr(app.state, "squidmesh")


async def test_get_store_says_what_is_missing_without_the_lifespan() -> None:
    app = make_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AUTH) as c:
        with pytest.raises(RuntimeError, match=r"app\.state\.squidmesh.*lifespan"):
            await c.get("/api/runs")

    class Bare:
        app = FastAPI()

    with pytest.raises(RuntimeError, match="lifespan"):
        get_store(Bare())  # type: ignore[arg-type]


async def test_openapi_lists_every_route_and_the_payload_fields(client: httpx.AsyncClient) -> None:
    response = await client.get("http://test/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    listed = {
        (method.upper(), path) for path, operations in doc["paths"].items() for method in operations
    }
    assert listed == ROUTES

    for method, path in ROUTES:
        operation = doc["paths"][path][method.lower()]
        success = next(code for code in ("200", "201") if code in operation["responses"])
        schema = operation["responses"][success]["content"]["application/json"]["schema"]
        assert schema.get("type") == "object", (method, path, schema)
        assert "422" in operation["responses"]

    runs = doc["paths"]["/api/runs"]["get"]["responses"]["200"]["content"]["application/json"]
    run_schema = runs["schema"]["properties"]["runs"]["items"]
    assert {"id", "status", "version", "payload"} <= set(run_schema["properties"])
    assert "step_runs" not in run_schema["properties"]
    read = doc["paths"]["/api/runs/{run_id}"]["get"]["responses"]
    assert {"200", "202", "404"} <= set(read)
    assert "step_runs" in read["200"]["content"]["application/json"]["schema"]["properties"]
    assert "ETag" in read["200"]["headers"]
    counts = doc["paths"]["/api/runs/counts"]["get"]["responses"]["200"]
    assert set(counts["content"]["application/json"]["schema"]["required"]) == {
        status.value for status in RunStatus
    }

    create_op = doc["paths"]["/api/workflows/{workflow}/runs"]["post"]
    assert {"201", "200", "404", "409", "422"} <= set(create_op["responses"])
    assert "Location" in create_op["responses"]["201"]["headers"]
    body = create_op["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    by_trigger = {(s["x-squidmesh-workflow"], s["x-squidmesh-trigger"]): s for s in body}
    assert set(by_trigger) == {
        ("billing.invoice_reminder", "invoice_delivery"),
        ("billing.invoice_reminder", "nightly"),
        ("etl.daily", "manual"),
    }
    delivery = by_trigger["billing.invoice_reminder", "invoice_delivery"]
    assert set(delivery["properties"]) == {"account_id", "note", "posted_on"}
    assert delivery["required"] == ["account_id"]
    assert delivery["properties"]["account_id"] == {"type": "string"}
    assert by_trigger["etl.daily", "manual"]["properties"] == {}
    assert "`account_id` (string, required)" in create_op["description"]
    payload_errors = create_op["responses"]["422"]["content"]["application/json"]["schema"]
    assert "invalid_payload" in payload_errors["properties"]["error"]["enum"]


async def test_openapi_without_a_database(dsn: str) -> None:
    explicit = FastAPI()
    explicit.include_router(runs_router(workflows=[ETL_DAILY]))
    doc = explicit.openapi()
    body = doc["paths"]["/workflows/{workflow}/runs"]["post"]["requestBody"]
    assert [s["title"] for s in body["content"]["application/json"]["schema"]["anyOf"]] == [
        "etl.daily: manual"
    ]

    # Without workflows=, the lifespan documents the store's, also when the
    # document was built (and cached) before the app started.
    implicit = make_app()
    before = implicit.openapi()["paths"]["/api/workflows/{workflow}/runs"]["post"]
    assert "anyOf" not in before["requestBody"]["content"]["application/json"]["schema"]
    async with lifespan(dsn, workflows=[INVOICE_REMINDER])(implicit):
        after = implicit.openapi()["paths"]["/api/workflows/{workflow}/runs"]["post"]
        schemas = after["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
        assert [s["title"] for s in schemas] == [
            "billing.invoice_reminder: invoice_delivery",
            "billing.invoice_reminder: nightly",
        ]


# -- over real HTTP ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_example_app_over_real_http(dsn: str, tmp_path: Path) -> None:
    """`uvicorn examples.fastapi_app:app`, as the README runs it, on 127.0.0.1."""
    port = free_port()
    env = dict(os.environ, SQUIDMESH_DSN=dsn, SQUIDMESH_API_TOKEN=TOKEN)
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
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
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

            refused = await http.get("/api/runs")
            assert refused.status_code == 401
            created = await http.post(
                "/api/workflows/billing.invoice_reminder/runs",
                content=b'{"account_id": "acct-1"}',
                headers={**AUTH, "Content-Type": "application/json"},
            )
            assert created.status_code == 201, created.text
            location = created.headers["location"]
            assert location == f"/api/runs/{created.json()['id']}"
            read = await http.get(location, headers=AUTH, params={"wait": 0.2})
            assert read.status_code == 202 and read.headers["etag"] == '"1"'
            cancelled = await http.post(
                f"{location}/cancel", headers={**AUTH, "If-Match": read.headers["etag"]}
            )
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            finished = await http.get(location, headers=AUTH, params={"wait": 5})
            assert finished.status_code == 200
            listed = await http.get("/api/runs", headers=AUTH, params={"status": "cancelled"})
            assert [run["id"] for run in listed.json()["runs"]] == [created.json()["id"]]
            doc = (await http.get("/openapi.json")).json()
            assert "/api/workflows/{workflow}/runs" in doc["paths"]
        await _readme_curl_calls_answer_as_commented(base, env)
    finally:
        if server.returncode is None:
            server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 20)
        except TimeoutError:
            server.kill()
            await server.wait()


def _readme_curl_calls() -> list[tuple[str, str | None]]:
    """The README's curl block: each command, and the status its comment promises."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Serving runs over HTTP (FastAPI)", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the README's FastAPI section has no sh block"
    calls: list[tuple[str, str | None]] = []
    for line in match.group(1).replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("pip ", "export ", "uvicorn ")):
            continue  # the set-up: the test starts the server itself
        command, _, comment = line.partition("  # ")
        status = re.match(r"\s*(\d{3})\b", comment)
        calls.append((command.strip(), status.group(1) if status else None))
    return calls


async def _readme_curl_calls_answer_as_commented(base: str, env: dict[str, str]) -> None:
    """Run the README's curl calls, as written, against the example app."""
    calls = _readme_curl_calls()
    assert sum(1 for _, status in calls if status) >= 8
    script = []
    for i, (command, _) in enumerate(calls):
        if command.startswith("API="):
            command = f"API={base}/api"
        script.append(f"echo; echo '@@{i}'; {command}")
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outputs = re.split(r"^@@(\d+)$", result.stdout, flags=re.MULTILINE)[1:]
    answered = dict(zip(map(int, outputs[0::2]), outputs[1::2], strict=True))
    for i, (command, status) in enumerate(calls):
        if status is not None:
            first = answered[i].lstrip().split("\n", 1)[0]
            assert first.split()[1:2] == [status], f"{command!r} answered {first!r}"
