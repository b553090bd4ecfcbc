"""The dashboard in a real browser: Debian's Chromium, driven by Playwright.

Each test serves the app with uvicorn on 127.0.0.1 (a free port) against a
real PostgreSQL with real runs, and looks at what a person sees. The browser
is Debian's ``chromium`` (``make test`` installs it with apt-get when root or
sudo allows; ``SQUIDMESH_CHROMIUM`` names another binary); Playwright only
drives it (``executable_path``), it never downloads a browser of its own.
Without Chromium or Playwright the tests skip, saying which is missing.

Waiting is done by polling the page with a deadline (Playwright's
``wait_for_*``), never by sleeping and hoping.

``test_screenshots`` writes runs.png, run.png and workflows.png: to
docs/screenshots/ when a file is missing there or ``SQUIDMESH_SCREENSHOTS=update``
is set (the README shows them), to a temporary directory otherwise, so that
a test run leaves the checkout as it was.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from squidmesh import Run, RunStatus, RunStore
from tests.integration.test_dashboard import (
    INVOICE,
    PASSWORD,
    USER,
    XSS,
    opened,
    served,
    some_runs,
    story,
)

try:
    from playwright.async_api import Browser, Page, async_playwright
    from playwright.async_api import Error as PlaywrightError
except ImportError:  # the tests skip, saying why (see _missing)
    pass

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SQUIDMESH_CHROMIUM", "/usr/bin/chromium")
LIVE_MS = 2000  # "see the page update live within two seconds"


def _missing() -> str | None:
    if "async_playwright" not in globals():
        return "Playwright is not installed: pip install -e '.[test]' (make test does)"
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"no Chromium at {CHROMIUM}: make test installs Debian's chromium with apt-get "
            "when it runs as root or with passwordless sudo; otherwise run "
            "apt-get install chromium as root (or set SQUIDMESH_CHROMIUM to a Chromium binary)"
        )
    return None


_MISSING = _missing()
pytestmark = [
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
    # One browser for the module, so every test runs in the module's event loop.
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            await browser.close()


class Site:
    """The app under uvicorn, its store, and a browser tab logged in to it."""

    def __init__(self, base: str, store: RunStore, page: Page) -> None:
        self.base = base
        self.store = store
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def url(self, path: str = "/") -> str:
        return f"{self.base}/dashboard{path}"

    async def goto(self, path: str = "/") -> None:
        response = await self.page.goto(self.url(path))
        assert response is not None and response.status == 200, path

    async def text(self, selector: str) -> str:
        return (await self.page.locator(selector).inner_text()).strip()

    async def until(self, expression: str, arg: object = None, *, timeout_ms: int = 10_000) -> None:
        """Poll ``expression`` (a JS function of ``arg``) until it is true, or fail.

        Not ``page.wait_for_function``: that evaluates its predicate with
        ``eval``, which the dashboard's Content-Security-Policy forbids.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        while not await self.page.evaluate(expression, arg):
            assert time.monotonic() < deadline, f"not within {timeout_ms} ms: {expression}"
            await asyncio.sleep(0.02)

    async def live(self) -> None:
        """Wait until the page's event stream is open."""
        await self.until("() => document.getElementById('live').textContent === 'live'")


@pytest.fixture
def actions() -> bool:
    """Whether the dashboard has its actions; a test parametrizes it to change it."""
    return True


