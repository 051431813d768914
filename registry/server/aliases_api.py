"""``/models/{name}/aliases/{alias}``: movable names for versions (``production`` …), their
protection rules and their audit trail."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import NotFound
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import (Admin, AliasPath, Cursor, Limit, ModelPath, Reader, Reporter, Store,
                                            Writer, run_read)

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])


@router.put("/{alias}", response_model=schemas.Alias,
            responses={403: {"model": schemas.Problem, "description": "a protected alias: which rule failed"}})
async def set_alias(name: ModelPath, alias: AliasPath, body: schemas.AliasSet, store: Store,
                    who: Reporter) -> schemas.Alias:
    """Point the alias at a ready version; operators following it roll the new version out.  A
    protected alias moves for admin tokens, or to a version meeting its rules.  A cluster's operator
    (its report token) moves an alias on its canary evidence only: to revert a failed canary, or to
    promote a version whose protection rules read that cluster's canary evidence."""
    operator_cluster = who.reporting_cluster() if who.scope == "report" else None
    return await run_write(store, lambda: store.set_alias(name, alias, body.version, actor=who.identity,
                                                          admin=who.admin, operator_cluster=operator_cluster))


@router.get("/{alias}", response_model=None, responses={200: {"model": schemas.Alias}})
async def get_alias(name: ModelPath, alias: AliasPath, request: Request, _: Reader) -> Response:
    """The operator's hot path: serialized straight from the store's answer, which is
    already a validated ``Alias`` (FastAPI would otherwise validate it a second time)."""
    store = request.app.state.store
    found = store.cached_alias(name, alias) or await run_read(store, store.get_alias, name, alias)
    return Response(found.model_dump_json(), media_type="application/json")


@router.delete("/{alias}", status_code=204, response_class=Response)
async def delete_alias(name: ModelPath, alias: AliasPath, store: Store, who: Writer) -> Response:
    await run_write(store, lambda: store.delete_alias(name, alias, actor=who.identity, admin=who.admin))
    return Response(status_code=204)


@router.get("/{alias}/history", response_model=schemas.AliasMovePage)
async def alias_history(name: ModelPath, alias: AliasPath, store: Store, _: Reader, limit: Limit = 100,
                        cursor: Cursor = None) -> schemas.Page[schemas.AliasMove]:
    """Every move of the alias, newest first: who, from which version to which, when."""
    return await run_read(store, lambda: store.alias_history(name, alias, limit=limit, cursor=cursor))


@router.get("/{alias}/protection", response_model=schemas.AliasProtection)
async def get_protection(name: ModelPath, alias: AliasPath, store: Store, _: Reader) -> schemas.AliasProtection:
    found = await run_read(store, store.alias_protection, name, alias)
    if found is None:
        raise NotFound(f"alias {alias!r} of model {name!r} is not protected")
    return found


@router.put("/{alias}/protection", response_model=schemas.AliasProtection)
async def protect(name: ModelPath, alias: AliasPath, body: schemas.AliasProtection, store: Store,
                  _: Admin) -> schemas.AliasProtection:
    """Protect the alias (admin): moving it then needs admin scope, or a version meeting every rule."""
    return await run_write(store, store.protect_alias, name, alias, body)


@router.delete("/{alias}/protection", status_code=204, response_class=Response)
async def unprotect(name: ModelPath, alias: AliasPath, store: Store, _: Admin) -> Response:
    await run_write(store, store.unprotect_alias, name, alias)
    return Response(status_code=204)
