"""What keeps another site from acting through a visitor's browser on the UI.

State-changing posts (moving an alias, signing in, signing out) need two proofs that a foreign
page cannot produce: the request's ``Origin`` (or, where a browser sends none, ``Referer``) is
this UI's own origin — ``null`` (a sandboxed frame, a ``data:`` page) and a missing one are
refused — and the form carries the CSRF token that this UI set in a cookie (double submit:
another site can neither read that cookie nor set it).  On a registry with no tokens, where
anyone may move an alias, these are the only thing between a visitor's browser and a move.

Every UI answer carries headers that forbid framing, scripts from elsewhere, MIME sniffing and
caching of pages with data.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.registry.kernel.errors import Forbidden

CSRF_COOKIE = "modelyard_csrf"
CSRF_FIELD = "csrf"

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
                                "object-src 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https.  Behind a TLS-terminating proxy the scheme is its
    ``X-Forwarded-Proto``, applied by uvicorn only when the registry is told to trust the proxy
    (``settings.proxy_options``): anyone can send the header."""
    return request.url.scheme == "https"


def own_origin(request: Request) -> str:
    return f"{'https' if is_https(request) else 'http'}://{request.headers.get('host', '')}"


def csrf_token(request: Request) -> str:
    """The visitor's CSRF token: the cookie's, or a new one (``remember_csrf`` sets it)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) != 43 or not token.replace("-", "").replace("_", "").isalnum():
        token = request.state.new_csrf = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
    return token


def remember_csrf(request: Request, response: Response) -> None:
    new = getattr(request.state, "new_csrf", None)
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", path="/ui", secure=is_https(request))


def check_post(request: Request, form_token: str) -> None:
    """Refuse (403) a state-changing post that another site could have made."""
    origin = request.headers.get("origin")
    if origin is None:  # some browsers leave Origin off same-origin posts; Referer then says where from
        referer = request.headers.get("referer")
        origin = f"{urlsplit(referer).scheme}://{urlsplit(referer).netloc}" if referer else None
    if origin is None or origin == "null":
        raise Forbidden("this form post does not say where it comes from (no Origin, or Origin: null): refused, "
                        "as a post from another site would be")
    if origin != own_origin(request):
        raise Forbidden(f"a form from another site ({origin[:100]}) is refused")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not form_token or not secrets.compare_digest(cookie.encode(), form_token.encode()):
        raise Forbidden("the form's CSRF token does not match this browser's: reload the page and try again")


class UiHeaders:
    """Pure ASGI middleware: the headers above on every answer under ``/ui`` (pages, the sign-in
    redirects, static files, refusals), and ``Cache-Control: no-store`` on all but static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/ui" and not path.startswith("/ui/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not path.startswith("/ui/static/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)
