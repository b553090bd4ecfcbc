-- squidmesh schema, version 0005: the transition log, the ticks that cut it
-- into windows for the change feed, and the index behind claim_runs.
-- docs/guarantees.md says what the feed promises and why it is built this
-- way (PgQ's snapshot windows).
--
-- The log: one row per change of a run's status, written in the changing
-- transaction by the runs' triggers (sql/functions/feed.sql), whoever sends
-- the change. The log is the run's history (Run.transitions) as well as the
-- feed's source, so it lives as long as its run: prune_runs deletes both.
--   seq  drawn while the writer holds the run's row lock, so the changes of
--        one run have increasing seq; CACHE 1 (the default) keeps the
--        identity in call order across sessions.
--   xid  the writer's top-level transaction id: the window a change belongs
--        to is decided by which tick snapshots see this transaction.
-- Runs that exist when this migration runs have no rows here: their history
-- starts with their next status change. Backfilling every run would hold
-- the migration's locks for as long as it takes to write them.
CREATE TABLE squidmesh.run_transitions (
    run_id      uuid        NOT NULL,
    run_version bigint      NOT NULL,
    -- An identity, not a serial: PostgreSQL draws it without checking a
    -- privilege on its sequence, so a role that may write runs needs no
    -- grant beyond its table privileges.
    seq         bigint      NOT NULL GENERATED ALWAYS AS IDENTITY,
    xid         xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    workflow    text        NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    at          timestamptz NOT NULL,
    CONSTRAINT run_transitions_pkey PRIMARY KEY (run_id, run_version)
);
-- A window is a range of xid (small windows) or a walk by seq (a window that
-- covers much of the log, such as a consumer's first read): the planner
-- picks per read, read_changes plans each read with its own bounds.
CREATE INDEX run_transitions_xid_idx ON squidmesh.run_transitions (xid);
CREATE INDEX run_transitions_seq_idx ON squidmesh.run_transitions (seq);

-- A tick: a snapshot of which transactions had committed, taken by
-- squidmesh.feed_tick under an advisory lock so that a later tick's snapshot
-- always contains an earlier one's. Tick 0 is not stored: it is the empty
-- snapshot, where the feed starts. seq_mark is the largest seq committed at
-- the tick: a larger one means the log has grown since.
CREATE TABLE squidmesh.feed_ticks (
    id       bigint      PRIMARY KEY,
    snapshot pg_snapshot NOT NULL,
    seq_mark bigint      NOT NULL,
    made_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

-- The trigger functions live in sql/functions/feed.sql (repeatable); these
-- stubs exist so that the trigger can be created here.
CREATE FUNCTION squidmesh.runs_log_insert() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END; $$;
CREATE TRIGGER runs_log_insert
    AFTER INSERT ON squidmesh.runs
    FOR EACH ROW EXECUTE FUNCTION squidmesh.runs_log_insert();

-- A role that may read or write runs (an application role) gets the same
-- privileges on the new tables, or its first write after this upgrade
-- fails. Readers of the feed make ticks, so they may also insert them.
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
         WHERE c.oid OPERATOR(pg_catalog.=) 'squidmesh.runs'::pg_catalog.regclass
           AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
           AND a.privilege_type OPERATOR(pg_catalog.=) ANY ('{SELECT,INSERT,UPDATE,DELETE}')
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT %s ON squidmesh.run_transitions, squidmesh.feed_ticks TO %s',
            g.privilege_type, g.grantee);
        IF g.privilege_type OPERATOR(pg_catalog.=) 'SELECT' THEN
            EXECUTE pg_catalog.format('GRANT INSERT ON squidmesh.feed_ticks TO %s', g.grantee);
        END IF;
    END LOOP;
END
$$;

-- claim_runs: the oldest pending runs first. Only pending runs are in it,
-- so it stays as small as the queue.
CREATE INDEX runs_pending_claim_idx ON squidmesh.runs (inserted_at, id)
    WHERE status = 'pending';
