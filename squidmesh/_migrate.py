"""Bring a database's ``squidmesh`` schema up to date: migrations, then functions.

The SQL directory (``sql/`` in a checkout, ``squidmesh/sql`` in the wheel)
holds two kinds of files:

- ``migrations/NNNN_description.sql``: numbered and **immutable**. Each runs
  once, in name order, and is recorded in ``squidmesh.schema_migrations``
  with the SHA-256 of its text (line endings read as ``\\n``, so a CRLF
  checkout matches). A file whose checksum no longer matches what was
  applied is refused with ``MigrationError``: change the schema in a new
  migration, never by editing an applied one. Tables, columns, constraints,
  indexes and triggers (which belong to a table) live here.
- ``functions/*.sql``: **repeatable** (Flyway's idea). After the
  migrations, every file whose checksum differs from the one recorded in
  ``squidmesh.schema_repeatables`` runs again, in name order, all in one
  transaction. They hold ``CREATE OR REPLACE FUNCTION`` only, so a body can
  change in place. ``CREATE OR REPLACE`` cannot change a function's return
  type or its argument names and types: give the new shape a new name
  (``run_json_v2``, as procrastinate does, so instances still running the
  previous release keep theirs) or drop the old function in a numbered
  migration. A numbered migration runs before the functions, so it may only
  use functions an earlier migration created.

The bookkeeping, created by ``migrate()`` itself before any file runs:
``schema_migrations (version text PRIMARY KEY, applied_at timestamptz,
checksum text)`` and ``schema_repeatables (name text PRIMARY KEY, applied_at
timestamptz, checksum text NOT NULL)``, where ``name`` is ``functions/<stem>``.
A NULL checksum marks a migration recorded without one (by an earlier
squidmesh, or by hand as the README describes); the next ``migrate()`` fills
it in.

Every file runs with ``search_path = pg_catalog, pg_temp``: SQL-standard
function bodies (``RETURN ...``) resolve names when they are created, and a
caller's schema must not capture them. squidmesh's own names are qualified.

A migration whose first line is ``-- squidmesh: no-transaction`` runs outside
a transaction, one statement at a time (``CREATE INDEX CONCURRENTLY`` on a
large table). If a statement fails, the ones before it stay committed and the
migration is not recorded, so the next ``migrate()`` runs the whole file
again; a failed ``CREATE INDEX CONCURRENTLY`` leaves an INVALID index behind,
hence such a file starts with ``DROP INDEX CONCURRENTLY IF EXISTS``.

Concurrent migrators are serialised by one advisory lock. Outside a caller's
transaction it is a session-level lock taken by polling ``pg_try_advisory_lock``
with no transaction open: a migrator that waits for another holds no snapshot,
so it cannot stall (or deadlock with) the other's ``CREATE INDEX
CONCURRENTLY``, which waits for every older snapshot. Inside a caller's
transaction the lock is transaction-level and held until that transaction
ends, when what it applied becomes visible to others.

Databases migrated before checksums existed have ``schema_migrations
(version, applied_at)`` only: the first ``migrate()`` adds the ``checksum``
column and records the checksum of the shipped file for every applied
version (trust on first use: nothing can tell what was applied back then),
creates ``schema_repeatables`` with the grants ``schema_migrations`` has, and
applies the function files once.

A database that has applied a migration this release does not know is newer
than the code (an instance of the previous release restarting during a
rolling deploy): ``migrate()`` applies what it has pending but leaves the
function bodies alone, since it would put older ones back. Hence an applied
migration is never deleted or renamed either.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources.abc import Traversable
from typing import Final, Literal, NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ._errors import MigrationError
from ._sql import migrations, sql_root

# Any fixed 64-bit key; it only has to be the same in every process (and in
# every release: an older squidmesh takes it as a transaction-level lock).
_LOCK_KEY: Final = 0x5371_7569_644D_6573  # "SquidMes"

# Waiting for the lock: short first (concurrent start-ups finish within
# milliseconds), backing off so a long CREATE INDEX CONCURRENTLY is not hammered.
_POLL_FIRST_S: Final = 0.005
_POLL_MAX_S: Final = 0.25

Connectable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy
Conn = asyncpg.Connection | PoolConnectionProxy

NO_TRANSACTION: Final = "-- squidmesh: no-transaction"
_DIRECTIVE = re.compile(r"^--\s*squidmesh\s*:\s*(.*?)\s*$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^\d{4}_\w+\.sql$")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


class Migration(NamedTuple):
    """A numbered file: ``version`` is its name without ``.sql``."""

    version: str
    sql: str
    checksum: str
    transactional: bool

    @property
    def path(self) -> str:
        return f"sql/migrations/{self.version}.sql"


class Repeatable(NamedTuple):
    """A file of ``functions/``: ``name`` is ``functions/<stem>``."""

    name: str
    sql: str
    checksum: str

    @property
    def path(self) -> str:
        return f"sql/{self.name}.sql"


class Scripts(NamedTuple):
    migrations: list[Migration]
    repeatables: list[Repeatable]


def checksum(sql: str) -> str:
    """SHA-256 of a file's text as read (universal newlines: CRLF reads as LF)."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


