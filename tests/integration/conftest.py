"""Integration tests run against a real PostgreSQL, one fresh database per test.

The fixtures (``pg_admin_dsn``, ``template_db``, ``dsn``, ``pool``, ``events``,
``store``) come from ``tests/_fixtures.py``, shared with ``tests/concurrency``.
The workflows every store knows are in ``tests/integration/workflows.py``.
"""
