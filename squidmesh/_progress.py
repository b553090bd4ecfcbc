"""Transactional progression: progress_run, *_and_dispatch, *_with.

Placeholder until the dispatch issue lands.
"""

from __future__ import annotations

from ._base import StoreBase


class ProgressOps(StoreBase):
    """Operations that run caller code under the run's row lock (mixed into ``RunStore``)."""
