"""The run API over HTTP: a FastAPI app on squidmesh, guarded by a bearer token.

    pip install 'squidmesh[fastapi]' uvicorn
    export SQUIDMESH_DSN=postgresql://localhost/app   # the schema is migrated at startup
    export SQUIDMESH_API_TOKEN=change-me              # the token clients must send
    uvicorn examples.fastapi_app:app

Then (the API is under /api; the OpenAPI page at http://127.0.0.1:8000/docs):

    curl -i -X POST http://127.0.0.1:8000/api/workflows/billing.invoice_reminder/runs \\
         -H "Authorization: Bearer $SQUIDMESH_API_TOKEN" \\
         -H 'Content-Type: application/json' -d '{"account_id": "acct-1"}'

The dashboard is at http://127.0.0.1:8000/dashboard/ (runs, a run's timeline,
the workflows; live; with cancel and replay buttons). A browser sends no
bearer token, so the dashboard asks for HTTP Basic instead: any user name,
and SQUIDMESH_API_TOKEN as the password (the browser prompts once and then
sends it with every request, the event stream included). Serve it over
HTTPS anywhere but on your own machine: Basic sends the password with each
request.

What the app writes itself is only its workflows and its auth: the routes,
the store's lifecycle, the JSON encoding, the pages and the error answers
come from ``squidmesh.fastapi``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)

import squidmesh
from squidmesh import Field, Step, Transition, Trigger, Workflow
from squidmesh.fastapi import dashboard_router, lifespan, runs_router

invoice_reminder = Workflow(
    "billing.invoice_reminder",
    triggers=[
        Trigger(
            "invoice_delivery",
            payload=[
                Field("account_id", str),
                Field("note", str, required=False),
                Field("posted_on", str, default=squidmesh.TODAY_ISO8601),
            ],
        ),
        Trigger("nightly", cron="0 9 * * 1-5", timezone="Etc/UTC"),
    ],
    steps=[
        Step("load_invoice"),
        Step("approve", kind="approval"),
        Step("send_email"),
        Step("record_rejection"),
    ],
    transitions=[
        Transition("load_invoice", on="ok", to="approve"),
        Transition("approve", on="ok", to="send_email"),
        Transition("approve", on="error", to="record_rejection"),
        Transition("send_email", on="ok", to="complete"),
        Transition("record_rejection", on="ok", to="complete"),
    ],
)

WORKFLOWS = [invoice_reminder]


def _setting(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"set {name} to run examples/fastapi_app.py (see its docstring)")
    return value


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's own lifespan, with squidmesh's entered inside it."""
    app.state.api_token = _setting("SQUIDMESH_API_TOKEN")
    async with lifespan(_setting("SQUIDMESH_DSN"), workflows=WORKFLOWS, migrate=True)(app):
        yield


bearer = HTTPBearer(auto_error=False, description="SQUIDMESH_API_TOKEN")


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """The example's authorisation: the bearer token must be SQUIDMESH_API_TOKEN."""
    expected: str = request.app.state.api_token
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


basic = HTTPBasic(auto_error=False, realm="squidmesh dashboard")


async def require_person(
    request: Request,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)],
) -> None:
    """The dashboard's authorisation: HTTP Basic, SQUIDMESH_API_TOKEN as the password."""
    expected: str = request.app.state.api_token
    if credentials is None or not secrets.compare_digest(
        credentials.password.encode(), expected.encode()
    ):
        raise HTTPException(
            status_code=401,
            detail="log in with any user name and SQUIDMESH_API_TOKEN as the password",
            headers={"WWW-Authenticate": 'Basic realm="squidmesh dashboard"'},
        )


app = FastAPI(title="squidmesh runs", lifespan=app_lifespan)
app.include_router(
    runs_router(dependencies=[Depends(require_token)], prefix="/api", workflows=WORKFLOWS)
)
app.include_router(
    dashboard_router(dependencies=[Depends(require_person)], prefix="/dashboard", actions=True)
)
