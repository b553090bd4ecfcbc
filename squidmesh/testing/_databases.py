"""One migrated database per test session, reset between tests (private).

The engine behind the pytest plugin; it knows nothing about pytest.

:meth:`TestDatabases.start` creates ``t_squidmesh_<run>_template``, runs
``squidmesh.migrate`` in it, clones it once into ``t_squidmesh_<run>_shared``
and records the clone's baseline: its schemas and relations, the tables the
template leaves empty and the ones it fills (``schema_migrations``), its
sequences, and a fingerprint of its catalogs.

:meth:`TestDatabases.shared` hands the shared database to the next test,
reset to the template's state:

1. Other sessions on it are ended: a test that leaked a connection, maybe
   inside a transaction holding locks, cannot reach the next one.
2. Whether the catalogs, or the rows of the tables the template fills,
   changed since the last reset is read from PostgreSQL's write counters of
   those tables (``pg_stat_get_tuples_*``), which every session flushes
   before it ends. Unchanged (almost always): on to 5, all in one round trip
   on a connection opened when the previous test released the database.
   Every ``_FULL_CHECK_EVERY`` resets, step 3 runs anyway.
3. Otherwise the catalog fingerprint decides. When it differs, the schemas
   and relations (tables, views, sequences) that are not in the baseline are
   dropped and the database's settings reset, which undoes what tests
   usually do (a table or a schema of their own, ``ALTER DATABASE ... SET``),
   and the fingerprint is compared again.
4. If it still differs (a changed grant, one of squidmesh's objects or its
   recorded migrations, a function or type a test created in an existing
   schema...), the database is dropped and cloned
   again from the template, and the test that did it is remembered in
   :attr:`TestDatabases.rebuilt_after`, so that it can be marked to get a
   database of its own (:meth:`TestDatabases.fresh`) instead.
5. The tables the template leaves empty are emptied and the sequences set
   back. Emptying is ``DELETE`` with triggers off (``session_replication_role
   = replica``, so neither foreign keys nor user triggers care about the
   order): well under a millisecond, where ``TRUNCATE`` takes 7 ms or more
   because it creates new files for every table and index. ``TRUNCATE`` is
   used instead (after step 3) when the tables hold more than
   ``_TRUNCATE_ABOVE_ROWS`` live and dead rows (deleted rows stay in the
   files until vacuum; ``TRUNCATE`` gives the space back, and is faster than
   a big ``DELETE``), when a test or autovacuum analysed them (the planner
   statistics are then removed too: plans must not depend on what earlier
   tests wrote), and when the role is not a superuser; such a role also
   takes step 3 every time, since it may not end, nor trust the counters
   of, other roles' sessions (nor remove planner statistics).

Everything runs on a private event loop in a daemon thread, so neither the
loop scope nor the mode of pytest-asyncio matters, and the calling thread's
event loop is never touched.

Database names carry a random run id; the run holds a session-level
advisory lock on it for as long as its databases exist, so that a later run
on the same server can drop the databases of runs that died without cleaning
up (``SIGKILL``, a crashed interpreter), and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import threading
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg

from .. import migrate
from ._server import quote_ident, with_database

T = TypeVar("T")

#: Prefix of every database this module creates: ``t_squidmesh_<run>_...``.
PREFIX: Final = "t_squidmesh_"

# Advisory lock (two int4 keys): (_LOCK_CLASS, run id) is held by a live run.
_LOCK_CLASS: Final = 0x53514D54  # "SQMT"

_TRUNCATE_ABOVE_ROWS: Final = 10_000
# Every so many resets the full check runs anyway (fingerprint, table size).
_FULL_CHECK_EVERY: Final = 50
_CALL_TIMEOUT_S: Final = 300.0
_LOCK_TIMEOUT: Final = "10s"
_USER_SCHEMAS: Final = """nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND nspname !~ '^pg_(toast_)?temp_'"""

# The parts of a database's catalogs a test could change and the next test
# would notice: objects in the schemas users and extensions write to (not
# pg_catalog, information_schema, pg_toast, nor temporary schemas, which die
# with their session), their columns, defaults, constraints, triggers,
# functions, types, operators, rules, policies, comments and privileges,
# the database's own settings and privileges, and the number of the rarer
# objects. Names and definitions only: nothing that TRUNCATE, VACUUM or
# ANALYZE change.
_CATALOG_FINGERPRINT: Final = """
WITH ns AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND nspname !~ '^pg_(toast_)?temp_'
), rel AS (
    SELECT c.oid, ns.nspname, c.relname
      FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
)
SELECT pg_catalog.md5(pg_catalog.string_agg(x, E'\\n' ORDER BY x)) FROM (
  SELECT ROW('n', n.nspname, n.nspowner, n.nspacl)::text AS x
    FROM pg_catalog.pg_namespace n JOIN ns USING (oid)
  UNION ALL
  SELECT ROW('c', rel.nspname, rel.relname, c.relkind, c.relowner, c.relacl, c.reloptions,
             c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
             c.relispartition, c.relnatts, c.relchecks, c.relhastriggers, c.relhasrules)::text
    FROM pg_catalog.pg_class c JOIN rel USING (oid)
  UNION ALL
  SELECT ROW('a', rel.nspname, rel.relname, a.attnum, a.attname, a.atttypid, a.atttypmod,
             a.attnotnull, a.atthasdef, a.attisdropped, a.attidentity, a.attgenerated,
             a.attacl, a.attoptions)::text
    FROM pg_catalog.pg_attribute a JOIN rel ON rel.oid = a.attrelid WHERE a.attnum > 0
  UNION ALL
  SELECT ROW('d', rel.nspname, rel.relname, d.adnum,
             pg_catalog.pg_get_expr(d.adbin, d.adrelid))::text
    FROM pg_catalog.pg_attrdef d JOIN rel ON rel.oid = d.adrelid
  UNION ALL
  SELECT ROW('k', ns.nspname, co.conname, co.contype, co.conrelid, co.contypid,
             co.condeferrable, co.condeferred, co.convalidated,
             pg_catalog.pg_get_constraintdef(co.oid))::text
    FROM pg_catalog.pg_constraint co JOIN ns ON ns.oid = co.connamespace
  UNION ALL
  SELECT ROW('t', rel.nspname, rel.relname, t.tgname, t.tgenabled, t.tgfoid, t.tgtype)::text
    FROM pg_catalog.pg_trigger t JOIN rel ON rel.oid = t.tgrelid
  UNION ALL
  SELECT ROW('p', ns.nspname, p.proname, p.proargtypes, p.prokind, p.proowner, p.proacl,
             p.proconfig, p.prosecdef, p.provolatile, p.prorettype,
             pg_catalog.md5(p.prosrc))::text
    FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL
  SELECT ROW('y', ns.nspname, t.typname, t.typtype, t.typowner, t.typacl, t.typnotnull)::text
    FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
  UNION ALL
  SELECT ROW('o', ns.nspname, o.oprname, o.oprleft, o.oprright, o.oprcode)::text
    FROM pg_catalog.pg_operator o JOIN ns ON ns.oid = o.oprnamespace
  UNION ALL
  SELECT ROW('q', rel.nspname, rel.relname, s.seqincrement, s.seqstart, s.seqmin, s.seqmax,
             s.seqcycle)::text
    FROM pg_catalog.pg_sequence s JOIN rel ON rel.oid = s.seqrelid
  UNION ALL
  SELECT ROW('r', rel.nspname, rel.relname, r.rulename, r.ev_enabled,
             pg_catalog.md5(r.ev_action::text))::text
    FROM pg_catalog.pg_rewrite r JOIN rel ON rel.oid = r.ev_class
  UNION ALL
  SELECT ROW('l', rel.nspname, rel.relname, pol.polname, pol.polcmd, pol.polpermissive,
             pol.polroles)::text
    FROM pg_catalog.pg_policy pol JOIN rel ON rel.oid = pol.polrelid
  UNION ALL
  SELECT ROW('m', m.classoid, m.objoid, m.objsubid, pg_catalog.md5(m.description))::text
    FROM pg_catalog.pg_description m WHERE m.objoid >= 16384
  UNION ALL
  SELECT ROW('x', e.extname, e.extversion, e.extconfig)::text FROM pg_catalog.pg_extension e
  UNION ALL
  SELECT ROW('e', ev.evtname, ev.evtevent, ev.evtenabled, ev.evtfoid)::text
    FROM pg_catalog.pg_event_trigger ev
  UNION ALL
  SELECT ROW('f', da.defaclrole, da.defaclnamespace, da.defaclobjtype, da.defaclacl)::text
    FROM pg_catalog.pg_default_acl da
  UNION ALL
  SELECT ROW('s', s.setrole, s.setconfig)::text
    FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
   WHERE d.datname = pg_catalog.current_database()
  UNION ALL
  SELECT ROW('b', d.datdba, d.datacl, d.datallowconn, d.datconnlimit, d.datistemplate)::text
    FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
  UNION ALL
  SELECT ROW('#', (SELECT count(*) FROM pg_catalog.pg_collation),
             (SELECT count(*) FROM pg_catalog.pg_conversion),
             (SELECT count(*) FROM pg_catalog.pg_cast),
             (SELECT count(*) FROM pg_catalog.pg_opclass),
             (SELECT count(*) FROM pg_catalog.pg_opfamily),
             (SELECT count(*) FROM pg_catalog.pg_ts_config),
             (SELECT count(*) FROM pg_catalog.pg_ts_dict),
             (SELECT count(*) FROM pg_catalog.pg_language),
             (SELECT count(*) FROM pg_catalog.pg_foreign_data_wrapper),
             (SELECT count(*) FROM pg_catalog.pg_foreign_server),
             (SELECT count(*) FROM pg_catalog.pg_publication),
             (SELECT count(*) FROM pg_catalog.pg_statistic_ext),
             (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata),
             (SELECT count(*) FROM pg_catalog.pg_inherits))::text
) parts
"""

# The system catalogs whose write counters tell whether DDL ran: all of
# pg_catalog's tables but the statistics ANALYZE writes and large objects' data.
_CATALOG_OIDS: Final = """
SELECT pg_catalog.array_agg(c.oid ORDER BY c.oid)
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind = 'r'
   AND c.relname NOT IN ('pg_statistic', 'pg_statistic_ext_data', 'pg_largeobject')
