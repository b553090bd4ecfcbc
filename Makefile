# The single entry point. Every target bootstraps .venv on a fresh machine.
#   make demo            the tour, on an embedded PostgreSQL unless SQUIDMESH_DSN is set
#   make test            all tests (SQUIDMESH_TEST_DSN to use your own server;
#                        SQUIDMESH_TEST_BACKEND=docker for a container; installs
#                        Debian's pgbouncer and chromium if missing and root or
#                        sudo allows)
#   make test PYTEST_ARGS='-k cancel -x'
#   make test-pg15       all tests on Debian's PostgreSQL 15 (installs postgresql-15 if missing)
#   make bench BENCH_ARGS='--runs 20000'

SHELL := /bin/bash
.DEFAULT_GOAL := help

ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test-dev

PYTEST_ARGS ?=
BENCH_ARGS ?=
PG15_BIN_DIR ?= /usr/lib/postgresql/15/bin

.PHONY: help install demo test test-pg15 test-unit bench soak lint fmt fmt-check typecheck check clean

help:
	@echo "targets: demo test test-pg15 test-unit bench soak lint fmt fmt-check typecheck check clean"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m squidmesh demo

# tests/install_pgbouncer.sh and tests/install_chromium.sh fill in a missing
# pgbouncer (the PgBouncer tests) and Debian's chromium (the dashboard's
# browser tests) when they may (root or passwordless sudo) and never fail:
# without them, those tests skip and say why.
test: $(STAMP)
	@bash tests/install_pgbouncer.sh
	@bash tests/install_chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Installing postgresql-15 may create and start Debian's own "main" cluster;
# it is left alone: the tests start their own server on a free port.
# --no-upgrade: this fills in a missing PostgreSQL 15, it never changes one
# (PG15_BIN_DIR=<elsewhere> must not upgrade the system's package). The
# environment is cleared so that a SQUIDMESH_TEST_DSN cannot divert the run.
test-pg15: $(STAMP)
	@if [ ! -x $(PG15_BIN_DIR)/pg_ctl ]; then \
		if ! command -v apt-get >/dev/null; then \
			echo "error: $(PG15_BIN_DIR)/pg_ctl is missing and there is no apt-get: install PostgreSQL 15 and run make test-pg15 PG15_BIN_DIR=<its bin directory>" >&2; exit 1; \
		elif [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-upgrade postgresql-15; \
		elif command -v sudo >/dev/null; then \
			sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-upgrade postgresql-15; \
		else \
			echo "error: $(PG15_BIN_DIR)/pg_ctl is missing: run apt-get install postgresql-15 as root, then make test-pg15 again" >&2; exit 1; \
		fi || { echo "error: installing postgresql-15 failed (see above): install it as root with apt-get install postgresql-15" >&2; exit 1; }; \
		test -x $(PG15_BIN_DIR)/pg_ctl || { echo "error: postgresql-15 is installed but $(PG15_BIN_DIR)/pg_ctl is missing" >&2; exit 1; }; \
	fi
	env -u SQUIDMESH_TEST_DSN SQUIDMESH_TEST_BACKEND=embedded SQUIDMESH_PG_BIN_DIR=$(PG15_BIN_DIR) \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m benchmarks.load --duration 600 --concurrency 32 --fail-rate 0.01

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt-check: $(STAMP)
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f bench-*.json benchmarks/results/*.json
