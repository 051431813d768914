"""The registry application: the REST API (``registry.server``) with the web UI (``registry.ui``) on it.

Assembled here, above both, so that ``server`` knows nothing of the UI and the UI builds on
the server's pieces (auth, calls, events).
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from modelyard.registry.server.app import build_api
from modelyard.registry.settings import RegistrySettings
from modelyard.registry.ui import routes as ui
from modelyard.registry.ui.protection import UiHeaders


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    app = build_api(settings or RegistrySettings())
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static, name="ui-static")
    app.add_exception_handler(ui.SignInNeeded, _to_sign_in)  # type: ignore[arg-type]
    app.add_middleware(UiHeaders)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving (settings from env)."""
    return create_app(RegistrySettings())


async def _to_sign_in(request: Request, error: ui.SignInNeeded) -> Response:
    """A UI page without a usable token: the sign-in page, which comes back here afterwards."""
    return RedirectResponse(f"/ui/login?{urlencode({'next': error.back})}", status_code=303)
