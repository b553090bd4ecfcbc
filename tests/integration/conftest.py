"""Integration tests run against a real PostgreSQL, on a database no other test sees.

The fixtures (``pg_admin_dsn``, ``dsn``, ``pool``, ``events``, ``store``) are
defined in ``tests/conftest.py`` on top of the squidmesh pytest plugin's, and
shared with ``tests/concurrency`` and ``tests/reliability``. The workflows
every store knows are in ``tests/integration/workflows.py``.
"""
