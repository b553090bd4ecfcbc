#!/usr/bin/env bash
# Fills in a missing Chromium for the dashboard's browser tests
# (tests/integration/test_dashboard_browser.py; make test runs this first),
# through tests/_install_package.sh.
#
# Playwright drives this binary (executable_path); it never downloads a
# browser of its own (no `playwright install`).
set -u

package=chromium
override_var=SQUIDMESH_CHROMIUM
default_found() { [ -x /usr/bin/chromium ]; }
missing=/usr/bin/chromium
no_apt_hint="install Chromium and set SQUIDMESH_CHROMIUM to run them"
install_flags=()
skipping="the browser tests"
purpose="the dashboard's browser tests"
source "$(dirname "$0")/_install_package.sh"
