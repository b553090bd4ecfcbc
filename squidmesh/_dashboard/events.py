"""The dashboard's event stream: the change feed as server-sent events.

``GET {prefix}/events`` answers ``text/event-stream``: a ``ready`` event,
then one ``change`` event per committed status change (the ``RunChange`` as
JSON), each with its feed position as the event id. A page passes the
position it was rendered at (``?after=``), so nothing between the page and
the stream is missed; a browser that reconnects sends the last id it saw
(``Last-Event-ID``) and resumes exactly there. A position the feed no
longer knows (pruned) restarts at the newest tick, and the ``ready`` event
says ``"reset": true`` so that the page reloads what it shows.

Each stream ends after ``STREAM_SECONDS`` (the browser reconnects after
``retry`` milliseconds and resumes from its last id): a server waits for
open responses before it shuts down, and an endless stream would hold it
up for ever.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._errors import InvalidPosition
from .._feed import decode_position
from .._store import RunStore
from .._types import RunChange

__all__ = ("EventStream", "start_position")

#: How long one response streams before it ends (the browser reconnects).
STREAM_SECONDS: Final = 25.0
#: A comment line after this long without an event, so that proxies and
#: the browser see a live connection.
HEARTBEAT_SECONDS: Final = 10.0
#: What the browser waits before it reconnects, in milliseconds.
RETRY_MS: Final = 1000
_BUFFER: Final = 256


async def start_position(store: RunStore, *candidates: str | None) -> tuple[str, bool]:
    """The first of ``candidates`` that is a feed position, else the head.

    The flag says that a candidate was given but refused (the page should
    reload what it shows, since changes may have been missed).
    """
    refused = False
    for candidate in candidates:
        if not candidate:
            continue
        try:
            decode_position(candidate)
        except InvalidPosition:
            refused = True
            continue
        return candidate, False
    return await store.head_position(), refused


@dataclass(frozen=True, slots=True)
class _Reset:
    position: str


_ENCODE: Final = msgspec.json.Encoder().encode


def _event(kind: str, event_id: str | None, data: object) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return head.encode() + b"event: " + kind.encode() + b"\ndata: " + _ENCODE(data) + b"\n\n"


class EventStream(Response):
    """A ``text/event-stream`` of the store's changes (see the module docs)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        store: RunStore,
        position: str,
        *,
        reset: bool,
        workflow: str | None,
        run_id: str | None,
        headers: dict[str, str],
        lifetime: float = STREAM_SECONDS,
    ) -> None:
        # No body: Response.__init__ would declare a Content-Length of 0.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self.store = store
        self.position = position
        self.reset = reset
        self.workflow = workflow
        self.run_id = run_id
        self.lifetime = lifetime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        gone = False
        async with anyio.create_task_group() as group:

            async def until_disconnect() -> None:
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone = True
                group.cancel_scope.cancel()

            group.start_soon(until_disconnect)
            with anyio.move_on_after(self.lifetime):
                try:
                    await self._stream(send)
                except OSError:  # the client went away while we wrote
                    gone = True
            group.cancel_scope.cancel()
        if not gone:
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, send: Send) -> None:
        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await write(f"retry: {RETRY_MS}\n\n".encode())
        await write(_event("ready", self.position, {"reset": self.reset}))
        sender, receiver = anyio.create_memory_object_stream[RunChange | _Reset](_BUFFER)
        async with anyio.create_task_group() as group, receiver:
            group.start_soon(self._pump, sender)
            while True:
                with anyio.move_on_after(HEARTBEAT_SECONDS) as idle:
                    try:
                        item = await receiver.receive()
                    except anyio.EndOfStream:  # the store closed
                        break
                if idle.cancelled_caught:
                    await write(b": keep-alive\n\n")
                    continue
                if isinstance(item, _Reset):
                    await write(_event("ready", item.position, {"reset": True}))
                elif self.run_id is None or str(item.run_id) == self.run_id:
                    await write(_event("change", item.position, item))
            group.cancel_scope.cancel()

    async def _pump(self, out: MemoryObjectSendStream[RunChange | _Reset]) -> None:
        position = self.position
        async with out:
            while True:
                try:
                    changes: AsyncIterator[RunChange] = self.store.changes(
                        position, workflow=self.workflow
                    )
                    async with contextlib.aclosing(changes):  # type: ignore[type-var]
                        async for change in changes:
                            await out.send(change)
                    return
                except InvalidPosition:
                    position = await self.store.head_position()
                    await out.send(_Reset(position))
                except RuntimeError:
                    if not getattr(self.store, "_closed", False):
                        raise
                    return  # the store is closed (the app stops): so is the stream