"""

# Other sessions on this database: leaked by the previous test, perhaps
# inside a transaction holding locks. Ended (waiting up to 5 s for each to
# exit, which is also when it flushes its statistics); {mine} narrows it to
# this role's own sessions when it may not end others.
# (pg_stat_get_activity rather than the view: no joins, half the time in a
# new session.)
_OTHER_SESSIONS: Final = """
SELECT a.pid FROM pg_catalog.pg_stat_get_activity(NULL) a
 WHERE a.datid = (SELECT d.oid FROM pg_catalog.pg_database d
                   WHERE d.datname = pg_catalog.current_database())
   AND a.pid <> pg_catalog.pg_backend_pid()
   AND a.backend_type = 'client backend'{mine}"""

# Rows written to the system catalogs (and to the tables the template fills,
# which DML could change too), ever, as far as statistics know.
_CATALOG_WRITES: Final = """
SELECT pg_catalog.sum(pg_catalog.pg_stat_get_tuples_inserted(c)
                      + pg_catalog.pg_stat_get_tuples_updated(c)
                      + pg_catalog.pg_stat_get_tuples_deleted(c))
  FROM pg_catalog.unnest('{oids}'::pg_catalog.oid[]) c"""

# What a test created that the baseline does not have: schemas, and relations
# in the baseline's schemas (the ones in a new schema go with it).
_CREATED: Final = f"""
SELECT 'SCHEMA', pg_catalog.quote_ident(n.nspname)
  FROM pg_catalog.pg_namespace n
 WHERE {_USER_SCHEMAS}
   AND pg_catalog.quote_ident(n.nspname) <> ALL ($1::text[])
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND pg_catalog.quote_ident(n.nspname) = ANY ($1::text[])
   AND pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
       <> ALL ($2::text[])
