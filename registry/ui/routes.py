"""``/ui``: the pages, and the two things they change (moving an alias, signing in).

Every page asks the store through the same calls as the API, under the same authorization: the
sign-in cookie is read as a bearer token.  Lists are cursor pages, so a model with 10,000 versions
renders its newest 50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import Forbidden, Invalid, NotFound, RegistryError, Unauthorized
from modelyard.registry.kernel.names import InvalidName, check_alias, check_model_name
from modelyard.registry.server.auth import Authenticator, Caller
from modelyard.registry.server.calls import run_read, run_write
from modelyard.registry.server.deps import parse_tag_filters
from modelyard.registry.server.events_api import long_poll
from modelyard.registry.store import RegistryStore, scope_allows
from modelyard.registry.ui.protection import check_post, csrf_token, is_https, remember_csrf
from modelyard.registry.kernel.units import human_size

HERE = Path(__file__).parent
COOKIE = "modelyard_token"
PAGE = 50

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["size"] = human_size
static = StaticFiles(directory=HERE / "static")


class SignInNeeded(Exception):
    """The page needs a token the browser has not given: off to the sign-in page, then back."""

    def __init__(self, back: str) -> None:
        self.back = back


async def caller(request: Request, needed: str = "read") -> Caller:
    auth: Authenticator = request.app.state.auth
    token = request.cookies.get(COOKIE)
    try:
        return await auth.authorize(f"Bearer {token}" if token else None, needed)
    except Unauthorized:
        raise SignInNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else "")) from None


def render(request: Request, template: str, who: Caller, status: int = 200, **context: Any) -> HTMLResponse:
    answer = templates.TemplateResponse(request, template, {"caller": who, "csrf": csrf_token(request), **context},
                                        status_code=status)
    remember_csrf(request, answer)
    return answer


def store_of(request: Request) -> RegistryStore:
    return request.app.state.store


@router.get("", response_class=HTMLResponse)
async def models(request: Request, q: Annotated[str | None, Query(max_length=63)] = None,
                 tag: Annotated[str | None, Query(max_length=300)] = None,
                 cursor: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    who = await caller(request)
    store = store_of(request)
    try:
        tags = parse_tag_filters([tag]) if tag else []
        page = await run_read(store, lambda: store.list_models(prefix=q or None, tags=tags, limit=PAGE, cursor=cursor))
    except RegistryError as failure:
        return refusal(request, who, failure, q=q, tag=tag)
    more = urlencode({k: v for k, v in {"q": q, "tag": tag, "cursor": page.next_cursor}.items() if v})
    return render(request, "models.html", who, section="models", q=q, tag=tag, page=page, more=more)


@router.get("/models/{name}", response_class=HTMLResponse)
async def model(request: Request, name: str, cursor: Annotated[str | None, Query(max_length=200)] = None,
                moved: Annotated[str | None, Query(max_length=63)] = None,
                to: Annotated[int | None, Query(ge=1, le=schemas.MAX_VERSION)] = None) -> HTMLResponse:
    """``moved``/``to``: the alias move just made, said on the page.  Only an alias name and a number
    are taken from the link, so a link cannot put text of its own on the page."""
    notice = None
    if moved is not None and to is not None:
        try:
            notice = f"{check_alias(moved)} → {to}"
        except InvalidName:
            notice = None
    return await model_page(request, await caller(request), name, cursor, notice=notice)


async def model_page(request: Request, who: Caller, name: str, cursor: str | None = None, *,
                     notice: str | None = None, error: str | None = None, status: int = 200) -> HTMLResponse:
    store = store_of(request)
    try:
        found = await run_read(store, store.get_model, checked(name))
        versions = await run_read(store, lambda: store.list_versions(name, order="desc", limit=PAGE, cursor=cursor))
        aliases = [await run_read(store, _alias_row, store, name, alias, number)
                   for alias, number in sorted(found.aliases.items())]
    except RegistryError as failure:
        return refusal(request, who, failure)
    return render(request, "model.html", who, status, section="models", model=found, versions=versions,
                  aliases=aliases, notice=notice, error=error)


def _alias_row(store: RegistryStore, name: str, alias: str, version: int) -> dict[str, Any]:
    history = store.alias_history(name, alias, limit=1).items
    return {"alias": alias, "version": version, "protection": store.alias_protection(name, alias),
            "last": history[0] if history else None}


@router.post("/models/{name}/aliases", response_class=HTMLResponse)
async def move_alias(request: Request, name: str, alias: Annotated[str, Form(max_length=63)],
                     version: Annotated[str, Form(max_length=12)],
                     csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    """Move an alias with the caller's rights: a read token gets the API's 403, a protected alias
    its rules, and the move is in the audit trail under the caller's token name."""
    check_post(request, csrf)
    who = await caller(request)
    store = store_of(request)
    try:
        checked(name, alias, Invalid)
        if not version.isdigit() or len(version) > 9:
            raise Invalid(f"version {version!r}: give a version number")
        if not scope_allows(who.scope, "write"):
            raise Forbidden(f"this token has scope {who.scope!r}; moving an alias needs 'write'")
        moved = await run_write(store, lambda: store.set_alias(name, alias, int(version), actor=who.identity,
                                                               admin=who.admin))
    except RegistryError as failure:
        return await model_page(request, who, name, error=failure.detail, status=failure.status)
    return RedirectResponse(f"/ui/models/{name}?{urlencode({'moved': alias, 'to': moved.version})}",
                            status_code=303)


