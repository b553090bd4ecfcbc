-- squidmesh schema, version 0006: the scheduler's state, so that a scheduler
-- process continues where the last one stopped.
--
-- One row per cron trigger that has fired (squidmesh/_scheduler.py): the
-- last tick a run was created for (or found created). fire_due_triggers
-- reads it to tell a trigger seen for the first time (no row: only its
-- latest due tick fires) from one that missed ticks while nothing fired
-- (the Trigger's catch_up most recent of the ticks after last_tick fire).
-- Writers only ever move last_tick forward (GREATEST), in the statement
-- that creates the ticks' runs, so concurrent schedulers agree; what keeps
-- a tick to one run is the runs' idempotency key, not this table.
--   workflow, trigger  the trigger, as named in the definition (the runs'
--                      workflow and trigger columns)
--   last_tick          the tick's instant
--   fired_at           when last_tick last moved (the server's clock)
-- A row outlives its trigger: one removed from the definitions keeps its
-- row (a few bytes) and, if it comes back, catches up from there.
CREATE TABLE squidmesh.cron_state (
    workflow  text        NOT NULL,
    trigger   text        NOT NULL,
    last_tick timestamptz NOT NULL,
    fired_at  timestamptz NOT NULL,
    CONSTRAINT cron_state_pkey PRIMARY KEY (workflow, trigger)
);

-- A role that may read or write runs (an application role, or one that
-- runs the scheduler) gets the same privileges on the new table, or its
-- first fire_due_triggers after this upgrade fails.
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
            'GRANT %s ON squidmesh.cron_state TO %s', g.privilege_type, g.grantee);
    END LOOP;
END
$$;
