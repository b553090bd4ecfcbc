#!/usr/bin/env bash
# Fills in a missing pgbouncer for tests/integration/test_pgbouncer.py (make
# test runs it first). It installs Debian's package with apt-get when this
# user may (root, or passwordless sudo); otherwise it prints one line and
# succeeds: those tests then skip, saying why. It never fails make test.
#
# --no-upgrade: this fills in a missing pgbouncer, it never changes one.
# Debian's package may create and start a system pgbouncer service (port
# 6432); it is left alone: the test starts its own pgbouncer, with its own
# configuration in a temporary directory, on a free port.
set -u

found() {
	if [ -n "${SQUIDMESH_PGBOUNCER:-}" ]; then
		[ -x "$SQUIDMESH_PGBOUNCER" ]
	else
		command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
	fi
}

found && exit 0
if [ -n "${SQUIDMESH_PGBOUNCER:-}" ]; then
	echo "note: SQUIDMESH_PGBOUNCER=$SQUIDMESH_PGBOUNCER is not an executable; the PgBouncer tests will skip"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "note: pgbouncer is missing and there is no apt-get; the PgBouncer tests will skip (install pgbouncer to run them)"
	exit 0
fi
if [ "$(id -u)" = 0 ]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	as_root=(sudo -n)
else
	echo "note: pgbouncer is missing and installing it needs root; the PgBouncer tests will skip (run: sudo apt-get install pgbouncer)"
	exit 0
fi

install() {
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends --no-upgrade pgbouncer
}

echo "installing Debian's pgbouncer for the PgBouncer tests"
# Without package lists (a fresh machine) or with stale ones, update and retry.
install || { "${as_root[@]}" apt-get update -q && install; }
if ! found; then
	echo "note: installing pgbouncer with apt-get failed (see above); the PgBouncer tests will skip"
fi
exit 0
