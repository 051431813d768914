"""``/models/{name}/aliases/{alias}``: movable names for versions (``production`` …)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from modelyard.registry import schemas
from modelyard.registry.server.deps import AliasPath, ModelPath, Reader, Store, Writer

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])


@router.put("/{alias}", response_model=schemas.Alias)
def set_alias(name: ModelPath, alias: AliasPath, body: schemas.AliasSet, store: Store, _: Writer) -> schemas.Alias:
    """Point the alias at a ready version; operators following it roll the new version out."""
    return store.set_alias(name, alias, body.version)


@router.get("/{alias}", response_model=schemas.Alias)
def get_alias(name: ModelPath, alias: AliasPath, store: Store, _: Reader) -> schemas.Alias:
    return store.get_alias(name, alias)


@router.delete("/{alias}", status_code=204, response_class=Response)
def delete_alias(name: ModelPath, alias: AliasPath, store: Store, _: Writer) -> Response:
    store.delete_alias(name, alias)
    return Response(status_code=204)