def load_scripts(root: Traversable) -> Scripts:
    """Read ``root/migrations`` and ``root/functions`` (the latter may be absent).

    Raises:
        MigrationError: a file is misnamed or carries an unknown or misplaced
            ``-- squidmesh:`` directive (a typo must not silently run the file
            inside a transaction).
    """
    directory = root.joinpath("migrations")
    for f in directory.iterdir():
        if f.name.endswith(".sql") and not _MIGRATION_NAME.match(f.name):
            raise MigrationError(
                None,
                f"sql/migrations/{f.name} is not named NNNN_description.sql: it would never run",
            )
    loaded: list[Migration] = []
    for version, sql in migrations(root):
        directives = [(m.start(), m.group(1)) for m in _DIRECTIVE.finditer(sql)]
        for start, directive in directives:
            if directive != "no-transaction" or start != 0:
                raise MigrationError(
                    version,
                    f"sql/migrations/{version}.sql: unknown or misplaced directive "
                    f"'-- squidmesh: {directive}'; the only one is {NO_TRANSACTION!r}, "
                    "on the first line",
                )
        loaded.append(Migration(version, sql, checksum(sql), transactional=not directives))
    repeatables: list[Repeatable] = []
    functions = root.joinpath("functions")
    if functions.is_dir():
        for f in sorted(functions.iterdir(), key=lambda f: f.name):
            if not f.name.endswith(".sql"):
                continue
            sql = f.read_text(encoding="utf-8")
            name = "functions/" + f.name.removesuffix(".sql")
            if _DIRECTIVE.search(sql):
                raise MigrationError(name, f"sql/{name}.sql: a function file takes no directive")
            repeatables.append(Repeatable(name, sql, checksum(sql)))
    return Scripts(loaded, repeatables)


def split_statements(sql: str) -> list[str]:
    """Split a file into statements on the semicolons that end them.

    Semicolons inside comments (``--``, nested ``/* */``), string literals
    (``'...'``, ``E'...'``), quoted identifiers and dollar-quoted bodies do not
    count. Statements holding nothing but comments are dropped. Needed for
    no-transaction files: PostgreSQL runs a multi-statement string as one
    implicit transaction, where CREATE INDEX CONCURRENTLY is refused.
    """
    statements: list[str] = []
    start = i = 0
    code = False  # the current statement has more than comments and blanks
    n = len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == ";":
            i += 1
            if code:
                statements.append(sql[start:i].strip())
            start, code = i, False
        elif c.isspace():
            i += 1
        elif c in "'\"":
            code = True
            # E'...' takes backslash escapes; a doubled quote is a quote either way.
            escapes = c == "'" and i > 0 and sql[i - 1] in ("e", "E")
            escapes = escapes and not (i > 1 and _word_char(sql[i - 2]))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql.startswith(c + c, i):
                    i += 2
                elif sql[i] == c:
                    i += 1
                    break
                else:
                    i += 1
        elif (
            c == "$"
            and not (i > 0 and _word_char(sql[i - 1]))
            and (tag := _DOLLAR_QUOTE.match(sql, i))
        ):
            code = True
            end = sql.find(tag.group(), tag.end())
            i = n if end < 0 else end + len(tag.group())
        else:
            code = True
            i += 1
    if code:
        statements.append(sql[start:].strip())
    return statements


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_" or c == "$"