"""

# The roles with settings of their own in this database (NULL: the database's
# own, ALTER DATABASE ... SET).
_DATABASE_SETTINGS: Final = """
SELECT CASE WHEN s.setrole = 0 THEN NULL
            ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(s.setrole)) END
  FROM pg_catalog.pg_db_role_setting s
  JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
 WHERE d.datname = pg_catalog.current_database()
"""

# Every schema, and every relation of each (quoted, qualified).
_SCHEMAS_AND_RELATIONS: Final = f"""
SELECT pg_catalog.quote_ident(n.nspname),
       (SELECT coalesce(pg_catalog.array_agg(pg_catalog.quote_ident(n.nspname) || '.'
                                             || pg_catalog.quote_ident(c.relname)), '{{}}')
          FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid)
  FROM pg_catalog.pg_namespace n
 WHERE {_USER_SCHEMAS}
"""

# The tables and sequences of those schemas, minus the ones an extension owns
# (its configuration is its business).
_DATA_OBJECTS: Final = f"""
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
       c.relkind::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'S')
   AND NOT c.relispartition
   AND {_USER_SCHEMAS}
   AND NOT EXISTS (
       SELECT FROM pg_catalog.pg_depend dep
        WHERE dep.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          AND dep.objid = c.oid AND dep.deptype = 'e')
 ORDER BY 1
