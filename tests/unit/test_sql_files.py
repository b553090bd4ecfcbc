"""Lints over the SQL files: the loader, status CHECK lists, where locks are taken."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from squidmesh import Step, _sql, _types, state_machine
from squidmesh._sql import Q, load_queries, migrations, parse_queries

ROOT = Path(__file__).resolve().parents[2] / "sql"
QUERY_FILES = sorted((ROOT / "queries").glob("*.sql"))
MIGRATION_FILES = sorted(ROOT.glob("*.sql"))
MIGRATION = "\n".join(p.read_text(encoding="utf-8") for p in MIGRATION_FILES)
NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _check_list(table: str) -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in MIGRATION_FILES)
    match = re.search(
        rf"CONSTRAINT\s+{table}_status_check\s+CHECK\s*\(\s*status\s+IN\s*\(([^)]*)\)\s*\)",
        text,
    )
    assert match, f"no {table}_status_check in the migrations"
    return re.findall(r"'([^']*)'", match.group(1))


def test_files_exist() -> None:
    assert QUERY_FILES, "sql/queries/*.sql is empty"
    assert MIGRATION_FILES, "sql/NNNN_*.sql is empty"
    for path in MIGRATION_FILES:
        assert re.fullmatch(r"\d{4}_\w+\.sql", path.name), path.name


def test_loader_finds_the_checkout_files() -> None:
    root = _sql.sql_root()
    assert root.joinpath("queries").is_dir()
    assert [v for v, _ in migrations()] == [p.stem for p in MIGRATION_FILES]
    for (version, sql), path in zip(migrations(), MIGRATION_FILES, strict=True):
        assert version == path.stem
        assert sql == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda p: p.name)
def test_every_query_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    names = NAME_LINE.findall(text)
    parsed = parse_queries(text)
    assert names, f"{path.name} has no -- name: blocks"
    assert list(parsed) == names
    for name, body in parsed.items():
        assert _strip_comments(body).strip(), f"{name} has no statement"
        assert not body.endswith(";")
        assert Q[name] == body


def test_q_holds_every_query_of_every_file() -> None:
    expected: list[str] = []
    for path in QUERY_FILES:
        expected += NAME_LINE.findall(path.read_text(encoding="utf-8"))
    assert len(expected) == len(set(expected)), "a query name is used twice"
    assert set(Q) == set(expected)
    assert load_queries() == Q


def test_parse_queries_refuses_duplicates() -> None:
    with pytest.raises(RuntimeError, match="duplicate"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_parse_queries_keeps_comments_and_strips_semicolon() -> None:
    parsed = parse_queries(
        "-- header\n-- name: one\n-- purpose\nSELECT 1;\n\n-- name: two\nSELECT 2"
    )
    assert parsed == {"one": "-- purpose\nSELECT 1", "two": "SELECT 2"}


@pytest.mark.parametrize("name", sorted(Q))
def test_parameters_are_numbered_without_gaps(name: str) -> None:
    numbers = {int(n) for n in re.findall(r"\$(\d+)", _strip_comments(Q[name]))}
    assert numbers == set(range(1, len(numbers) + 1)), f"{name}: {sorted(numbers)}"


@pytest.mark.parametrize("name", sorted(Q))
def test_json_goes_in_as_text(name: str) -> None:
    # $n::jsonb would depend on the pool's jsonb codec; $n::text::jsonb does not.
    assert not re.search(r"\$\d+\s*::\s*jsonb?\b", _strip_comments(Q[name])), name


def test_runs_status_check_equals_run_states() -> None:
    assert _check_list("runs") == [s.value for s in state_machine.STATES]


def test_step_runs_status_check_equals_step_statuses() -> None:
    assert set(_check_list("step_runs")) == set(typing.get_args(_types.StepStatus))
    # A step state is a step status plus "waiting" (no step run yet).
    assert set(typing.get_args(_types.StepStateStatus)) == set(_check_list("step_runs")) | {
        "waiting"
    }


def test_step_attempts_status_check_equals_attempt_statuses() -> None:
    assert set(_check_list("step_attempts")) == set(typing.get_args(_types.AttemptStatus))


def test_step_kind_check_equals_step_kinds() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in MIGRATION_FILES)
    match = re.search(r"step_runs_kind_check\s+CHECK\s*\(\s*kind\s+IN\s*\(([^)]*)\)", text)
    assert match
    kinds = set(re.findall(r"'([^']*)'", match.group(1)))
    for kind in kinds:
        Step("s", kind=kind)  # every stored kind is one a definition may use
    assert kinds == {"step", "pause", "approval"}


def _takes_row_lock(sql: str) -> bool:
    return bool(re.search(r"\bFOR\s+(NO\s+KEY\s+)?UPDATE\b", _strip_comments(sql), re.I))


@pytest.mark.parametrize("name", sorted(Q))
def test_row_locks_only_in_lock_transition_and_cancel_queries(name: str) -> None:
    if _takes_row_lock(Q[name]):
        assert name.startswith("lock_") or "transition" in name or "cancel" in name, (
            f"{name} takes a row lock but its name does not say so"
        )


@pytest.mark.parametrize("name", sorted(n for n in Q if n.startswith("lock_")))
def test_lock_queries_lock(name: str) -> None:
    assert _takes_row_lock(Q[name]), f"{name} is named lock_ but takes no row lock"


def test_the_one_statement_state_changes_lock_first() -> None:
    assert _takes_row_lock(Q["transition_run"])
    # cancel_run calls a function whose first statement locks the run row.
    assert "squidmesh.cancel_run(" in Q["cancel_run"]
    body = MIGRATION.split("CREATE FUNCTION squidmesh.cancel_run", 1)[1]
    first_select = body.split("BEGIN", 1)[1].split(";", 1)[0]
    assert _takes_row_lock(first_select)


# Written bare, these are SQL syntax, not names looked up through search_path
# (or a keyword before a parenthesis).
_SYNTAX_CALLS = frozenset(
    {
        "any", "and", "as", "coalesce", "conflict", "exists", "from", "greatest",
        "in", "join", "least", "not", "on", "or", "returning", "select", "set",
        "then", "values", "when", "where", "else", "with",
    }
)  # fmt: skip


def _code_only(sql: str) -> str:
    """The query without comments and string literals."""
    return re.sub(r"'(?:[^']|'')*'", "''", _strip_comments(sql))


@pytest.mark.parametrize("name", sorted(Q))
def test_query_resolves_no_name_through_the_search_path(name: str) -> None:
    """Functions, operators and types are schema-qualified (see sql/queries/runs.sql)."""
    code = re.sub(r"OPERATOR\(pg_catalog\.[^)]+\)", " OP ", _code_only(Q[name]))
    # Aliases with a column list ("AS e(workflow, kind)", "AS r (id, ...)").
    code = re.sub(r"\bAS\s+\w+\s*\(", "AS alias (", code, flags=re.IGNORECASE)
    calls = {
        m.group(1).lower()
        for m in re.finditer(r"(?<![.\w])([A-Za-z_]\w*)\s*\(", code)
        if m.group(1).lower() not in _SYNTAX_CALLS and m.group(1) != "alias"
    }
    assert not calls, f"{name}: unqualified function calls {sorted(calls)}"
    types = set(re.findall(r"::\s*(?!pg_catalog\.|squidmesh\.)(\w+)", code))
    assert not types, f"{name}: unqualified types {sorted(types)}"
    # Every operator is OPERATOR(pg_catalog.x); what is left of = is an
    # assignment of an UPDATE (one per line, or right after SET).
    rest = re.sub(r"(?m)^\s*\w+\s*=|\bSET\s+\w+\s*=", " ", code)
    rest = re.sub(r"\w+\.\*|SELECT \*|::|\[\]|\$\d+", " ", rest)
    operators = set(re.findall(r"[=<>!+\-*/|%^~@#&]+", rest))
    assert not operators, f"{name}: unqualified operators {sorted(operators)}"
