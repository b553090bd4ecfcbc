-- Repeatable: squidmesh.migrate() runs this file again, after the numbered
-- migrations, whenever its checksum changes, in one transaction with
-- search_path = pg_catalog, pg_temp. CREATE OR REPLACE cannot change a
-- function's return type or its argument names and types: such a change needs
-- a new name or a numbered migration that drops the old function.
--
-- The change feed's functions (the tables are in sql/migrations/0005_feed.sql;
-- what the feed promises is docs/guarantees.md):
--   runs_log_insert  trigger: a new run's first transition (from NULL);
--                    status changes by UPDATE are logged by runs_write;
--   feed_tick        records a snapshot of committed transactions;
--   read_changes     the changes of one window between two ticks, by seq.

-- AFTER INSERT, not BEFORE: an insert that ON CONFLICT DO NOTHING skips (an
-- idempotent create that found its key) fires no AFTER trigger, so it logs
-- nothing.
CREATE OR REPLACE FUNCTION squidmesh.runs_log_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO squidmesh.run_transitions
        (run_id, run_version, workflow, from_status, to_status, at)
    VALUES (NEW.id, NEW.version, NEW.workflow, NULL, NEW.status, NEW.updated_at);
    RETURN NULL;
END;
$$;

-- A tick, when one is due: the newest tick is at least p_every old, and the
-- log has grown since it or a transaction that was running at it has ended
-- (its changes become visible only in a later snapshot). Returns the new
-- tick's id, NULL when none was due, -1 when another ticker held the lock.
--
-- Ticks must be ordered by their snapshots: the advisory lock lets one
-- ticker at a time through (the others return -1 at once: the winner's
-- tick serves them, unless it took its snapshot before their commit), and the INSERT statement takes its snapshot after
-- the lock is held, so it sees the previous ticker's commit. That needs a
-- fresh snapshot per statement: READ COMMITTED (40001 otherwise, and
-- squidmesh runs it again at READ COMMITTED).
--
-- The NOTIFY wakes the listeners of other processes. It is sent here, at
-- most once per tick, and never by a transaction that changes a run: a
-- NOTIFY takes a lock at commit that every notifying transaction of the
-- cluster queues for.
CREATE OR REPLACE FUNCTION squidmesh.feed_tick(p_every interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    made bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'squidmesh.feed_tick needs READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = '40001';
    END IF;
    IF NOT pg_try_advisory_xact_lock(7239001485266337281) THEN
        RETURN -1;
    END IF;
    INSERT INTO squidmesh.feed_ticks (id, snapshot, seq_mark)
    SELECT COALESCE(t.id, 0) + 1, pg_current_snapshot(), s.mark
    FROM (SELECT COALESCE(max(l.seq), 0) AS mark FROM squidmesh.run_transitions l) s
    LEFT JOIN LATERAL (SELECT * FROM squidmesh.feed_ticks ORDER BY id DESC LIMIT 1) t ON true
    WHERE t.id IS NULL
       OR (t.made_at <= clock_timestamp() - p_every
           AND (s.mark > t.seq_mark
                OR EXISTS (SELECT FROM pg_snapshot_xip(t.snapshot) x
                           WHERE pg_visible_in_snapshot(x, pg_current_snapshot()))))
    RETURNING id INTO made;
    IF made IS NOT NULL THEN
        PERFORM pg_notify('squidmesh_feed', made::text);
    END IF;
    RETURN made;
END;
$$;

-- The changes after a position, in one call. Tick 0 is the empty snapshot
-- (not stored). A position is (p_tick,
-- p_end, p_seq): the changes of the window between ticks p_tick and p_end
-- with a seq above p_seq have not been delivered yet. p_end NULL means the
-- window is not chosen yet: a tick is made first if one is due (p_every),
-- and the window runs to the newest tick. A window holds the changes whose
-- transaction is visible in p_end's snapshot and not in p_tick's; both
-- snapshots are fixed, so the window never changes once chosen, and walking
-- it by seq misses nothing. A rolled-back change is never visible; one still
-- running at p_end falls into a later window.
--
-- Returns up to p_limit changes (with their position), then, when the window
-- is exhausted, one row with run_id NULL whose tick is where to continue.
-- SQLSTATE SQM02 when a tick is missing (pruned, or never made).
CREATE OR REPLACE FUNCTION squidmesh.read_changes(
    p_tick bigint, p_end bigint, p_seq bigint, p_workflow text, p_limit integer,
    p_every interval)
RETURNS TABLE (tick bigint, end_tick bigint, seq bigint, run_id uuid, workflow text,
               run_version bigint, from_status text, to_status text, at timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lower_snapshot pg_snapshot;
    upper_snapshot pg_snapshot;
    delivered integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'squidmesh.read_changes needs READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = '40001';
    END IF;
    IF p_tick = 0 THEN
        lower_snapshot := '1:1:';  -- tick 0, the feed's start: nothing is visible
    ELSE
        SELECT t.snapshot INTO lower_snapshot FROM squidmesh.feed_ticks t WHERE t.id = p_tick;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'squidmesh feed: tick % does not exist', p_tick
                USING ERRCODE = 'SQM02';
        END IF;
    END IF;
    IF p_end IS NULL THEN
        IF p_every IS NOT NULL THEN
            PERFORM squidmesh.feed_tick(p_every);
        END IF;
        -- A new statement: a fresh snapshot, which sees the tick just made.
        SELECT max(t.id) INTO p_end FROM squidmesh.feed_ticks t;
        IF p_end IS NULL OR p_end <= p_tick THEN
            RETURN QUERY SELECT p_tick, NULL::bigint, NULL::bigint, NULL::uuid, NULL::text,
                                NULL::bigint, NULL::text, NULL::text, NULL::timestamptz;
            RETURN;
        END IF;
        p_seq := 0;
    END IF;
    SELECT t.snapshot INTO upper_snapshot FROM squidmesh.feed_ticks t WHERE t.id = p_end;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'squidmesh feed: tick % does not exist', p_end
            USING ERRCODE = 'SQM02';
    END IF;
    -- EXECUTE: planned with this window's bounds, so the planner can choose
    -- between the xid index (a narrow window) and the seq index (a wide one).
    RETURN QUERY EXECUTE
        'SELECT $1, $2, l.seq, l.run_id, l.workflow, l.run_version, l.from_status,
                l.to_status, l.at
         FROM squidmesh.run_transitions l
         WHERE l.xid >= pg_snapshot_xmin($3) AND l.xid < pg_snapshot_xmax($4)
           AND pg_visible_in_snapshot(l.xid, $4)
           AND NOT pg_visible_in_snapshot(l.xid, $3)
           AND l.seq > $5
           AND ($6::text IS NULL OR l.workflow = $6)
         ORDER BY l.seq
         LIMIT $7'
        USING p_tick, p_end, lower_snapshot, upper_snapshot, p_seq, p_workflow, p_limit;
    GET DIAGNOSTICS delivered = ROW_COUNT;
    IF delivered < p_limit THEN
        RETURN QUERY SELECT p_end, NULL::bigint, NULL::bigint, NULL::uuid, NULL::text,
                            NULL::bigint, NULL::text, NULL::text, NULL::timestamptz;
    END IF;
END;
$$;
