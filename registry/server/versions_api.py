"""``/models/{name}/versions``: model versions and their metadata."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Response

from modelyard.registry import schemas
from modelyard.registry.server.deps import (
    Artifacts, Cursor, Limit, ModelPath, Reader, Store, TagFilter, VersionPath, Writer, parse_tag_filters,
)

router = APIRouter(prefix="/models/{name}/versions", tags=["versions"])


@router.post("", status_code=201, response_model=schemas.Version)
def create_version(name: ModelPath, store: Store, response: Response, who: Writer,
                   body: schemas.VersionCreate | None = None) -> schemas.Version:
    """Allocate the next version number (status ``pending`` until its artifact is uploaded)."""
    version = store.create_version(name, body or schemas.VersionCreate(), created_by=who)
    response.headers["Location"] = f"/api/v1/models/{name}/versions/{version.version}"
    return version


@router.get("", response_model=schemas.Page[schemas.Version])
def list_versions(
    name: ModelPath, store: Store, _: Reader, limit: Limit = 100, cursor: Cursor = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by version number")] = "asc",
    status: Annotated[schemas.VersionStatus | None, Query()] = None,
    tag: TagFilter = [],  # noqa: B006
) -> schemas.Page[schemas.Version]:
    return store.list_versions(name, order=order, status=status.value if status else None,
                               tags=parse_tag_filters(tag), limit=limit, cursor=cursor)


@router.get("/{version}", response_model=schemas.Version)
def get_version(name: ModelPath, version: VersionPath, store: Store, _: Reader) -> schemas.Version:
    return store.get_version(name, version)


@router.patch("/{version}", response_model=schemas.Version)
def update_version(name: ModelPath, version: VersionPath, body: schemas.VersionUpdate, store: Store,
                   _: Writer) -> schemas.Version:
    return store.update_version(name, version, body)


@router.delete("/{version}", status_code=204, response_class=Response)
async def delete_version(name: ModelPath, version: VersionPath, store: Store, artifacts: Artifacts,
                         _: Writer) -> Response:
    """Delete a version; refused (409) while an alias points at it."""
    for digest in await anyio.to_thread.run_sync(store.delete_version, name, version):
        await anyio.to_thread.run_sync(artifacts.delete, digest.removeprefix("sha256:"))
    return Response(status_code=204)
