"""The web dashboard behind ``squidmesh.fastapi.dashboard_router``.

Server-rendered pages (Jinja templates in ``templates/``, every value
escaped) and one small script of the project's own (``static/``) that keeps
them live over server-sent events from the change feed. Everything it
serves ships in the package: no CDN, no build step, works offline.

- ``router``: the routes, their error answers and the pages' data;
- ``views``: what the pages show (the timeline, the counts bar, workflows),
  computed without I/O;
- ``events``: the change feed as a ``text/event-stream``;
- ``security``: the Content-Security-Policy and the forms' cross-site checks.
"""

from .router import build_router as build_router
