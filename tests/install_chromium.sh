#!/usr/bin/env bash
# Fills in a missing Chromium for the dashboard's browser tests
# (tests/integration/test_dashboard_browser.py; make test runs this first).
# It installs Debian's chromium package with apt-get when this user may
# (root, or passwordless sudo); otherwise it prints one line and succeeds:
# those tests then skip, saying why. It never fails make test.
#
# --no-upgrade: this fills in a missing chromium, it never changes one.
# Playwright drives this binary (executable_path); it never downloads a
# browser of its own (no `playwright install`).
set -u

found() {
	if [ -n "${SQUIDMESH_CHROMIUM:-}" ]; then
		[ -x "$SQUIDMESH_CHROMIUM" ]
	else
		[ -x /usr/bin/chromium ]
	fi
}

found && exit 0
if [ -n "${SQUIDMESH_CHROMIUM:-}" ]; then
	echo "note: SQUIDMESH_CHROMIUM=$SQUIDMESH_CHROMIUM is not an executable; the browser tests will skip"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "note: /usr/bin/chromium is missing and there is no apt-get; the browser tests will skip (install Chromium and set SQUIDMESH_CHROMIUM to run them)"
	exit 0
fi
if [ "$(id -u)" = 0 ]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	as_root=(sudo -n)
else
	echo "note: chromium is missing and installing it needs root; the browser tests will skip (run: sudo apt-get install chromium)"
	exit 0
fi

install() {
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-upgrade chromium
}

echo "installing Debian's chromium for the dashboard's browser tests"
# Without package lists (a fresh machine) or with stale ones, update and retry.
install || { "${as_root[@]}" apt-get update -q && install; }
if ! found; then
	echo "note: installing chromium with apt-get failed (see above); the browser tests will skip"
fi
exit 0