@pytest_asyncio.fixture(loop_scope="module")
async def site(dsn: str, browser: Browser, actions: bool) -> AsyncIterator[Site]:
    async with opened(dsn, actions=actions) as (app, store), served(app) as base:
        context = await browser.new_context(
            http_credentials={"username": USER, "password": PASSWORD},
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = await context.new_page()
            page.set_default_timeout(10_000)
            site = Site(base, store, page)
            yield site
            assert site.errors == [], site.errors
        finally:
            await context.close()


# -- what a person sees -------------------------------------------------------------


async def test_runs_page(site: Site) -> None:
    failed = await story(site.store)
    invoices = await some_runs(site.store, 3)
    etl = await some_runs(site.store, 2, workflow="etl.daily")
    await site.store.transition_run(etl[0].id, "running")
    await site.goto()
    rows = site.page.locator("tbody tr[data-run-id]")
    assert await rows.count() == 6
    assert await rows.first.get_attribute("data-run-id") == str(etl[-1].id)
    assert await site.text("[data-total]") == "6"
    shown = {status.value: await site.text(f"[data-count={status.value}]") for status in RunStatus}
    assert shown == {
        "pending": "4",
        "running": "1",
        "retrying": "0",
        "paused": "0",
        "failed": "1",
        "completed": "0",
        "cancelling": "0",
        "cancelled": "0",
    }
    # the bar: one segment per status with runs, widths in proportion
    segments = site.page.locator("svg.counts-bar rect.seg:not(.empty)")
    assert await segments.count() == 3
    widths = [await segments.nth(i).get_attribute("width") for i in range(3)]
    assert widths == ["66.667%", "16.667%", "16.667%"]
    row = site.page.locator(f'tr[data-run-id="{failed.id}"]')
    assert "failed" in await row.inner_text()
    assert "SMTP 550 mailbox unavailable" in await row.inner_text()

    # Filtering goes through the form and stays in the URL.
    await site.page.select_option("select[name=workflow]", "etl.daily")
    await site.page.check("input[name=status][value=running]")
    await site.page.click("button[type=submit]")
    await site.page.wait_for_url("**status=running**")
    assert "workflow=etl.daily" in site.page.url
    assert await rows.count() == 1
    assert await rows.first.get_attribute("data-run-id") == str(etl[0].id)
    assert await site.text("[data-total]") == "2"  # counts: the workflow, every status

    # Keyset pages, following the links.
    await site.goto(f"/?workflow={INVOICE}&limit=2")
    seen = []
    while True:
        seen += [await rows.nth(i).get_attribute("data-run-id") for i in range(await rows.count())]
        older = site.page.locator("a[rel=next]")
        if not await older.count():
            break
        await older.click()
        await site.page.wait_for_url("**cursor=**")
    assert seen == [str(r.id) for r in reversed([failed, *invoices])]


async def test_run_page(site: Site) -> None:
    run = await story(site.store)
    replay = await site.store.replay_run(run.id)
    await site.goto(f"/runs/{run.id}")
    # The payload's script is shown as text, and never ran.
    payload = await site.text("pre[data-json=payload]")
    assert f'"account_id": "{XSS}"' in payload
    assert await site.page.evaluate("typeof window.__pwned") == "undefined"
    assert '"code": 550' in await site.text("pre[data-json=last_error]")
    assert '"invoice": 42' in await site.text("pre[data-json=context]")
    assert await site.text("dd[data-field=status]") == "failed"
    # The timeline: a lane per step, the failed attempts in red.
    lanes = site.page.locator(".lane[data-lane=step] .lane-label b")
    assert await lanes.all_inner_texts() == ["load_invoice", "approve", "send_email"]
    assert await site.page.locator("rect.attempt-failed").count() == 2
    assert await site.page.locator("text.attempt-failed-mark").count() == 2
    history = await site.store.get_run(run.id, include_history=True)
    attempts = [a.status for s in history.step_runs or () for a in s.attempts]
    assert await site.page.locator("rect.attempt").count() == len(attempts) == 4
    assert await site.page.locator("rect.attempt-completed").count() == attempts.count("completed")
    assert await site.text("[data-failed-attempts]") == "2 failed attempts"
    red = await site.page.locator("rect.attempt-failed").first.evaluate(
        "el => getComputedStyle(el).fill"
    )
    assert red == "rgb(217, 59, 59)"
    entries = await site.page.locator("ol.entries li .what").all_inner_texts()
    assert entries[0] == "created (pending)" and entries[-1] == "running → failed"
    assert "load_invoice attempt 1 failed: billing API timed out" in entries
    assert "approve: approved by alice — “looks right”" in entries
    # Drawn to scale: each status change sits where its instant falls between
    # the first and the last thing the run recorded.
    instants = [t.at for t in history.transitions or ()]
    for step_run in history.step_runs or ():
        instants += [step_run.inserted_at, step_run.updated_at]
        instants += [i for a in step_run.attempts for i in (a.inserted_at, a.updated_at)]
    instants += [e.at for e in history.audit_events or ()]
    start, span = min(instants), (max(instants) - min(instants)).total_seconds()
    marks = site.page.locator("rect.transition")
    assert await marks.count() == len(history.transitions or ()) == 5
    for i, change in enumerate(history.transitions or ()):
        drawn = float((await marks.nth(i).get_attribute("x") or "").rstrip("%"))
        assert abs(drawn - 100 * (change.at - start).total_seconds() / span) < 0.01
    # The decision, and the lineage.
    audit = site.page.locator("tr[data-audit=approved]")
    assert "alice" in await audit.inner_text() and "looks right" in await audit.inner_text()
    await site.page.click(f'[data-lineage=replays] a[href$="{replay.id}"]')
    await site.page.wait_for_url(f"**/runs/{replay.id}")
    assert str(run.id) in await site.text("[data-lineage=source]")


async def test_workflows_page(site: Site) -> None:
    await site.goto("/workflows")
    names = await site.page.locator("section.workflow h2 code").all_inner_texts()
    assert names == ["billing.invoice_reminder", "etl.daily"]
    invoice = site.page.locator('section[data-workflow="billing.invoice_reminder"]')
    nightly = await invoice.locator("tr[data-trigger=nightly]").inner_text()
    assert "0 9 * * 1-5" in nightly and "At 09:00 on Monday through Friday" in nightly
    delivery = await invoice.locator("tr[data-trigger=invoice_delivery]").inner_text()
    assert "account_id" in delivery and "default: today (UTC)" in delivery
    steps = await invoice.locator("ol.steps > li > code").all_inner_texts()
    assert steps == ["load_invoice", "approve", "send_email", "record_rejection"]
    assert "approval" in await invoice.locator("li[data-step=approve]").inner_text()
    etl = site.page.locator('section[data-workflow="etl.daily"]')
    assert "after transform" in await etl.locator("li[data-step=load]").inner_text()
    await site.page.click('section[data-workflow="etl.daily"] a.more')
    await site.page.wait_for_url("**workflow=etl.daily")


# -- live -------------------------------------------------------------------------------


async def test_runs_page_updates_live(site: Site) -> None:
    existing = (await some_runs(site.store, 2))[0]
    await site.goto()
    await site.live()
    await site.page.evaluate("window.__sameDocument = true")

    created = (await some_runs(site.store, 1))[0]
    started = time.monotonic()
    await site.page.wait_for_selector(f'tr[data-run-id="{created.id}"]', timeout=LIVE_MS)
    appeared = time.monotonic() - started
    await site.store.transition_run(existing.id, "running")
    await site.until(
        """id => document.querySelector(`tr[data-run-id="${id}"] .status`)
                   ?.textContent === 'running'""",
        str(existing.id),
        timeout_ms=LIVE_MS,
    )
    await site.until(
        "() => document.querySelector('[data-count=running]').textContent === '1'",
        timeout_ms=LIVE_MS,
    )
    assert await site.text("[data-total]") == "3"
    assert await site.page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    first = await site.page.locator("tbody tr[data-run-id]").first.get_attribute("data-run-id")
    assert first == str(created.id)
    assert appeared < LIVE_MS / 1000


async def test_run_page_updates_live(site: Site) -> None:
    run = (await some_runs(site.store, 1))[0]
    await site.goto(f"/runs/{run.id}")
    await site.live()
    await site.page.evaluate("window.__sameDocument = true")
    await site.store.transition_run(run.id, "running")
    await site.store.transition_run(run.id, "completed")
    await site.until(
        "() => document.querySelector('dd[data-field=status]').textContent.trim() === 'completed'",
        timeout_ms=LIVE_MS,
    )
    assert await site.page.locator("rect.transition").count() == 3
    assert await site.page.evaluate("window.__sameDocument") is True


# -- actions ------------------------------------------------------------------------------


async def test_cancel_and_replay_from_the_run_page(site: Site) -> None:
    run = (await some_runs(site.store, 1))[0]
    await site.goto(f"/runs/{run.id}")
    async with site.page.expect_navigation():
        await site.page.click("button:has-text('Cancel run')")
    assert await site.text("p.notice") == "The run is cancelled."
    assert await site.text("dd[data-field=status]") == "cancelled"
    assert await site.page.locator("button:has-text('Cancel run')").count() == 0
    assert (await site.store.get_run(run.id)).status == RunStatus.CANCELLED

    async with site.page.expect_navigation():
        await site.page.click("button:has-text('Replay')")
    assert await site.text("p.notice") == "This run is a replay, created just now."
    assert str(run.id) in await site.text("[data-lineage=source]")
    replays = (await site.store.page_runs(replayed_from=run.id)).runs
    assert [str(r.id) for r in replays] == [site.page.url.split("/")[-1].split("?")[0]]


async def test_a_stale_cancel_answers_the_api_error_without_javascript(
    site: Site, browser: Browser
) -> None:
    """The pages read (and act) without JavaScript; a page that did not update
    live offers a cancel of the version it showed: the API's 412 when the run
    changed since."""
    run = (await some_runs(site.store, 1))[0]
    context = await browser.new_context(
        java_script_enabled=False, http_credentials={"username": USER, "password": PASSWORD}
    )
    try:
        page = await context.new_page()
        await page.goto(site.url(f"/runs/{run.id}"))
        assert await page.locator("#live").is_hidden()
        assert "pending" in await page.locator("dd[data-field=status]").inner_text()
        assert await page.locator("ol.entries li").count() == 1
        await site.store.cancel_run(run.id)
        async with page.expect_response(f"**/runs/{run.id}/cancel") as answer:
            await page.click("button:has-text('Cancel run')")
        assert (await answer.value).status == 412
        assert (await page.locator("h1").inner_text()).split() == ["412", "version_conflict"]
        assert "expected" in await page.locator("dl.fields").inner_text()
        assert (await site.store.get_run(run.id)).version == 2
    finally:
        await context.close()


async def test_a_cross_site_form_cannot_cancel(site: Site) -> None:
    run = (await some_runs(site.store, 1))[0]
    await site.goto(f"/runs/{run.id}")  # the browser holds the cookie now
    token = await site.page.locator("input[name=csrf_token]").first.get_attribute("value")
    # Another site's page posting the very form, token included.
    await site.page.goto("about:blank")
    await site.page.set_content(
        f'<form method="post" action="{site.url(f"/runs/{run.id}/cancel")}">'
        f'<input name="csrf_token" value="{token}"><button>go</button></form>'
    )
    async with site.page.expect_response(f"**/runs/{run.id}/cancel") as answer:
        await site.page.click("button")
    assert (await answer.value).status == 403
    assert "cross_site_request" in await site.text("h1")
    assert (await site.store.get_run(run.id)).status == RunStatus.PENDING
    site.errors.remove(
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    )


@pytest.mark.parametrize("actions", [False])
async def test_without_actions_nothing_can_be_done(site: Site) -> None:
    run = (await some_runs(site.store, 1))[0]
    await site.goto(f"/runs/{run.id}")
    assert await site.page.locator("form[method=post], button").count() == 0
    status = await site.page.evaluate(
        """url => fetch(url, {method: 'POST', headers:
               {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf_token=x'})
             .then(r => r.status)""",
        site.url(f"/runs/{run.id}/cancel"),
    )
    assert status in (404, 405)
    site.errors[:] = [e for e in site.errors if "status of 40" not in e]
    assert (await site.store.get_run(run.id)).status == RunStatus.PENDING


async def test_the_dependencies_guard_pages_and_the_stream(site: Site, browser: Browser) -> None:
    context = await browser.new_context()  # no credentials
    try:
        # A navigation to a Basic challenge without credentials is a network
        # error in headless Chromium (there is no prompt): ask as a client.
        page = await context.new_page()
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            await page.goto(site.url("/"))
        for path in ("/", "/workflows", "/events", "/static/dashboard.js"):
            response = await context.request.get(site.url(path))
            assert response.status == 401, path
            assert response.headers["www-authenticate"] == 'Basic realm="ops"'
    finally:
        await context.close()


# -- screenshots ---------------------------------------------------------------------------


async def _backdate(store: RunStore, run: Run, timings: dict[str, Any]) -> None:
    """Spread a story run's recorded instants over minutes, as a real one takes."""
    base = datetime.now(UTC) - timedelta(seconds=timings["end"] + 40)

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE squidmesh.runs SET inserted_at = $2, updated_at = $3 WHERE id = $1",
            run.id,
            at(0),
            at(timings["end"]),
        )
        versions = await conn.fetch(
            "SELECT run_version FROM squidmesh.run_transitions WHERE run_id = $1"
            " ORDER BY run_version",
            run.id,
        )
        for row, seconds in zip(versions, timings["transitions"], strict=True):
            await conn.execute(
                "UPDATE squidmesh.run_transitions SET at = $3"
                " WHERE run_id = $1 AND run_version = $2",
                run.id,
                row["run_version"],
                at(seconds),
            )
        for step, (begin, end, attempts) in timings["steps"].items():
            step_id = await conn.fetchval(
                "UPDATE squidmesh.step_runs SET inserted_at = $3, updated_at = $4"
                " WHERE run_id = $1 AND step = $2 RETURNING id",
                run.id,
                step,
                at(begin),
                at(end),
            )
            for number, (a_begin, a_end) in enumerate(attempts, start=1):
                await conn.execute(
                    "UPDATE squidmesh.step_attempts SET inserted_at = $3, updated_at = $4"
                    " WHERE step_run_id = $1 AND attempt_number = $2",
                    step_id,
                    number,
                    at(a_begin),
                    at(a_end),
                )
        await conn.execute(
            "UPDATE squidmesh.step_runs SET manual = jsonb_set(manual, '{at}', to_jsonb($2::text))"
            " WHERE run_id = $1 AND manual ? 'at'",
            run.id,
            at(timings["approved"]).isoformat(),
        )