@router.get("/models/{name}/aliases/{alias}", response_class=HTMLResponse)
async def alias_page(request: Request, name: str, alias: str,
                     cursor: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    who = await caller(request)
    store = store_of(request)
    try:
        checked(name, alias)
        history = await run_read(store, lambda: store.alias_history(name, alias, limit=PAGE, cursor=cursor))
        protection = await run_read(store, store.alias_protection, name, alias)
    except RegistryError as failure:
        return refusal(request, who, failure)
    return render(request, "alias.html", who, section="models", name=name, alias=alias, history=history,
                  protection=protection)


@router.get("/deployments", response_class=HTMLResponse)
async def deployments(request: Request, model: Annotated[str | None, Query(max_length=63)] = None,
                      version: Annotated[int | None, Query(ge=1, le=schemas.MAX_VERSION)] = None,
                      cluster: Annotated[str | None, Query(max_length=63)] = None,
                      cursor: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    who = await caller(request)
    store = store_of(request)
    try:
        page = await run_read(store, lambda: store.list_deployments(model=model or None, version=version,
                                                                    cluster=cluster or None, limit=PAGE,
                                                                    cursor=cursor))
    except RegistryError as failure:
        return render(request, "deployments.html", who, failure.status, section="deployments", model=model,
                      cluster=cluster, page=schemas.DeploymentPage(items=[]), error=failure.detail)
    more = urlencode({k: v for k, v in {"model": model, "version": version, "cluster": cluster,
                                        "cursor": page.next_cursor}.items() if v})
    return render(request, "deployments.html", who, section="deployments", model=model, cluster=cluster, page=page,
                  more=more)


@router.get("/events", response_class=HTMLResponse)
async def events(request: Request) -> HTMLResponse:
    who = await caller(request)
    store = store_of(request)
    last = await run_read(store, store.last_event_id)
    recent = await run_read(store, store.events_after, max(0, last - 30), 30)
    return render(request, "events.html", who, section="events", recent=list(reversed(recent)), after=last)


@router.get("/events.json")
async def events_feed(request: Request, after: Annotated[int, Query(ge=0, le=2**62)] = 0) -> Response:
    """The page's long-poll, authorized by the sign-in cookie (the API wants a bearer header)."""
    await caller(request)
    page = await long_poll(request, store_of(request), after, timeout=25.0, limit=100)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: Annotated[str, Query(max_length=500)] = "/ui") -> HTMLResponse:
    return render(request, "login.html", Caller("anonymous", "none"), next=_local(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: Annotated[str, Form(max_length=512)],
                next: Annotated[str, Form(max_length=500)] = "/ui",
                csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    check_post(request, csrf)  # no login CSRF: a foreign page cannot sign a visitor in as someone else
    auth: Authenticator = request.app.state.auth
    try:
        await auth.authorize(f"Bearer {token.strip()}", "read")
    except RegistryError as failure:
        return render(request, "login.html", Caller("anonymous", "none"), failure.status, next=_local(next),
                      error=failure.detail)
    answer = RedirectResponse(_local(next), status_code=303)
    answer.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/ui", secure=is_https(request))
    return answer


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    check_post(request, csrf)
    answer = RedirectResponse("/ui", status_code=303)
    answer.delete_cookie(COOKIE, path="/ui")
    return answer


def _local(target: str) -> str:
    """Only this UI's own pages are somewhere to go back to (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui") or "\\" in target:
        return "/ui"
    return target


def checked(name: str, alias: str | None = None, refusal: type[RegistryError] = NotFound) -> str:
    """``name`` (and ``alias``) as names.py allows them, else ``refusal`` saying why: a page path
    that cannot name a model names none (404); a form's field is invalid (422)."""
    try:
        check_model_name(name)
        if alias is not None:
            check_alias(alias)
    except InvalidName as error:
        raise refusal(str(error)) from None
    return name


def refusal(request: Request, who: Caller, failure: RegistryError, **context: Any) -> HTMLResponse:
    """What the store refused, said on the models page with the store's status."""
    return render(request, "models.html", who, failure.status, section="models", page=schemas.ModelPage(items=[]),
                  error=failure.detail, **context)