async def migrate(pool_or_connection: Connectable) -> list[str]:
    """Apply pending migrations, then changed function files; return what ran.

    An up-to-date database costs three reads (the catalog and the two
    bookkeeping tables), takes no lock and writes nothing, so an application
    role with only USAGE and DML may call it at start-up. Otherwise, under
    the advisory lock, it re-reads the bookkeeping (a migrator it waited for
    may have done the work), then runs each pending migration in its own
    READ COMMITTED transaction (or statement by statement for a
    no-transaction file) and the changed function files in one more, with
    ``search_path = pg_catalog, pg_temp``, whatever the session's defaults.
    A database that has applied a migration this release does not know is
    newer than the code: its function bodies are left alone. Idempotent.

    Args:
        pool_or_connection: an ``asyncpg.Pool``, a ``Connection`` or a pooled
            connection, possibly inside the caller's transaction (then each
            file runs in a savepoint, and no-transaction files are refused).

    Returns:
        The versions applied (``0002_hardening``), then the function files
        applied (``functions/cancel_run``), in the order they ran.

    Raises:
        MigrationError: an applied migration's file changed; a pending file
            failed (the message names it); the role may not apply it (the
            message names the missing privilege); the bookkeeping tables
            cannot be read; or a no-transaction migration is pending inside
            the caller's transaction.
    """
    return await run_migrations(pool_or_connection, sql_root())


async def run_migrations(pool_or_connection: Connectable, root: Traversable) -> list[str]:
    """:func:`migrate` with the SQL files of ``root`` (tests use throwaway ones)."""
    scripts = load_scripts(root)
    if isinstance(pool_or_connection, asyncpg.Pool):
        async with pool_or_connection.acquire() as conn:
            return await _migrate(conn, scripts)
    return await _migrate(pool_or_connection, scripts)


# -- what the database has applied ---------------------------------------------

# Qualified throughout: these run on the caller's session, before (or without)
# pinning its search_path.
_STATE: Final = """
SELECT pg_catalog.to_regclass('squidmesh.schema_migrations') IS NOT NULL,
       pg_catalog.to_regclass('squidmesh.schema_repeatables') IS NOT NULL,
       EXISTS (SELECT FROM pg_catalog.pg_attribute a
                WHERE a.attrelid OPERATOR(pg_catalog.=)
                          pg_catalog.to_regclass('squidmesh.schema_migrations')
                  AND a.attname OPERATOR(pg_catalog.=) 'checksum'
                  AND NOT a.attisdropped)
"""
_APPLIED: Final = "SELECT version, checksum FROM squidmesh.schema_migrations"
_APPLIED_BEFORE_CHECKSUMS: Final = (
    "SELECT version, NULL AS checksum FROM squidmesh.schema_migrations"
)
_REPEATABLES: Final = "SELECT name, checksum FROM squidmesh.schema_repeatables"


class _State(NamedTuple):
    migrations_table: bool
    checksum_column: bool
    repeatables_table: bool
    applied: dict[str, str | None]  # version -> checksum (None: not recorded yet)
    repeatables: dict[str, str]  # name -> checksum


async def _read_state(conn: Conn) -> _State:
    try:
        row = await conn.fetchrow(_STATE)
        assert row is not None
        migrations_table, repeatables_table, checksum_column = row[0], row[1], row[2]
        applied: dict[str, str | None] = {}
        if migrations_table:
            query = _APPLIED if checksum_column else _APPLIED_BEFORE_CHECKSUMS
            applied = {r[0]: r[1] for r in await conn.fetch(query)}
        repeatables: dict[str, str] = {}
        if repeatables_table:
            repeatables = {r[0]: r[1] for r in await conn.fetch(_REPEATABLES)}
    except asyncpg.InsufficientPrivilegeError as exc:
        user = await conn.fetchval("SELECT current_user")
        raise MigrationError(
            None,
            f"role {user!r} cannot read squidmesh's bookkeeping ({exc}); grant it USAGE on "
            "schema squidmesh and SELECT on squidmesh.schema_migrations and "
            "squidmesh.schema_repeatables",
        ) from exc
    return _State(migrations_table, checksum_column, repeatables_table, applied, repeatables)


