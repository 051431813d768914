"""``/models``: registered models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.names import ALIAS_PATTERN
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import (
    Admin, Artifacts, Cursor, Force, Limit, ModelPath, Reader, Store, TagFilter, Writer, created,
    parse_tag_filters, run_read,
)
from modelyard.registry.server.uploads import collect_garbage

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=201, response_model=None, responses={201: {"model": schemas.Model}})
async def create_model(body: schemas.ModelCreate, store: Store, _: Writer) -> Response:
    model = await run_write(store, store.create_model, body.name, body.description, body.tags)
    return created(model, f"/api/v1/models/{model.name}")


@router.get("", response_model=schemas.ModelPage)
async def list_models(
    store: Store, _: Reader, limit: Limit = 100, cursor: Cursor = None,
    prefix: Annotated[str | None, Query(max_length=63, description="name prefix")] = None,
    tag: TagFilter = [],  # noqa: B006 - FastAPI copies defaults
    alias: Annotated[str | None, Query(pattern=ALIAS_PATTERN, max_length=63,
                                       description="only models having this alias")] = None,
) -> schemas.Page[schemas.Model]:
    tags = parse_tag_filters(tag)
    return await run_read(store, lambda: store.list_models(prefix=prefix, tags=tags, alias=alias, limit=limit,
                                                           cursor=cursor))


@router.get("/{name}", response_model=schemas.Model)
async def get_model(name: ModelPath, store: Store, _: Reader) -> schemas.Model:
    return await run_read(store, store.get_model, name)


@router.patch("/{name}", response_model=schemas.Model)
async def update_model(name: ModelPath, body: schemas.ModelUpdate, store: Store, _: Writer) -> schemas.Model:
    return await run_write(store, lambda: store.update_model(name, description=body.description, tags=body.tags))


@router.delete("/{name}", status_code=204, response_class=Response)
async def delete_model(name: ModelPath, store: Store, artifacts: Artifacts, _: Admin,
                       force: Force = False) -> Response:
    """Delete a model with all its versions (admin scope); refused while it has aliases, or while a
    deployment serves one of its versions (unless ``force``)."""
    await collect_garbage(store, artifacts, await run_write(store, lambda: store.remove_model(name, force=force)))
    return Response(status_code=204)
