-- squidmesh schema, version 0001: runs, step runs, step attempts.
--
-- Everything lives in the schema "squidmesh" so that it never collides with a
-- host application's tables. Apply with squidmesh.migrate() / `python -m
-- squidmesh migrate`, or by hand in file-name order inside a transaction each.
-- Status lists must match squidmesh.state_machine.STATES (a unit test checks).

CREATE SCHEMA IF NOT EXISTS squidmesh;

CREATE TABLE squidmesh.runs (
    id                   uuid        PRIMARY KEY,
    workflow             text        NOT NULL,
    trigger              text        NOT NULL,
    status               text        NOT NULL,
    payload              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    context              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    current_step         text,
    last_error           jsonb,
    replayed_from_run_id uuid,
    -- Bumped by every write of the row: the future If-Match / optimistic check.
    version              bigint      NOT NULL DEFAULT 1,
    inserted_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT runs_status_check CHECK (status IN (
        'pending', 'running', 'retrying', 'paused',
        'failed', 'completed', 'cancelling', 'cancelled')),
    CONSTRAINT runs_workflow_check CHECK (length(workflow) BETWEEN 1 AND 255),
    CONSTRAINT runs_trigger_check CHECK (length(trigger) BETWEEN 1 AND 255),
    CONSTRAINT runs_payload_object_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT runs_context_object_check CHECK (jsonb_typeof(context) = 'object'),
    -- Deleting a source run keeps its replays and forgets the lineage.
    CONSTRAINT runs_replayed_from_fkey FOREIGN KEY (replayed_from_run_id)
        REFERENCES squidmesh.runs (id) ON DELETE SET NULL
);

-- list_runs serves every filter combination newest-first from an index:
-- (workflow, status), workflow alone, status alone, and no filter.
CREATE INDEX runs_workflow_status_inserted_idx
    ON squidmesh.runs (workflow, status, inserted_at DESC, id DESC);
CREATE INDEX runs_workflow_inserted_idx
    ON squidmesh.runs (workflow, inserted_at DESC, id DESC);
CREATE INDEX runs_status_inserted_idx
    ON squidmesh.runs (status, inserted_at DESC, id DESC);
CREATE INDEX runs_inserted_idx
    ON squidmesh.runs (inserted_at DESC, id DESC);
CREATE INDEX runs_replayed_from_idx
    ON squidmesh.runs (replayed_from_run_id) WHERE replayed_from_run_id IS NOT NULL;

CREATE TABLE squidmesh.step_runs (
    id          uuid        PRIMARY KEY,
    run_id      uuid        NOT NULL,
    step        text        NOT NULL,
    -- "step", "pause" or "approval", copied from the definition when the step
    -- run is written, so history of an unregistered workflow still shows
    -- its audit events.
    kind        text        NOT NULL DEFAULT 'step',
    status      text        NOT NULL,
    input       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    output      jsonb,
    last_error  jsonb,
    -- What a paused step resumes to, and the recorded human decision
    -- (event, actor, comment, metadata, at) of a manual step.
    resume      jsonb,
    manual      jsonb,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT step_runs_status_check CHECK (status IN (
        'pending', 'running', 'completed', 'failed')),
    CONSTRAINT step_runs_kind_check CHECK (kind IN ('step', 'pause', 'approval')),
    CONSTRAINT step_runs_step_check CHECK (length(step) BETWEEN 1 AND 255),
    CONSTRAINT step_runs_run_id_fkey FOREIGN KEY (run_id)
        REFERENCES squidmesh.runs (id) ON DELETE CASCADE,
    -- One step run per (run, step); its index also serves "step runs by run".
    CONSTRAINT step_runs_run_id_step_key UNIQUE (run_id, step)
);

CREATE INDEX step_runs_status_idx ON squidmesh.step_runs (status);

CREATE TABLE squidmesh.step_attempts (
    id             uuid        PRIMARY KEY,
    step_run_id    uuid        NOT NULL,
    attempt_number integer     NOT NULL,
    status         text        NOT NULL,
    error          jsonb,
    inserted_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT step_attempts_status_check CHECK (status IN (
        'running', 'completed', 'failed')),
    CONSTRAINT step_attempts_number_check CHECK (attempt_number > 0),
    CONSTRAINT step_attempts_step_run_id_fkey FOREIGN KEY (step_run_id)
        REFERENCES squidmesh.step_runs (id) ON DELETE CASCADE,
    -- Unique per step run; its index also serves "attempts by step run".
    CONSTRAINT step_attempts_step_run_id_number_key UNIQUE (step_run_id, attempt_number)
);

-- The one JSON shape of a run that every query returns, decoded by msgspec
-- straight into squidmesh.Run in one pass. Timestamps are formatted in UTC
-- explicitly so that the session's TimeZone setting never matters.
CREATE FUNCTION squidmesh.utc_iso(ts timestamptz) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

CREATE FUNCTION squidmesh.run_json(r squidmesh.runs) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN json_build_object(
        'id', r.id,
        'workflow', r.workflow,
        'trigger', r.trigger,
        'status', r.status,
        'payload', r.payload,
        'context', r.context,
        'current_step', r.current_step,
        'last_error', r.last_error,
        'replayed_from_run_id', r.replayed_from_run_id,
        'version', r.version,
        'inserted_at', squidmesh.utc_iso(r.inserted_at),
        'updated_at', squidmesh.utc_iso(r.updated_at));

-- The JSON shapes of a step attempt and of a step run (its attempts in
-- attempt_number order), decoded by msgspec into squidmesh.StepAttempt and
-- squidmesh.StepRun; used by every step query and the history read.
CREATE FUNCTION squidmesh.attempt_json(a squidmesh.step_attempts) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN json_build_object(
        'id', a.id,
        'attempt_number', a.attempt_number,
        'status', a.status,
        'error', a.error,
        'inserted_at', squidmesh.utc_iso(a.inserted_at),
        'updated_at', squidmesh.utc_iso(a.updated_at));

CREATE FUNCTION squidmesh.step_run_json(s squidmesh.step_runs) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN json_build_object(
        'id', s.id,
        'step', s.step,
        'status', s.status,
        'input', s.input,
        'output', s.output,
        'last_error', s.last_error,
        -- step_attempts_step_run_id_number_key serves this in order.
        'attempts', coalesce((
            SELECT json_agg(squidmesh.attempt_json(a) ORDER BY a.attempt_number)
            FROM squidmesh.step_attempts a WHERE a.step_run_id = s.id), '[]'),
        'inserted_at', squidmesh.utc_iso(s.inserted_at),
        'updated_at', squidmesh.utc_iso(s.updated_at));

-- cancel_run in one round trip, as a function because its steps need fresh
-- snapshots: the run row is locked first, and only then are the paused
-- step's step run and attempt looked up, so a step run or attempt that a
-- worker committed while we waited for the lock is seen and failed too (a
-- single statement would read them from the snapshot taken before the wait).
-- Decided on the state read under the lock:
--   1. pending or paused -> cancelled;
--   2. running or retrying -> cancelling (the runtime finishes the step);
--   3. anything else: no write; the caller raises InvalidTransition.
-- current_step is cleared in cases 1 and 2. For a paused run, the paused
-- step's step run (if still running) and its latest running attempt are
-- failed with p_error. No row back means the run does not exist.
CREATE FUNCTION squidmesh.cancel_run(p_id uuid, p_error jsonb)
RETURNS TABLE (from_status text, run text, failed_step text,
               attempt_number integer, duration_s double precision)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_status text;
    v_step text;
    v_step_run_id uuid;
    v_started timestamptz;
    v_attempt_started timestamptz;
BEGIN
    SELECT r.status, r.current_step INTO v_status, v_step
    FROM squidmesh.runs r WHERE r.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    from_status := v_status;
    IF v_status NOT IN ('pending', 'paused', 'running', 'retrying') THEN
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE squidmesh.runs r SET
        status = CASE WHEN v_status IN ('pending', 'paused') THEN 'cancelled' ELSE 'cancelling' END,
        current_step = NULL,
        version = r.version + 1,
        updated_at = now()
    WHERE r.id = p_id
    RETURNING squidmesh.run_json(r)::text INTO run;
    IF v_status = 'paused' AND v_step IS NOT NULL THEN
        -- Lock order: run (above), then step run, then attempt.
        UPDATE squidmesh.step_runs s SET
            status = 'failed', last_error = p_error, updated_at = now()
        WHERE s.run_id = p_id AND s.step = v_step AND s.status = 'running'
        RETURNING s.id, s.step, s.inserted_at INTO v_step_run_id, failed_step, v_started;
        IF v_step_run_id IS NOT NULL THEN
            UPDATE squidmesh.step_attempts a SET
                status = 'failed', error = p_error, updated_at = now()
            WHERE a.id = (SELECT a2.id FROM squidmesh.step_attempts a2
                          WHERE a2.step_run_id = v_step_run_id AND a2.status = 'running'
                          ORDER BY a2.attempt_number DESC LIMIT 1
                          FOR UPDATE)
            RETURNING a.attempt_number, a.inserted_at INTO attempt_number, v_attempt_started;
            -- From the attempt's start, or the step run's when it had none.
            duration_s := extract(epoch FROM now() - coalesce(v_attempt_started, v_started));
        END IF;
    END IF;
    RETURN NEXT;
END;
$$;