class _Plan(NamedTuple):
    bookkeeping: bool  # a bookkeeping table or column is missing
    unrecorded: list[Migration]  # applied before checksums: record them now
    pending: list[Migration]
    stale: list[Repeatable]

    @property
    def empty(self) -> bool:
        return not (self.bookkeeping or self.unrecorded or self.pending or self.stale)


def _plan(state: _State, scripts: Scripts) -> _Plan:
    known = {m.version: m for m in scripts.migrations}
    for version, recorded in sorted(state.applied.items()):
        m = known.get(version)
        if m is not None and recorded is not None and recorded != m.checksum:
            raise MigrationError(
                version,
                f"{m.path} is not the file that was applied (checksum {m.checksum[:12]}..., "
                f"applied {recorded[:12]}...). An applied migration is immutable: restore the "
                "file and make the change in a new numbered migration",
            )
    newer = any(version not in known for version in state.applied)
    return _Plan(
        bookkeeping=not (
            state.migrations_table and state.checksum_column and state.repeatables_table
        ),
        unrecorded=[
            m
            for m in scripts.migrations
            if m.version in state.applied and state.applied[m.version] is None
        ],
        pending=[m for m in scripts.migrations if m.version not in state.applied],
        # A newer release's function bodies stay: this code would put older ones back.
        stale=[]
        if newer
        else [r for r in scripts.repeatables if state.repeatables.get(r.name) != r.checksum],
    )


# -- applying ------------------------------------------------------------------------

_PIN_SEARCH_PATH: Final = "SET LOCAL search_path = pg_catalog, pg_temp"
_SEARCH_PATH: Final = "SELECT pg_catalog.current_setting('search_path')"
_SET_SEARCH_PATH: Final = "SELECT pg_catalog.set_config('search_path', $1, $2)"
_TRY_LOCK: Final = "SELECT pg_catalog.pg_try_advisory_lock($1)"
_UNLOCK: Final = "SELECT pg_catalog.pg_advisory_unlock($1)"
_XACT_LOCK: Final = "SELECT pg_catalog.pg_advisory_xact_lock($1)"
# pg_locks shows a bigint key as its high and low 32 bits; unlocking a lock
# not held would send the client a WARNING.
_UNLOCK_IF_HELD: Final = """
SELECT pg_catalog.pg_advisory_unlock($1)
  FROM pg_catalog.pg_locks
 WHERE locktype OPERATOR(pg_catalog.=) 'advisory'
   AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
   AND classid OPERATOR(pg_catalog.=) $2::pg_catalog.int8::pg_catalog.oid
   AND objid OPERATOR(pg_catalog.=) $3::pg_catalog.int8::pg_catalog.oid
   AND objsubid OPERATOR(pg_catalog.=) 1
   AND granted
"""

# The checksum column comes last so that a table upgraded with ADD COLUMN and
# a fresh one have the same shape.
_CREATE_MIGRATIONS_TABLE: Final = """
CREATE SCHEMA IF NOT EXISTS squidmesh;
CREATE TABLE IF NOT EXISTS squidmesh.schema_migrations (
    version    pg_catalog.text PRIMARY KEY,
    applied_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    checksum   pg_catalog.text
)
"""
_ADD_CHECKSUM_COLUMN: Final = (
    "ALTER TABLE squidmesh.schema_migrations ADD COLUMN IF NOT EXISTS checksum pg_catalog.text"
)
_CREATE_REPEATABLES_TABLE: Final = """
CREATE TABLE IF NOT EXISTS squidmesh.schema_repeatables (
    name       pg_catalog.text PRIMARY KEY,
    applied_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    checksum   pg_catalog.text NOT NULL
)
"""
# A role that may read schema_migrations (an application role calling
# migrate() at start-up) must be able to read the new table too, or its next
# start fails on a database its owner has just upgraded.
_COPY_GRANTS: Final = """
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT a.privilege_type,
               CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                    ELSE pg_catalog.quote_ident(r.rolname) END AS grantee
          FROM pg_catalog.pg_class c
         CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
         WHERE c.oid OPERATOR(pg_catalog.=) 'squidmesh.schema_migrations'::pg_catalog.regclass
           AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON squidmesh.schema_repeatables TO %s',
                                  g.privilege_type, g.grantee);
    END LOOP;
END
$$
"""
_RECORD_CHECKSUM: Final = (
    "UPDATE squidmesh.schema_migrations SET checksum = $2"
    " WHERE version OPERATOR(pg_catalog.=) $1 AND checksum IS NULL"
)
_RECORD_MIGRATION: Final = (
    "INSERT INTO squidmesh.schema_migrations (version, checksum) VALUES ($1, $2)"
)
_RECORD_REPEATABLE: Final = """
INSERT INTO squidmesh.schema_repeatables (name, checksum) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = pg_catalog.now()
"""