"""


@dataclass(frozen=True)
class _Baseline:
    """What the shared database looks like when it is clean."""

    fingerprint: str
    # Every schema and relation (quoted, qualified): what a test adds is dropped.
    schemas: tuple[str, ...]
    relations: tuple[str, ...]
    # Tables the template leaves empty: emptied at every reset.
    empty_tables: tuple[str, ...]
    empty_table_oids: tuple[int, ...]
    # Tables the template fills (squidmesh's bookkeeping): checked, never emptied.
    filled_tables: tuple[str, ...]
    # (sequence, last_value, is_called), set back at every reset.
    sequences: tuple[tuple[str, int, bool], ...]
    # The system catalogs and the filled tables: what their write counters watch.
    watched_oids: tuple[int, ...]


class _LoopThread:
    """An event loop running in a daemon thread; :meth:`call` runs a coroutine there."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="squidmesh-testing", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()


class TestDatabases:
    """The template, the shared database and the fresh ones of one test session."""

    __test__ = False  # not a test class, whatever pytest's name patterns say

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.run_id = secrets.randbits(31)
        self.template = f"{PREFIX}{self.run_id:08x}_template"
        self.shared_name = f"{PREFIX}{self.run_id:08x}_shared"
        #: Tests after which the shared database had to be rebuilt, in order.
        self.rebuilt_after: list[str] = []
        self._numbers = itertools.count(1)
        self._fresh: set[str] = set()
        self._loop: _LoopThread | None = None
        self._admin: asyncpg.Connection | None = None
        self._baseline: _Baseline | None = None
        self._superuser = False
        self._track_counts = False
        # Catalog writes counted when the shared database was last seen clean;
        # None: unknown, check the fingerprint.
        self._clean_at: int | None = None
        self._fast_resets = 0
        self._used_by: str | None = None  # the last test given the shared database
        # A connection opened while no test uses the shared database, for the
        # next reset (connecting is half of what a reset costs).
        self._next_conn: asyncio.Task[asyncpg.Connection] | None = None

    # -- the calling thread's side -------------------------------------------

    def start(self) -> TestDatabases:
        self._loop = _LoopThread()
        try:
            self._call(self._start())
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        return self

    def shared(self, user: str) -> str:
        """Reset the shared database for ``user`` (a test id) and return its DSN.

        Call :meth:`release` when the test is done with it.
        """
        if self._used_by is not None and not self._call(self._reset()):
            self.rebuilt_after.append(self._used_by)
        self._used_by = user
        return with_database(self.admin_dsn, self.shared_name)

    def release(self) -> None:
        """The test given the shared database is done: connect for the next reset now."""
        loop = self._loop
        if loop is not None and self._next_conn is None:
            loop.call(self._open_next())

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        """A database of its own for one test, cloned from the template, then dropped."""
        name = f"{PREFIX}{self.run_id:08x}_{next(self._numbers)}"
        self._fresh.add(name)
        try:
            self._call(self._clone(name))
            yield with_database(self.admin_dsn, name)
        finally:
            self._call(self._drop(name))
            self._fresh.discard(name)

    def close(self) -> None:
        """Drop every database of this run. Safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            if self._used_by is not None and self._baseline is not None:
                # Whether the last test to use it would have needed a rebuild.
                with contextlib.suppress(Exception):
                    if not loop.call(self._reset(rebuild=False)):
                        self.rebuilt_after.append(self._used_by)
            loop.call(self._close())
        finally:
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the squidmesh test databases are closed")
        return self._loop.call(coro)

    # -- the loop thread's side ----------------------------------------------

    async def _admin_conn(self) -> asyncpg.Connection:
        if self._admin is None or self._admin.is_closed():
            self._admin = await asyncpg.connect(self.admin_dsn)
            # Held until this connection closes: the run's databases are alive.
            await self._admin.execute(
                "SELECT pg_catalog.pg_advisory_lock($1::int4, $2::int4)", _LOCK_CLASS, self.run_id
            )
        return self._admin

    async def _start(self) -> None:
        admin = await self._admin_conn()
        settings = await admin.fetchrow(
            "SELECT current_setting('is_superuser'), current_setting('track_counts')"
        )
        assert settings is not None
        self._superuser = settings[0] == "on"
        self._track_counts = settings[1] == "on"
        await self._drop_abandoned(admin)
        await admin.execute(f"CREATE DATABASE {quote_ident(self.template)}")
        conn = await asyncpg.connect(with_database(self.admin_dsn, self.template))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await self._clone(self.shared_name)
        conn = await self._connect_shared()
        try:
            self._baseline = await self._read_baseline(conn)
        finally:
            await conn.close()

    async def _drop_abandoned(self, admin: asyncpg.Connection) -> None:
        """Drop the databases of earlier runs whose lock nobody holds any more."""
        rows = await admin.fetch(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE $1",
            PREFIX.replace("_", r"\_") + "%",
        )
        alive = {
            int(r[0])
            for r in await admin.fetch(
                "SELECT objid::bigint FROM pg_catalog.pg_locks"
                " WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objsubid = 2",
                _LOCK_CLASS,
            )
        }
        for (name,) in rows:
            try:
                run_id = int(name[len(PREFIX) :].split("_", 1)[0], 16)
            except ValueError:
                continue
            if run_id not in alive:
                await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    async def _open_next(self) -> None:
        self._next_conn = asyncio.ensure_future(self._connect_shared())

    async def _take_next(self) -> asyncpg.Connection:
        """The connection :meth:`release` opened, or a new one."""
        task, self._next_conn = self._next_conn, None
        if task is not None:
            try:
                conn = await task
                if not conn.is_closed():
                    return conn
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass  # the database was rebuilt or the server restarted meanwhile
        return await self._connect_shared()

    async def _connect_shared(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            with_database(self.admin_dsn, self.shared_name),
            # Whatever a test made the database's defaults.
            server_settings={
                "application_name": "squidmesh-testing-reset",
                "search_path": "pg_catalog, pg_temp",
                "default_transaction_isolation": "read committed",
                "default_transaction_read_only": "off",
                "statement_timeout": "0",
                "idle_in_transaction_session_timeout": "0",
            },
        )

    async def _read_baseline(self, conn: asyncpg.Connection) -> _Baseline:
        empty: list[str] = []
        filled: list[str] = []
        sequences: list[tuple[str, int, bool]] = []
        for name, kind in await conn.fetch(_DATA_OBJECTS):
            if kind == "S":
                row = await conn.fetchrow(f"SELECT last_value, is_called FROM {name}")
                assert row is not None
                sequences.append((name, int(row[0]), bool(row[1])))
            elif await conn.fetchval(f"SELECT EXISTS (SELECT FROM {name})"):
                filled.append(name)
            else:
                empty.append(name)
        schemas: list[str] = []
        relations: list[str] = []
        for schema, names in await conn.fetch(_SCHEMAS_AND_RELATIONS):
            schemas.append(schema)
            relations.extend(names)
        filled_sql = _filled_fingerprint_sql(filled)
        fingerprint = await conn.fetchval(f"SELECT ({_CATALOG_FINGERPRINT}){filled_sql}")
        return _Baseline(
            fingerprint=str(fingerprint),
            schemas=tuple(sorted(schemas)),
            relations=tuple(sorted(relations)),
            empty_tables=tuple(empty),
            empty_table_oids=tuple(
                [await conn.fetchval(f"SELECT {_literal(n)}::regclass::oid") for n in empty]
            ),
            filled_tables=tuple(filled),
            sequences=tuple(sequences),
            watched_oids=(
                *await conn.fetchval(_CATALOG_OIDS),
                *[await conn.fetchval(f"SELECT {_literal(n)}::regclass::oid") for n in filled],
            ),
        )

    # -- the reset -----------------------------------------------------------

    async def _reset(self, *, rebuild: bool = True) -> bool:
        """Bring the shared database back to the template's state.

        Returns False when only a rebuild could, which ``rebuild=False`` skips.
        """
        baseline = self._baseline
        assert baseline is not None
        conn = await self._take_next()
        try:
            self._fast_resets += 1
            if rebuild and self._clean_at is not None and self._fast_resets < _FULL_CHECK_EVERY:
                try:
                    await conn.execute(self._fast_reset_sql(baseline, self._clean_at))
                    return True
                except asyncpg.PostgresError:
                    pass  # the catalogs changed: look closer
            self._fast_resets = 0
            # Ending the other sessions first flushes their catalog write counts.
            writes = await conn.fetchval(
                f"SELECT ({_CATALOG_WRITES.format(oids=_oid_array(baseline))}"
                " WHERE ended.n >= 0)"
                f" FROM (SELECT count(pg_catalog.pg_terminate_backend(pid, 5000)) AS n"
                f"       FROM ({self._other_sessions_sql()}) others) ended"
            )
            clean = await self._matches(conn, baseline)
            undone = False
            if not clean:
                undone = await self._undo(conn, baseline)
                clean = undone and await self._matches(conn, baseline)
            if clean and not rebuild:
                return True
            if clean:
                grown = await conn.fetchval(_grown_sql(baseline, superuser=self._superuser))
                truncate = bool(grown) or not self._superuser
                try:
                    await conn.execute(
                        _clear_sql(baseline, truncate=truncate, superuser=self._superuser)
                    )
                except asyncpg.LockNotAvailableError:
                    pass  # held by a session this role may not end: rebuild
                else:
                    # Counted before this reset's own catalog writes (undoing,
                    # TRUNCATE): when it made some, count again next time.
                    fast = self._superuser and self._track_counts and not (truncate or undone)
                    self._clean_at = int(writes or 0) if fast else None
                    return True
        finally:
            await conn.close()
        self._clean_at = None
        if rebuild:
            await self._drop(self.shared_name)
            await self._clone(self.shared_name)
        return False

    def _other_sessions_sql(self) -> str:
        mine = "" if self._superuser else "\n   AND a.usesysid = current_user::regrole::oid"
        return _OTHER_SESSIONS.format(mine=mine)

    def _fast_reset_sql(self, baseline: _Baseline, clean_at: int) -> str:
        """One round trip: end the others, check the catalogs, empty the tables."""
        writes = _CATALOG_WRITES.format(oids=_oid_array(baseline))
        body = [
            "PERFORM pg_catalog.pg_terminate_backend(pid, 5000)"
            f" FROM ({self._other_sessions_sql()}) others",
            f"IF ({writes}) IS DISTINCT FROM {clean_at} THEN\n"
            "  RAISE EXCEPTION 'the catalogs changed';\nEND IF",
            f"IF ({_grown_sql(baseline, superuser=True)}) THEN\n"
            "  RAISE EXCEPTION 'the tables grew or were analysed';\nEND IF",
            *_clear_statements(baseline, truncate=False, perform=True, superuser=True),
        ]
        return "DO $squidmesh$\nBEGIN\n" + ";\n".join(body) + ";\nEND\n$squidmesh$"

    async def _matches(self, conn: asyncpg.Connection, baseline: _Baseline) -> bool:
        filled_sql = _filled_fingerprint_sql(baseline.filled_tables)
        fingerprint = await conn.fetchval(f"SELECT ({_CATALOG_FINGERPRINT}){filled_sql}")
        return bool(fingerprint == baseline.fingerprint)

    async def _undo(self, conn: asyncpg.Connection, baseline: _Baseline) -> bool:
        """Undo what tests usually do; False if there was nothing of that or it failed.

        Drops the schemas and relations a test created, and resets the
        settings it gave the database (``ALTER DATABASE ... SET``, also per
        role): a clone starts with none.
        """
        created = await conn.fetch(_CREATED, baseline.schemas, baseline.relations)
        statements = [f"DROP {kind} IF EXISTS {name} CASCADE" for kind, name in created]
        database = quote_ident(self.shared_name)
        for (role,) in await conn.fetch(_DATABASE_SETTINGS):
            if role is None:
                statements.append(f"ALTER DATABASE {database} RESET ALL")
            else:
                statements.append(f"ALTER ROLE {role} IN DATABASE {database} RESET ALL")
        if not statements:
            return False
        script = ";\n".join([f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'", *statements])
        try:
            await conn.execute(f"BEGIN;\n{script};\nCOMMIT;")
        except asyncpg.PostgresError:
            return False
        return True

    # -- whole databases -----------------------------------------------------

    async def _clone(self, name: str) -> None:
        admin = await self._admin_conn()
        await admin.execute(
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(self.template)}"
        )

    async def _drop(self, name: str) -> None:
        admin = await self._admin_conn()
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    async def _close(self) -> None:
        if self._next_conn is not None:
            with contextlib.suppress(Exception):
                await (await self._next_conn).close()
            self._next_conn = None
        try:
            for name in [*self._fresh, self.shared_name, self.template]:
                await self._drop(name)
        finally:
            if self._admin is not None:
                await self._admin.close()  # releases the advisory lock
                self._admin = None


def _literal(text: str) -> str:
    """Quote ``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _oid_array(baseline: _Baseline) -> str:
    return "{" + ",".join(str(oid) for oid in baseline.watched_oids) + "}"


