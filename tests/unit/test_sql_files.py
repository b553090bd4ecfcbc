"""Lints over the SQL files: the loader, status CHECK lists, where locks are taken."""

from __future__ import annotations

import hashlib
import re
import typing
from pathlib import Path

import pytest

from squidmesh import MigrationError, Step, _sql, _types, state_machine
from squidmesh._migrate import NO_TRANSACTION, checksum, load_scripts, split_statements
from squidmesh._sql import Q, load_queries, migrations, parse_queries

ROOT = Path(__file__).resolve().parents[2] / "sql"
QUERY_FILES = sorted((ROOT / "queries").glob("*.sql"))
MIGRATION_FILES = sorted((ROOT / "migrations").glob("*.sql"))
FUNCTION_FILES = sorted((ROOT / "functions").glob("*.sql"))
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
    assert MIGRATION_FILES, "sql/migrations/NNNN_*.sql is empty"
    assert FUNCTION_FILES, "sql/functions/*.sql is empty"
    assert not list(ROOT.glob("*.sql")), "migrations live in sql/migrations/"
    for path in MIGRATION_FILES:
        assert re.fullmatch(r"\d{4}_\w+\.sql", path.name), path.name


def test_loader_finds_the_checkout_files() -> None:
    root = _sql.sql_root()
    assert root.joinpath("queries").is_dir()
    assert [v for v, _ in migrations()] == [p.stem for p in MIGRATION_FILES]
    for (version, sql), path in zip(migrations(), MIGRATION_FILES, strict=True):
        assert version == path.stem
        assert sql == path.read_text(encoding="utf-8")
    scripts = load_scripts(root)
    assert [m.version for m in scripts.migrations] == [p.stem for p in MIGRATION_FILES]
    assert [r.name for r in scripts.repeatables] == [f"functions/{p.stem}" for p in FUNCTION_FILES]
    for r, path in zip(scripts.repeatables, FUNCTION_FILES, strict=True):
        assert r.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


# -- migrations are immutable, functions are repeatable -------------------------------

# The SHA-256 of every migration a database may have applied. Editing one of
# these files makes migrate() refuse every database that applied it: change the
# schema in a new numbered migration instead (and add its checksum here once
# it is released).
RELEASED = {
    "0001_initial": "65ea09f8076db6623d34fe7336c46899e32a1e9a769004d721b93636cc39307b",
    "0002_hardening": "64debbaddf124a200996d6d4c0e744dd1172573c2891094ea5576ac83e9e45d6",
}


@pytest.mark.parametrize("version", sorted(RELEASED))
def test_released_migrations_are_unchanged(version: str) -> None:
    path = ROOT / "migrations" / f"{version}.sql"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RELEASED[version], (
        f"{path.name} was applied by existing databases and must not change; "
        "put the change in a new migration"
    )
    assert checksum(path.read_text(encoding="utf-8")) == RELEASED[version]


def test_the_vendored_release_file_is_the_shipped_migration() -> None:
    vendored = ROOT.parent / "tests/integration/data/release_5351f03/0001_initial.sql"
    assert vendored.read_bytes() == (ROOT / "migrations/0001_initial.sql").read_bytes()


