-- The change feed and waiting (squidmesh/_feed.py, squidmesh/_watch.py).
-- The work is in the functions of sql/functions/feed.sql; these are the
-- calls. Names are schema-qualified (see runs.sql).

-- name: read_changes
-- $1..$3 the position (tick, window end or NULL, seq), $4 workflow or NULL,
-- $5 limit, $6 how old the newest tick must be before this read makes one
-- (NULL: never). One JSON text: an array of the function's rows, in its
-- order, each [tick, end, seq, change or null]; decoded by msgspec in one pass, so a user's uuid or
-- timestamptz codec never matters.
SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
           c.tick, c.end_tick, c.seq,
           CASE WHEN c.run_id IS NOT NULL THEN pg_catalog.json_build_array(
               c.run_id, c.workflow, c.run_version, c.from_status, c.to_status,
               squidmesh.utc_iso(c.at)) END)
       ORDER BY c.n)::pg_catalog.text
FROM squidmesh.read_changes($1, $2, $3, $4, $5, $6) WITH ORDINALITY
     AS c(tick, end_tick, seq, run_id, workflow, run_version, from_status, to_status, at, n);

-- name: feed_tick
-- A tick if one is due ($1: the newest must be at least this old); its id,
-- NULL when none was due, -1 when another ticker held the lock.
SELECT squidmesh.feed_tick($1);

-- name: newest_tick
-- Where a consumer that wants only changes from now on starts.
SELECT COALESCE(pg_catalog.max(t.id), 0) FROM squidmesh.feed_ticks t;

-- name: get_runs_by_ids
-- The runs whose ids are in $1 (those that exist), for the waiters the
-- watcher wakes: one statement for any number of them. The ids go in as
-- text[]: asyncpg knows that array type, while for uuid[] it would look the
-- type up with a query of its own on every new connection.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]::pg_catalog.uuid[]);

-- name: notify_probe
-- The watcher's check that its LISTEN connection hears what is sent through
-- the pool (a transaction-mode pooler would swallow it): $1 its probe channel.
SELECT pg_catalog.pg_notify($1, '');
