"""``/models/{name}/versions``: model versions and their metadata."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import Forbidden
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import (
    Artifacts, Cursor, Force, Limit, ModelPath, Reader, Store, TagFilter, VersionPath, Writer, created,
    parse_tag_filters, run_read,
)
from modelyard.registry.server.uploads import collect_garbage

router = APIRouter(prefix="/models/{name}/versions", tags=["versions"])


@router.post("", status_code=201, response_model=None, responses={201: {"model": schemas.Version}})
async def create_version(name: ModelPath, store: Store, who: Writer,
                         body: schemas.VersionCreate | None = None) -> Response:
    """Allocate the next version number (status ``pending`` until its artifact is uploaded)."""
    body = body or schemas.VersionCreate()
    version = await run_write(store, lambda: store.create_version(
        name, format=body.format.value if body.format else None, description=body.description, metadata=body.metadata,
        metrics=body.metrics, tags=body.tags, source=body.source, created_by=who.identity))
    return created(version, f"/api/v1/models/{name}/versions/{version.version}")


@router.get("", response_model=schemas.VersionPage)
async def list_versions(
    name: ModelPath, store: Store, _: Reader, limit: Limit = 100, cursor: Cursor = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by version number")] = "asc",
    status: Annotated[schemas.VersionStatus | None, Query()] = None,
    tag: TagFilter = [],  # noqa: B006
) -> schemas.Page[schemas.Version]:
    tags = parse_tag_filters(tag)
    return await run_read(store, lambda: store.list_versions(name, order=order, status=status.value if status else None,
                                                             tags=tags, limit=limit, cursor=cursor))


@router.get("/{version}", response_model=None, responses={200: {"model": schemas.Version}})
async def get_version(name: ModelPath, version: VersionPath, request: Request, _: Reader) -> Response:
    """Hot for the operator and the pod runtime; serialized once per answer the read cache holds."""
    store = request.app.state.store
    found = store.cached_version(name, version) or await run_read(store, store.get_version, name, version)
    return Response(found.json_bytes(), media_type="application/json")


@router.patch("/{version}", response_model=schemas.Version)
async def update_version(name: ModelPath, version: VersionPath, body: schemas.VersionUpdate, store: Store,
                         _: Writer) -> schemas.Version:
    return await run_write(store, lambda: store.update_version(name, version, description=body.description,
                                                               metrics=body.metrics, tags=body.tags))


@router.delete("/{version}", status_code=204, response_class=Response)
async def delete_version(name: ModelPath, version: VersionPath, store: Store, artifacts: Artifacts,
                         who: Writer, force: Force = False) -> Response:
    """Delete a version; refused (409) while an alias points at it, or while a deployment serves it
    (``force``, with an admin token, overrides the latter)."""
    if force and not who.admin:
        raise Forbidden("force needs an admin token")
    await collect_garbage(store, artifacts, await run_write(store, lambda: store.remove_version(
        name, version, force=force)))
    return Response(status_code=204)