def _created_functions(text: str) -> set[str]:
    code = _strip_comments(text)
    return set(re.findall(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(squidmesh\.\w+)", code))


@pytest.mark.parametrize("path", FUNCTION_FILES, ids=lambda p: p.name)
def test_a_function_file_holds_create_or_replace_function_only(path: Path) -> None:
    statements = split_statements(path.read_text(encoding="utf-8"))
    assert statements
    for statement in statements:
        code = _strip_comments(statement).strip()
        assert re.match(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+squidmesh\.\w+\(", code), (
            f"{path.name}: a function file re-runs whenever it changes, so it holds only "
            f"CREATE OR REPLACE FUNCTION squidmesh.<name>(...); got {code[:60]!r}"
        )


def test_every_function_a_migration_created_has_its_current_body_in_a_function_file() -> None:
    in_migrations = set().union(
        *(_created_functions(p.read_text(encoding="utf-8")) for p in MIGRATION_FILES)
    )
    dropped = set().union(
        *(
            re.findall(r"DROP FUNCTION (squidmesh\.\w+)", p.read_text(encoding="utf-8"))
            for p in MIGRATION_FILES
        )
    )
    in_files = set().union(
        *(_created_functions(p.read_text(encoding="utf-8")) for p in FUNCTION_FILES)
    )
    assert in_migrations - dropped <= in_files
    assert not dropped & in_files
    assert in_files == {
        "squidmesh.utc_iso",
        "squidmesh.run_json",
        "squidmesh.attempt_json",
        "squidmesh.step_run_json",
        "squidmesh.cancel_run",
        "squidmesh.cancel_run_v2",
        "squidmesh.runs_write",
        "squidmesh.runs_log_insert",
        "squidmesh.feed_tick",
        "squidmesh.read_changes",
    }


def test_a_function_file_calls_only_functions_of_files_sorted_before_it() -> None:
    """A SQL-standard body (RETURN ...) resolves its calls when it is created,
    so on a fresh database a callee must exist before its caller."""
    defined: set[str] = set()
    for path in FUNCTION_FILES:
        for statement in split_statements(path.read_text(encoding="utf-8")):
            code = _strip_comments(statement)
            (name,) = _created_functions(code)
            if re.search(r"\bLANGUAGE\s+sql\b", code) and "RETURN" in code:
                body = code.split("RETURN", 1)[1]
                called = set(re.findall(r"(squidmesh\.\w+)\s*\(", body)) - {name}
                assert called <= defined, f"{path.name}: {name} calls {called - defined} first"
            defined.add(name)


def test_the_trigger_stays_in_the_migrations() -> None:
    # A trigger belongs to its table: schema, not a repeatable function body.
    assert not any("CREATE TRIGGER" in p.read_text(encoding="utf-8") for p in FUNCTION_FILES)
    assert "CREATE TRIGGER runs_stamp_updated_at" in MIGRATION


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    (root / "migrations").mkdir(parents=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def test_load_scripts_reads_the_no_transaction_header(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "migrations/0001_a.sql": "CREATE TABLE a ();\n",
            "migrations/0002_b.sql": f"{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY b ON a ();\n",
            "migrations/notes.txt": "not SQL, not a migration",
            "functions/f.sql": "CREATE OR REPLACE FUNCTION f() RETURNS int RETURN 1;\n",
        },
    )
    scripts = load_scripts(root)
    assert [(m.version, m.transactional) for m in scripts.migrations] == [
        ("0001_a", True),
        ("0002_b", False),
    ]
    assert [r.name for r in scripts.repeatables] == ["functions/f"]


def test_load_scripts_without_a_functions_directory(tmp_path: Path) -> None:
    root = _write(tmp_path, {"migrations/0001_a.sql": "SELECT 1;\n"})
    assert load_scripts(root).repeatables == []


def test_checksums_ignore_crlf_line_endings(tmp_path: Path) -> None:
    text = "-- a\nCREATE TABLE a ();\n"
    lf = load_scripts(_write(tmp_path / "lf", {"migrations/0001_a.sql": text}))
    crlf = load_scripts(
        _write(tmp_path / "crlf", {"migrations/0001_a.sql": text.replace("\n", "\r\n").encode()})
    )
    assert lf.migrations[0].checksum == crlf.migrations[0].checksum == checksum(text)


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"migrations/0003-add-index.sql": "SELECT 1;"}, "not named NNNN_description.sql"),
        ({"migrations/003_a.sql": "SELECT 1;"}, "not named NNNN_description.sql"),
        ({"migrations/0001_a.sql": "-- squidmesh: no-transactions\nSELECT 1;"}, "unknown"),
        ({"migrations/0001_a.sql": f"-- header\n{NO_TRANSACTION}\nSELECT 1;"}, "first line"),
        ({"functions/f.sql": f"{NO_TRANSACTION}\nSELECT 1;"}, "takes no directive"),
    ],
)
def test_load_scripts_refuses_what_would_silently_misbehave(
    tmp_path: Path, files: dict[str, str | bytes], complaint: str
) -> None:
    with pytest.raises(MigrationError, match=complaint):
        load_scripts(_write(tmp_path, files))


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
        ("SELECT 1", ["SELECT 1"]),
        ("-- only a comment; really\n\n", []),
        ("SELECT 1;\n-- trailing; comment\n", ["SELECT 1;"]),
        (";;SELECT 1;;", ["SELECT 1;"]),
        ("SELECT ';', 'it''s;';", ["SELECT ';', 'it''s;';"]),
        ("SELECT E'\\';', 2;", ["SELECT E'\\';', 2;"]),
        ("SELECT 'a\\'; SELECT 2;", ["SELECT 'a\\';", "SELECT 2;"]),
        ('SELECT 1 AS "a;b";', ['SELECT 1 AS "a;b";']),
        ("SELECT /* a; /* nested; */ b; */ 1;", ["SELECT /* a; /* nested; */ b; */ 1;"]),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;"
            " SELECT 2;",
            [
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;",
                "SELECT 2;",
            ],
        ),
        ("SELECT $tag$ $$; $tag$;", ["SELECT $tag$ $$; $tag$;"]),
        ("SELECT a$b; SELECT $1;", ["SELECT a$b;", "SELECT $1;"]),
        (
            f"{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY IF EXISTS i;\n"
            "CREATE INDEX CONCURRENTLY i ON t (c);\n",
            [
                f"{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY IF EXISTS i;",
                "CREATE INDEX CONCURRENTLY i ON t (c);",
            ],
        ),
    ],
)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


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
        says_so = name.startswith(("lock_", "claim_")) or "transition" in name or "cancel" in name
        assert says_so, f"{name} takes a row lock but its name does not say so"