def _filled_fingerprint_sql(filled_tables: Sequence[str]) -> str:
    """`` || md5(rows)`` for each table the template fills: their rows must not change."""
    return "".join(
        " || (SELECT pg_catalog.md5(coalesce(pg_catalog.string_agg(t::text, E'\\n'"
        f" ORDER BY t::text), '')) FROM {name} t)"
        for name in filled_tables
    )


def _table_oids(baseline: _Baseline) -> str:
    return "'{" + ",".join(str(oid) for oid in baseline.empty_table_oids) + "}'::pg_catalog.oid[]"


def _grown_sql(baseline: _Baseline, *, superuser: bool) -> str:
    """Whether the tables to empty hold many rows, live or dead, or planner statistics."""
    tables = _table_oids(baseline)
    rows = (
        "SELECT coalesce(pg_catalog.sum(pg_catalog.pg_stat_get_live_tuples(t)"
        f" + pg_catalog.pg_stat_get_dead_tuples(t)), 0) > {_TRUNCATE_ABOVE_ROWS}"
        f" FROM pg_catalog.unnest({tables}) t"
    )
    if not superuser:  # pg_statistic is for superusers only
        return rows
    return (
        f"SELECT ({rows}) OR EXISTS (SELECT FROM pg_catalog.pg_statistic"
        f" WHERE starelid = ANY ({tables}))"
    )


