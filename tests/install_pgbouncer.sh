#!/usr/bin/env bash
# Fills in a missing pgbouncer for tests/integration/test_pgbouncer.py (make
# test runs it first), through tests/_install_package.sh.
#
# Debian's package may create and start a system pgbouncer service (port
# 6432); it is left alone: the test starts its own pgbouncer, with its own
# configuration in a temporary directory, on a free port.
set -u

package=pgbouncer
override_var=SQUIDMESH_PGBOUNCER
default_found() { command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; }
missing=pgbouncer
no_apt_hint="install pgbouncer to run them"
install_flags=(--no-install-recommends)
skipping="the PgBouncer tests"
purpose="the PgBouncer tests"
source "$(dirname "$0")/_install_package.sh"
