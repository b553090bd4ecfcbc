"""When a store builds events for a write: only when someone would get them."""

from __future__ import annotations

import pytest

from squidmesh._events import EventBus


def test_a_bus_with_nobody_to_tell_is_not_wanted() -> None:
    assert not EventBus().wanted
    assert not EventBus((), lambda events: None, lambda: False).wanted


def test_a_listener_wants_events() -> None:
    assert EventBus([lambda event: None]).wanted
    assert EventBus([lambda event: None], lambda events: None, lambda: False).wanted


def test_a_watching_watcher_wants_events() -> None:
    watching = [False]
    bus = EventBus((), lambda events: None, lambda: watching[0])
    assert not bus.wanted
    watching[0] = True  # a waiter started the watcher: from now on, every write counts
    assert bus.wanted


@pytest.mark.parametrize(("listen_dsn", "expected"), [(None, False), ("postgresql://x/y", True)])
def test_an_idle_watcher_watches_only_when_it_would_tell_other_processes(
    listen_dsn: str | None, expected: bool
) -> None:
    from squidmesh._watch import Watcher

    watcher = Watcher(None, None, listen_dsn, 0.25)  # type: ignore[arg-type]
    assert watcher.watching() is expected