async def _migrate(conn: Conn, scripts: Scripts) -> list[str]:
    in_transaction = conn.is_in_transaction()
    if in_transaction:
        # A savepoint: a failed read leaves the caller's transaction usable.
        async with conn.transaction():
            state = await _read_state(conn)
    else:
        state = await _read_state(conn)
    if _plan(state, scripts).empty:
        return []
    async with _locked(conn, in_transaction):
        # Under the lock: what a migrator we waited for has done.
        state = await _read_state(conn)
        plan = _plan(state, scripts)
        if in_transaction:
            outside = [m.version for m in plan.pending if not m.transactional]
            if outside:
                raise MigrationError(
                    outside[0],
                    "it runs outside a transaction (-- squidmesh: no-transaction) and "
                    "migrate() was called inside one; call it outside a transaction",
                )
        # Inside a caller's transaction only a savepoint can be opened, which
        # cannot choose its isolation level.
        isolation: Literal["read_committed"] | None = None if in_transaction else "read_committed"
        saved_search_path = await conn.fetchval(_SEARCH_PATH) if in_transaction else None
        applied: list[str] = []
        try:
            if plan.bookkeeping or plan.unrecorded:
                await _bookkeep(conn, state, plan, isolation)
            for m in plan.pending:
                if m.transactional:
                    await _apply_in_transaction(conn, m, isolation)
                else:
                    await _apply_outside_transaction(conn, m)
                applied.append(m.version)
            if plan.stale:
                await _apply_repeatables(conn, plan.stale, isolation)
                applied += [r.name for r in plan.stale]
        finally:
            if saved_search_path is not None and not conn.is_closed():
                # SET LOCAL in a released savepoint lasts until the caller's
                # transaction ends; give the caller its search_path back.
                await conn.execute(_SET_SEARCH_PATH, saved_search_path, True)
        return applied


@asynccontextmanager
async def _locked(conn: Conn, in_transaction: bool) -> AsyncIterator[None]:
    if in_transaction:
        # Held until the caller's transaction ends: what this call applies is
        # invisible to other migrators until then.
        await conn.execute(_XACT_LOCK, _LOCK_KEY)
        yield
        return
    # Each attempt is its own short implicit transaction, so between attempts
    # this session holds no snapshot that a CREATE INDEX CONCURRENTLY run by
    # the lock holder would have to wait for.
    delay = _POLL_FIRST_S
    try:
        while not await conn.fetchval(_TRY_LOCK, _LOCK_KEY):
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
    except BaseException:
        # Cancelled with an attempt in flight, which may have taken the lock:
        # a session lock left on a pooled connection would stop every later
        # migrator.
        if not conn.is_closed():
            await conn.execute(_UNLOCK_IF_HELD, _LOCK_KEY, _LOCK_KEY >> 32, _LOCK_KEY & 0xFFFFFFFF)
        raise
    try:
        yield
    finally:
        # A closed connection has lost the lock with its session.
        if not conn.is_closed():
            await conn.execute(_UNLOCK, _LOCK_KEY)


