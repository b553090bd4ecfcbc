"""Markers and options only. The database fixtures live in ``tests/_fixtures.py``.

They are registered here as a plugin so that ``tests/integration`` and
``tests/concurrency`` share one embedded server and one template database per
session. Unit tests never request them, so they start no server.
"""

pytest_plugins = ["tests._fixtures"]
