// squidmesh dashboard: live updates over server-sent events.
//
// The pages are complete without this script. With it, a page whose <main>
// names an event stream (data-events) listens to the change feed there:
// each change updates the status of the run's row at once, then the page's
// live regions ([data-region]) are fetched again and swapped in place, no
// more often than the server can comfortably answer. Nothing is reloaded,
// and nothing but the dashboard's own server-rendered (escaped) HTML is
// ever inserted.
(() => {
  "use strict";

  const main = document.querySelector("main[data-events]");
  const live = document.getElementById("live");
  if (!main || !("EventSource" in window) || !("fetch" in window)) return;

  // At most one refresh a second, and never more than a fifth of the time
  // spent waiting on the server (a count over a million runs takes ~0.1 s).
  const MIN_INTERVAL_MS = 1000;
  const COST_FACTOR = 5;
  let lastCost = 0;
  let lastRefresh = 0;
  let timer = null;
  let inFlight = false;
  let again = false;

  function setLive(on, text) {
    if (!live) return;
    live.hidden = false;
    live.classList.toggle("on", on);
    live.textContent = text;
  }

  function patchRow(change) {
    const rows = main.querySelectorAll("tr[data-run-id]");
    for (const row of rows) {
      if (row.dataset.runId !== change.run_id) continue;
      if (Number(row.dataset.version || 0) >= change.run_version) continue;
      row.dataset.version = String(change.run_version);
      const badge = row.querySelector("[data-cell=status] .status");
      if (badge) {
        badge.textContent = change.to_status;
        badge.className = "status status-" + change.to_status;
      }
      row.classList.remove("changed");
      void row.offsetWidth; // restart the highlight
      row.classList.add("changed");
    }
  }

  function schedule() {
    if (timer !== null) return;
    if (inFlight) { again = true; return; }
    const interval = Math.max(MIN_INTERVAL_MS, COST_FACTOR * lastCost);
    const wait = Math.max(0, lastRefresh + interval - Date.now());
    timer = window.setTimeout(() => { timer = null; refresh(); }, wait);
  }

  async function refresh() {
    inFlight = true;
    const started = Date.now();
    try {
      const response = await fetch(window.location.href, {
        headers: { Accept: "text/html" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of main.querySelectorAll("[data-region]")) {
        const name = region.dataset.region;
        const next = fresh.querySelector('[data-region="' + name + '"]');
        if (!next) continue;
        const known = new Set(
          Array.from(region.querySelectorAll("tr[data-run-id]"), (row) => row.dataset.runId),
        );
        const adopted = document.importNode(next, true);
        if (name === "rows" && known.size > 0) {
          for (const row of adopted.querySelectorAll("tr[data-run-id]")) {
            if (!known.has(row.dataset.runId)) row.classList.add("fresh");
          }
        }
        region.replaceWith(adopted);
      }
    } catch (error) {
      // A failed refresh is retried on the next change.
    } finally {
      lastCost = Date.now() - started;
      lastRefresh = Date.now();
      inFlight = false;
      if (again) { again = false; schedule(); }
    }
  }

  const source = new EventSource(main.dataset.events, { withCredentials: true });
  source.addEventListener("open", () => setLive(true, "live"));
  source.addEventListener("error", () => setLive(false, "reconnecting…"));
  source.addEventListener("ready", (event) => {
    setLive(true, "live");
    const data = JSON.parse(event.data);
    if (data.reset) schedule();
  });
  source.addEventListener("change", (event) => {
    patchRow(JSON.parse(event.data));
    schedule();
  });
})();
