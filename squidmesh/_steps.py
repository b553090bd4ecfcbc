"""Step history: step runs, attempts, the history read and pause_run.

Placeholder until the history issue lands: the mixin exists so that
``RunStore`` has its final shape.
"""

from __future__ import annotations

from uuid import UUID

from ._base import StoreBase
from ._types import Run


class StepOps(StoreBase):
    """Step history writes and reads (mixed into ``RunStore``)."""

    async def _fetch_with_history(self, run_id: UUID) -> Run | None:
        raise NotImplementedError("run history arrives with the history issue")
