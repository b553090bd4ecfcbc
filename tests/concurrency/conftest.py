"""Concurrency tests: several connections on one real PostgreSQL database.

They reuse the fixtures of ``tests/_fixtures.py`` (``dsn``, ``pool``,
``store``, ``events``...), so each test still gets its own database.
"""