def _clear_statements(
    baseline: _Baseline, *, truncate: bool, perform: bool, superuser: bool
) -> list[str]:
    """Empty the tables the template leaves empty; set the sequences back."""
    select = "PERFORM" if perform else "SELECT"
    set_local = f"{select} pg_catalog.set_config('{{}}', '{{}}', true)"
    statements = [set_local.format("lock_timeout", _LOCK_TIMEOUT)]
    if baseline.empty_tables:
        if truncate:
            statements.append("TRUNCATE " + ", ".join(baseline.empty_tables))
            if superuser:  # what ANALYZE learnt from earlier tests' rows
                tables = _table_oids(baseline)
                statements.append(
                    "DELETE FROM pg_catalog.pg_statistic WHERE starelid = ANY"
                    f" ({tables} || ARRAY(SELECT indexrelid FROM pg_catalog.pg_index"
                    f" WHERE indrelid = ANY ({tables})))"
                )
        else:
            statements.append(set_local.format("session_replication_role", "replica"))
            statements += [f"DELETE FROM {name}" for name in baseline.empty_tables]
    statements += [
        f"{select} pg_catalog.setval({_literal(name)}::pg_catalog.regclass, {value},"
        f" {str(called).lower()})"
        for name, value, called in baseline.sequences
    ]
    return statements


def _clear_sql(baseline: _Baseline, *, truncate: bool, superuser: bool) -> str:
    statements = _clear_statements(baseline, truncate=truncate, perform=False, superuser=superuser)
    return "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;"
