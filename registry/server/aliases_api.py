"""``/models/{name}/aliases/{alias}``: movable names for versions (``production`` …)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from modelyard.registry import schemas
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import AliasPath, ModelPath, Reader, Store, Writer, run_read

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])


@router.put("/{alias}", response_model=schemas.Alias)
async def set_alias(name: ModelPath, alias: AliasPath, body: schemas.AliasSet, store: Store,
                    _: Writer) -> schemas.Alias:
    """Point the alias at a ready version; operators following it roll the new version out."""
    return await run_write(store, store.set_alias, name, alias, body.version)


@router.get("/{alias}", response_model=None, responses={200: {"model": schemas.Alias}})
async def get_alias(name: ModelPath, alias: AliasPath, request: Request, _: Reader) -> Response:
    """The operator's hot path: serialized straight from the store's answer, which is
    already a validated ``Alias`` (FastAPI would otherwise validate it a second time)."""
    store = request.app.state.store
    found = await run_read(store, store.get_alias, name, alias)
    return Response(found.model_dump_json(), media_type="application/json")


@router.delete("/{alias}", status_code=204, response_class=Response)
async def delete_alias(name: ModelPath, alias: AliasPath, store: Store, _: Writer) -> Response:
    await run_write(store, store.delete_alias, name, alias)
    return Response(status_code=204)
