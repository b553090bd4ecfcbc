"""Model-based test: a reference model of runs against the real store.

Hypothesis drives random sequences of create / transition / update / cancel /
replay / progress / pause (plus calls with unknown ids and statuses). Each rule
computes what ``semantics.md`` says must happen from the model alone (the new
status and fields, or which error with which details), makes the call on the
real store, checks the outcome, and applies it to the model. After every step
the invariant compares every run in the database with the model.

Hypothesis's state machines are synchronous, so the machine owns an
``asyncio.Runner`` and creates its own pool inside that loop, on the test's
database (emptied at the start of each example).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import squidmesh
from squidmesh import (
    UNSET,
    InvalidTransition,
    PauseResult,
    Run,
    RunNotFound,
    RunStatus,
    UnknownStatus,
    progress,
    state_machine,
)
from tests.integration.workflows import WORKFLOWS

T = TypeVar("T")
S = RunStatus
CANCEL_ERROR = {"message": "run cancelled while paused", "reason": "cancelled"}
ENTRY = {"billing.invoice_reminder": "load_invoice", "etl.daily": None}


@dataclass
class ModelRun:
    workflow: str
    trigger: str
    payload: dict[str, Any]
    status: RunStatus = S.PENDING
    context: dict[str, Any] = field(default_factory=dict)
    current_step: str | None = None
    last_error: dict[str, Any] | None = None
    replayed_from: UUID | None = None
    # The "approve" step run pause_run works on: None until first paused.
    step: tuple[UUID, UUID] | None = None
    step_status: str | None = None
    step_error: dict[str, Any] | None = None


Fields = dict[str, Any]  # a subset of context / current_step / last_error

# Storable text (no NUL, no lone surrogate): refusals are test_bad_input's job.
chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
contexts = st.dictionaries(
    st.text(chars, max_size=4),
    st.integers() | st.text(chars, max_size=4) | st.booleans(),
    max_size=3,
)
field_sets: st.SearchStrategy[Fields] = st.fixed_dictionaries(
    {},
    optional={
        "context": st.none() | contexts,
        "current_step": st.none() | st.sampled_from(["load_invoice", "approve", "send_email"]),
        "last_error": st.none() | st.fixed_dictionaries({"message": st.text(chars, max_size=8)}),
    },
)
statuses = st.sampled_from(list(RunStatus))


def apply(m: ModelRun, fields: Fields) -> None:
    if "context" in fields:
        m.context = fields["context"] if fields["context"] is not None else {}
    if "current_step" in fields:
        m.current_step = fields["current_step"]
    if "last_error" in fields:
        m.last_error = fields["last_error"]


def as_kwargs(fields: Fields) -> dict[str, Any]:
    return {k: fields.get(k, UNSET) for k in ("context", "current_step", "last_error")}


class RunMachine(RuleBasedStateMachine):
    dsn: str = ""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.pool: asyncpg.Pool = self.run(self._open())
        self.store = squidmesh.RunStore(self.pool, workflows=WORKFLOWS)
        self.model: dict[UUID, ModelRun] = {}

    async def _open(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        await pool.execute("TRUNCATE squidmesh.runs CASCADE")
        return pool

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(asyncio.wait_for(coro, timeout=30))

    def teardown(self) -> None:
        try:
            self.run(self.pool.close())
        finally:
            self.runner.close()

    def expect_error(
        self, coro: Coroutine[Any, Any, object], error: type[Exception], **details: object
    ) -> None:
        with pytest.raises(error) as info:
            self.run(coro)
        for name, value in details.items():
            assert getattr(info.value, name) == value, (name, info.value)

    # -- rules ----------------------------------------------------------------

    @initialize(target=runs)
    def first_run(self) -> UUID:
        return self._create("billing.invoice_reminder", "first")

    @rule(
        target=runs,
        workflow=st.sampled_from(sorted(ENTRY)),
        account=st.text(chars, min_size=1, max_size=6),
    )
    def create(self, workflow: str, account: str) -> UUID:
        return self._create(workflow, account)

    def _create(self, workflow: str, account: str) -> UUID:
        payload = {"account_id": account} if workflow == "billing.invoice_reminder" else {}
        run = self.run(self.store.create_run(workflow, payload))
        expected_payload: dict[str, Any] = dict(payload)
        if workflow == "billing.invoice_reminder":
            expected_payload["posted_on"] = run.payload.get("posted_on")
        assert run.payload == expected_payload
        self.model[run.id] = ModelRun(
            workflow=workflow,
            trigger=run.trigger,
            payload=run.payload,
            current_step=ENTRY[workflow],
        )
        self.check(run)
        return run.id

    @rule(target=runs, source=runs)
    def replay(self, source: UUID) -> UUID:
        src = self.model[source]
        run = self.run(self.store.replay_run(source))
        self.model[run.id] = ModelRun(
            workflow=src.workflow,
            trigger=src.trigger,
            payload=src.payload,
            current_step=ENTRY[src.workflow],
            replayed_from=source,
        )
        self.check(run)
        return run.id

    @rule(run_id=runs, to=statuses, fields=field_sets)
    def transition(self, run_id: UUID, to: RunStatus, fields: Fields) -> None:
        m = self.model[run_id]
        call = self.store.transition_run(run_id, to, **as_kwargs(fields))
        if not state_machine.can_transition(m.status, to):
            self.expect_error(call, InvalidTransition, from_status=m.status, to_status=to)
            return
        run = self.run(call)
        m.status = to
        apply(m, fields)
        self.check(run)

    @rule(run_id=runs, fields=field_sets)
    def update(self, run_id: UUID, fields: Fields) -> None:
        run = self.run(self.store.update_run(run_id, **as_kwargs(fields)))
        apply(self.model[run_id], fields)
        self.check(run)

    @rule(run_id=runs)
    def cancel(self, run_id: UUID) -> None:
        m = self.model[run_id]
        call = self.store.cancel_run(run_id)
        if m.status in (S.PENDING, S.PAUSED):
            if m.status is S.PAUSED and m.step_status == "running" and m.current_step == "approve":
                m.step_status, m.step_error = "failed", CANCEL_ERROR
            m.status = S.CANCELLED
        elif m.status in (S.RUNNING, S.RETRYING):
            m.status = S.CANCELLING
        else:
            self.expect_error(call, InvalidTransition, from_status=m.status, to_status="cancelling")
            return
        m.current_step = None
        self.check(self.run(call))

    @rule(
        run_id=runs,
        to=st.none() | statuses,
        fields=field_sets,
    )
    def progress(self, run_id: UUID, to: RunStatus | None, fields: Fields) -> None:
        m = self.model[run_id]
        op: progress.Operation = progress.Update() if to is None else progress.Transition(to)
        call = self.store.progress_run(run_id, lambda r: dict(fields), op)
        if state_machine.is_terminal(m.status):
            assert self.run(call) is None
            return
        if m.status is S.CANCELLING:
            # The operation is ignored: cancelled, keeping only the context.
            m.status = S.CANCELLED
            apply(m, {k: v for k, v in fields.items() if k == "context"})
            m.current_step = m.last_error = None
        elif to is not None and not state_machine.can_transition(m.status, to):
            self.expect_error(call, InvalidTransition, from_status=m.status, to_status=to)
            return
        else:
            if to is not None:
                m.status = to
            apply(m, fields)
        run = self.run(call)
        assert run is not None
        self.check(run)

    @rule(run_id=runs, fields=field_sets)
    def pause(self, run_id: UUID, fields: Fields) -> None:
        m = self.model[run_id]
        if m.step is None:
            step_run = self.run(self.store.begin_step(run_id, "approve", {}))
            attempt = self.run(self.store.begin_attempt(step_run.id))
            m.step, m.step_status = (step_run.id, attempt.id), "running"
        step_run_id, attempt_id = m.step
        call = self.store.pause_run(run_id, step_run_id, attempt_id, dict(fields))
        from_status = m.status
        if state_machine.is_terminal(m.status):
            result = self.run(call)
            assert isinstance(result, PauseResult)
            assert result.terminal_noop and result.to_status == from_status
            finalize = m.step_status == "running"
            assert result.finalized_step == finalize
            if finalize:
                m.step_status = "failed"
                m.step_error = (
                    CANCEL_ERROR
                    if m.status is S.CANCELLED
                    else {
                        "message": "run already finalized before pause progression",
                        "status": m.status.value,
                    }
                )
            self.check(result.run)
            return
        if m.status is S.CANCELLING:
            if m.step_status == "running":
                m.step_status, m.step_error = "failed", CANCEL_ERROR
            m.status = S.CANCELLED
            apply(m, {k: v for k, v in fields.items() if k == "context"})
            m.current_step = m.last_error = None
        elif not state_machine.can_transition(m.status, S.PAUSED):
            self.expect_error(call, InvalidTransition, from_status=m.status, to_status="paused")
            return
        else:
            m.status = S.PAUSED
            apply(m, fields)
        result = self.run(call)
        assert isinstance(result, PauseResult)
        assert (result.from_status, result.to_status) == (from_status, m.status)
        self.check(result.run)

    @rule(
        bad_status=st.sampled_from(["RUNNING", "unknown", "", " paused"]),
        run_id=runs,
    )
    def unknown_status(self, bad_status: str, run_id: UUID) -> None:
        self.expect_error(self.store.transition_run(run_id, bad_status), UnknownStatus)

    @rule(data=st.data())
    def unknown_run(self, data: st.DataObject) -> None:
        missing = data.draw(st.sampled_from([uuid4(), str(uuid4()), "nope"]))
        self.expect_error(self.store.cancel_run(missing), RunNotFound)
        self.expect_error(self.store.transition_run(missing, "running"), RunNotFound)
        self.expect_error(self.store.replay_run(missing), RunNotFound)

    @rule(run_id=consumes(runs))
    def forget(self, run_id: UUID) -> None:
        # Deleting a source keeps its replays and clears their lineage.
        self.run(self.pool.execute("DELETE FROM squidmesh.runs WHERE id = $1", run_id))
        del self.model[run_id]
        for m in self.model.values():
            if m.replayed_from == run_id:
                m.replayed_from = None

    # -- checks -----------------------------------------------------------------

    def check(self, run: Run) -> None:
        """The run a call returned agrees with the model."""
        m = self.model[run.id]
        got = (
            run.workflow,
            run.trigger,
            run.status,
            run.payload,
            run.context,
            run.current_step,
            run.last_error,
            run.replayed_from_run_id,
        )
        want = (
            m.workflow,
            m.trigger,
            m.status,
            m.payload,
            m.context,
            m.current_step,
            m.last_error,
            m.replayed_from,
        )
        assert got == want, f"\nstore: {got}\nmodel: {want}"

    @invariant()
    def database_matches_model(self) -> None:
        stored = {r.id: r for r in self.run(self.store.list_runs())}
        assert stored.keys() == self.model.keys()
        for run in stored.values():
            self.check(run)
        rows = self.run(
            self.pool.fetch(
                "SELECT run_id, status, last_error::text FROM squidmesh.step_runs"
                " WHERE step = 'approve'"
            )
        )
        steps = {r["run_id"]: (r["status"], r["last_error"]) for r in rows}
        for run_id, m in self.model.items():
            if m.step is None:
                assert run_id not in steps
                continue
            status, error = steps[run_id]
            assert status == m.step_status, (run_id, status, m)
            decoded = squidmesh._codec.decode_opt_map(error)
            assert decoded == m.step_error, (run_id, decoded, m.step_error)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_store_agrees_with_the_model(dsn: str) -> None:
    machine = type("BoundRunMachine", (RunMachine,), {"dsn": dsn})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_model_can_fail(dsn: str) -> None:
    # A model that expects the wrong thing must be caught: here cancelling a
    # pending run is wrongly expected to go to cancelling.
    class Wrong(RunMachine):
        @rule(run_id=RunMachine.runs)
        def cancel(self, run_id: UUID) -> None:
            m = self.model[run_id]
            if m.status is S.PENDING:
                self.model[run_id] = replace(m, status=S.CANCELLING, current_step=None)
                self.run(self.store.cancel_run(run_id))
                return
            super().cancel(run_id)

    machine = type("BoundWrong", (Wrong,), {"dsn": dsn})
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine,
            settings=settings(max_examples=10, stateful_step_count=5, deadline=None, database=None),
        )