@pytest.mark.parametrize("name", sorted(n for n in Q if n.startswith("lock_")))
def test_lock_queries_lock(name: str) -> None:
    assert _takes_row_lock(Q[name]), f"{name} is named lock_ but takes no row lock"


def test_the_one_statement_state_changes_lock_first() -> None:
    assert _takes_row_lock(Q["transition_run"])
    # cancel_run calls a function whose first read of a table locks the run row.
    assert "squidmesh.cancel_run_v2(" in Q["cancel_run"]
    body = (ROOT / "functions" / "cancel_run_v2.sql").read_text(encoding="utf-8")
    body = _strip_comments(body.split("CREATE OR REPLACE FUNCTION squidmesh.cancel_run_v2", 1)[1])
    first_read = re.search(r"SELECT[^;]*?FROM squidmesh\.\w+[^;]*;", body)
    assert first_read is not None and "FROM squidmesh.runs" in first_read.group(0)
    assert _takes_row_lock(first_read.group(0))


# Written bare, these are SQL syntax, not names looked up through search_path
# (or a keyword before a parenthesis; "op" is what OPERATOR(...) becomes below,
# before a scalar subquery).
_SYNTAX_CALLS = frozenset(
    {
        "any", "and", "as", "coalesce", "conflict", "exists", "from", "greatest",
        "in", "join", "lateral", "least", "limit", "not", "on", "op", "or",
        "returning", "row", "select", "set", "then", "values", "when", "where",
        "else", "with",
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
    # (Column expansions, not multiplications: "moved.*", "(composite).*".)
    rest = re.sub(r"\w+\.\*|\)\.\*|SELECT \*|::|\[\]|\$\d+", " ", rest)
    operators = set(re.findall(r"[=<>!+\-*/|%^~@#&]+", rest))
    assert not operators, f"{name}: unqualified operators {sorted(operators)}"
