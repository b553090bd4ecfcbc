"""What keeps the dashboard's pages and forms safe in a browser.

- Every response carries a Content-Security-Policy that lets the page load
  only the dashboard's own script and stylesheet: no inline script runs, so
  a value that escaped escaping still could not execute (values are escaped
  by Jinja's autoescape in the first place).
- The action forms (cancel, replay) are protected against cross-site
  requests three ways, all of which must pass:

  1. ``Sec-Fetch-Site``, which browsers send with every request since 2023:
     only ``same-origin`` (or ``none``: typed into the address bar) passes.
  2. ``Origin``: when present, its host must be the request's ``Host``.
  3. A double-submit token: a random value in a ``SameSite=Strict``,
     ``HttpOnly`` cookie, repeated in a hidden field of each form. A page
     on another site can neither read the cookie nor make the browser send
     it, so it cannot fill in the field.
"""

from __future__ import annotations

import re
import secrets
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

__all__ = (
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "csrf_problem",
    "csrf_token",
    "secure_headers",
    "set_csrf_cookie",
)

CSRF_COOKIE: Final = "squidmesh_csrf"
CSRF_FIELD: Final = "csrf_token"
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def secure_headers(response: Response) -> Response:
    """Add the dashboard's security headers (those not set already)."""
    for name, value in SECURE_HEADERS.items():
        if name not in response.headers:
            response.headers[name] = value
    return response


def csrf_token(request: Request) -> tuple[str, bool]:
    """The token of this browser: the cookie's, or a new one. The flag says
    whether it is new (then the response must set the cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if _TOKEN.fullmatch(token):
        return token, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, token: str, path: str) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=path or "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def csrf_problem(request: Request, submitted: str | None) -> str | None:
    """Why a form POST is refused as cross-site, or None when it passes."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"the request came from another site (Sec-Fetch-Site: {fetch_site})"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        parts = urlsplit(origin) if origin != "null" else None
        if parts is None or not parts.netloc or parts.netloc.lower() != host.lower():
            return f"the request came from another origin ({origin})"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not _TOKEN.fullmatch(cookie):
        return "the dashboard's cookie is missing: reload the page and try again"
    if not submitted or not secrets.compare_digest(submitted.encode(), cookie.encode()):
        return "the form's token does not match this browser's: reload the page and try again"
    return None
