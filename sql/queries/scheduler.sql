-- Named queries of the scheduler (squidmesh/_scheduler.py): fire_due_triggers
-- reads the clock and the state of the cron triggers that may be due, then
-- creates the runs of their due ticks and moves their state forward in one
-- statement. The conventions of runs.sql hold here too: every name
-- schema-qualified, JSON in as text, runs out as squidmesh.run_json(r)::text.

-- name: scheduler_clock
-- The database clock: the default `now` of fire_due_triggers, so that every
-- scheduler process reads ticks off the same clock.
SELECT pg_catalog.clock_timestamp();

-- name: read_cron_state
-- The last tick fired of each of the (workflow, trigger) pairs $1, $2 that
-- has one; a pair without a row has never fired. The primary key serves
-- each pair.
SELECT s.workflow, s.trigger, s.last_tick
FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]))
     AS k (workflow, trigger)
JOIN squidmesh.cron_state s
  ON s.workflow OPERATOR(pg_catalog.=) k.workflow
 AND s.trigger OPERATOR(pg_catalog.=) k.trigger;

-- name: fire_cron_ticks
-- Create the runs of due ticks and move their triggers' state forward, in
-- one statement (so one transaction: a tick whose run was created is never
-- left unrecorded). The runs: $1 ids, $2 workflows, $3 triggers, $4 payloads
-- (JSON text), $5 entry steps, $6 idempotency keys (cron:<trigger>:<tick>),
-- $7 fingerprints, one array element per run, as insert_run_keyed writes a
-- run. The state: $8 workflows, $9 triggers, $10 the last tick of each (an
-- ISO-8601 instant). Every array is a text[]: asyncpg encodes text[] (and
-- oid[]) without asking the server, but learns the type of any other array
-- with a query of its own on each new connection, one more round trip that
-- a hostile search_path even breaks.
-- Returns the runs created; a tick whose key another caller's run already
-- holds is passed over (ON CONFLICT DO NOTHING waits for that caller to
-- commit first), so each tick yields one run however many callers fire it.
--
-- Deadlocks: a key another caller is inserting makes this statement wait
-- for that caller's transaction, and the state upsert locks rows. Every
-- caller sends its runs sorted by (workflow, trigger, tick) and inserts them
-- in that order (ORDER BY the ordinality), then upserts the state sorted by
-- (workflow, trigger) (the data-modifying CTE the outer query does not read
-- runs to completion after the one it reads): callers take what they wait
-- for in one global order, so none waits for one that waits for it.
WITH due AS (
    SELECT d.id, d.workflow, d.trigger, d.payload, d.entry_step, d.key, d.fingerprint, d.n
    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]),
                    pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]),
                    pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]),
                    pg_catalog.unnest($7::pg_catalog.text[]))
         WITH ORDINALITY AS d (id, workflow, trigger, payload, entry_step, key, fingerprint, n)
), created AS (
    INSERT INTO squidmesh.runs AS r
        (id, workflow, trigger, status, payload, context, current_step,
         idempotency_key, idempotency_fingerprint, inserted_at, updated_at)
    SELECT d.id::pg_catalog.uuid, d.workflow, d.trigger, 'pending', d.payload::pg_catalog.jsonb,
           '{}'::pg_catalog.jsonb, d.entry_step, d.key, d.fingerprint, c.ts, c.ts
    FROM due d CROSS JOIN LATERAL (SELECT pg_catalog.clock_timestamp() AS ts) c
    ORDER BY d.n
    ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING r.id, squidmesh.run_json(r)::pg_catalog.text AS run
), advanced AS (
    INSERT INTO squidmesh.cron_state AS s (workflow, trigger, last_tick, fired_at)
    SELECT t.workflow, t.trigger, t.last_tick::pg_catalog.timestamptz, pg_catalog.clock_timestamp()
    FROM ROWS FROM (pg_catalog.unnest($8::pg_catalog.text[]), pg_catalog.unnest($9::pg_catalog.text[]),
                    pg_catalog.unnest($10::pg_catalog.text[])) AS t (workflow, trigger, last_tick)
    ORDER BY t.workflow, t.trigger
    ON CONFLICT (workflow, trigger) DO UPDATE
    SET last_tick = GREATEST(s.last_tick, excluded.last_tick),
        fired_at = CASE WHEN excluded.last_tick OPERATOR(pg_catalog.>) s.last_tick
                        THEN excluded.fired_at ELSE s.fired_at END
)
SELECT c.id, c.run FROM created c;
