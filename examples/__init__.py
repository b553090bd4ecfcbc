"""Runnable examples: python examples/outbox.py, uvicorn examples.fastapi_app:app."""