async def _refused(
    conn: Conn, name: str | None, path: str, exc: asyncpg.PostgresError
) -> MigrationError:
    """The MigrationError for a failed file, naming it (``path``) and the cause."""
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        user = await conn.fetchval("SELECT current_user")
        return MigrationError(
            name,
            f"role {user!r} may not apply it: {exc}. Run squidmesh.migrate() "
            "(or `python -m squidmesh migrate`) once as a role that owns the "
            "database or schema squidmesh, then connect as this role",
        )
    return MigrationError(name, f"{path}: {type(exc).__name__}: {exc}")


async def _bookkeep(
    conn: Conn, state: _State, plan: _Plan, isolation: Literal["read_committed"] | None
) -> None:
    # Only what is missing: even IF NOT EXISTS needs the privilege to create.
    try:
        async with conn.transaction(isolation=isolation):
            await conn.execute(_PIN_SEARCH_PATH)
            if not state.migrations_table:
                await conn.execute(_CREATE_MIGRATIONS_TABLE)
            elif not state.checksum_column:
                await conn.execute(_ADD_CHECKSUM_COLUMN)
            if not state.repeatables_table:
                await conn.execute(_CREATE_REPEATABLES_TABLE)
                await conn.execute(_COPY_GRANTS)
            # Trust on first use: these were applied by a squidmesh that
            # recorded no checksum; the shipped file is taken as what ran.
            if plan.unrecorded:
                await conn.executemany(
                    _RECORD_CHECKSUM, [(m.version, m.checksum) for m in plan.unrecorded]
                )
    except asyncpg.PostgresError as exc:
        raise await _refused(conn, None, "squidmesh's bookkeeping tables", exc) from exc


async def _apply_in_transaction(
    conn: Conn, m: Migration, isolation: Literal["read_committed"] | None
) -> None:
    try:
        async with conn.transaction(isolation=isolation):
            await conn.execute(_PIN_SEARCH_PATH)
            await conn.execute(m.sql)
            await conn.execute(_RECORD_MIGRATION, m.version, m.checksum)
    except asyncpg.PostgresError as exc:
        raise await _refused(conn, m.version, m.path, exc) from exc


async def _apply_outside_transaction(conn: Conn, m: Migration) -> None:
    statements = split_statements(m.sql)
    saved = await conn.fetchval(_SEARCH_PATH)
    # Session-level, as each statement is its own transaction; put back below.
    await conn.execute(_SET_SEARCH_PATH, "pg_catalog, pg_temp", False)
    done = 0
    try:
        for statement in statements:
            await conn.execute(statement)
            done += 1
        await conn.execute(_RECORD_MIGRATION, m.version, m.checksum)
    except asyncpg.PostgresError as exc:
        refused = await _refused(conn, m.version, m.path, exc)
        raise MigrationError(
            m.version,
            f"{refused.reason}. It runs outside a transaction: the {done} statement(s) "
            f"before the failing one (of {len(statements)}) stay committed and the migration "
            "is not recorded, so the next migrate() runs the whole file again. A failed "
            "CREATE INDEX CONCURRENTLY leaves an INVALID index, which the file drops first "
            "(DROP INDEX CONCURRENTLY IF EXISTS)",
        ) from exc
    finally:
        if not conn.is_closed():
            await conn.execute(_SET_SEARCH_PATH, saved, False)


async def _apply_repeatables(
    conn: Conn, stale: list[Repeatable], isolation: Literal["read_committed"] | None
) -> None:
    # One transaction: the functions change together or not at all.
    current = stale[0]
    try:
        async with conn.transaction(isolation=isolation):
            await conn.execute(_PIN_SEARCH_PATH)
            for current in stale:
                await conn.execute(current.sql)
                await conn.execute(_RECORD_REPEATABLE, current.name, current.checksum)
    except asyncpg.InvalidFunctionDefinitionError as exc:
        raise MigrationError(
            current.name,
            f"{current.path}: {exc}. CREATE OR REPLACE cannot change a function's return "
            "type or argument names and types: give the new shape a new name "
            "(squidmesh.name_v2) or drop the old function in a numbered migration",
        ) from exc
    except asyncpg.PostgresError as exc:
        raise await _refused(conn, current.name, current.path, exc) from exc
