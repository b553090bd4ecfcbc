-- squidmesh schema, version 0003: idempotent creation, and one trigger for
-- what every write of a run does.
--
-- Idempotency: a run may carry a key, unique per workflow, and the
-- fingerprint of the trigger and payload it was created with, to tell a retry
-- from a conflicting reuse of the key. Both columns are NULL for runs without
-- a key, so adding them rewrites nothing; the CHECK is NOT VALID because every
-- existing row is NULL and a validating scan would hold the table's lock.
--
-- The unique index is built in this transaction, not CONCURRENTLY: migrate()
-- must keep working inside a caller's transaction. Every existing row has a
-- NULL key, so the build reads the table once and writes no entry; on a very
-- large table that read blocks writes to runs for its duration (about a
-- second per few million rows): apply this migration at a quiet moment.
ALTER TABLE squidmesh.runs
    ADD COLUMN idempotency_key text,
    ADD COLUMN idempotency_fingerprint text,
    ADD CONSTRAINT runs_idempotency_key_check
        CHECK (length(idempotency_key) BETWEEN 1 AND 255) NOT VALID;
CREATE UNIQUE INDEX runs_workflow_idempotency_key
    ON squidmesh.runs (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One place for what every UPDATE of a run does, whoever sends it (squidmesh,
-- raw SQL, another service): bump version, stamp updated_at, refuse an
-- illegal status change. The body lives in sql/functions/runs_write.sql
-- (repeatable, applied right after the migrations); this stub exists only so
-- the trigger can be created here, and is replaced in the same migrate().
CREATE FUNCTION squidmesh.runs_write() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END; $$;

DROP TRIGGER runs_stamp_updated_at ON squidmesh.runs;
CREATE TRIGGER runs_write
    BEFORE UPDATE ON squidmesh.runs
    FOR EACH ROW EXECUTE FUNCTION squidmesh.runs_write();
DROP FUNCTION squidmesh.stamp_updated_at();
