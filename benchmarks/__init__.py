"""squidmesh benchmarks: plain asyncio scripts, not tests.

``python -m benchmarks`` runs the suite (``--help`` for the flags);
``python -m benchmarks.load`` drives a realistic mix for a fixed duration.
See ``benchmarks/RESULTS.md`` for the figures of one full run.
"""