async def _screenshot_data(store: RunStore) -> Run:
    run = await story(store, payload={"account_id": "acct-7781", "note": "net 30, <b>not</b> bold"})
    await _backdate(
        store,
        run,
        {
            "end": 372,
            "transitions": [0, 2, 40, 340, 372],
            "steps": {
                "load_invoice": (3, 31, [(3, 18), (21, 30)]),
                "approve": (32, 338, [(32, 338)]),
                "send_email": (341, 371, [(341, 371)]),
            },
            "approved": 336,
        },
    )
    others = await some_runs(store, 9)
    etl = await some_runs(store, 5, workflow="etl.daily")
    moves = {
        0: ["running"],
        1: ["running", "completed"],
        2: ["running", "completed"],
        3: ["running", "retrying"],
        4: ["running", "paused"],
        5: ["running", "completed"],
        6: ["cancelled"],
        9: ["running", "completed"],
        10: ["running", "failed"],
        11: ["running", "completed"],
        12: ["running"],
    }
    everything = others + etl
    for index, statuses in moves.items():
        for status in statuses:
            await store.transition_run(everything[index].id, status)
    async with store.pool.acquire() as conn:
        for minutes, other in enumerate(reversed(everything), start=1):
            await conn.execute(
                "UPDATE squidmesh.runs SET inserted_at = now() - $2 * interval '97 seconds'"
                " WHERE id = $1",
                other.id,
                minutes,
            )
    await store.replay_run(run.id)
    return run


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


async def test_screenshots(site: Site, tmp_path: Path) -> None:
    folder = REPO / "docs" / "screenshots"
    names = ("runs.png", "run.png", "workflows.png")
    update = os.environ.get("SQUIDMESH_SCREENSHOTS") == "update" or not all(
        (folder / name).exists() for name in names
    )
    target = folder if update else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    run = await _screenshot_data(site.store)
    for name, path in zip(names, ("/", f"/runs/{run.id}", "/workflows"), strict=True):
        await site.goto(path)
        if name != "workflows.png":
            await site.live()
        await site.page.screenshot(path=str(target / name), full_page=name == "run.png")
        width, height = _png_size(target / name)
        assert width == 1280 and height >= 600
        assert (target / name).stat().st_size < 600_000, f"{name} is large"
