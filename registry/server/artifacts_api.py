"""A version's bytes: ``…/artifact`` (the model program) and ``…/bento`` (it, packaged).

Both are streamed in with a declared sha256 (RFC 9530 ``Content-Digest``), hashed
on the way to a temporary object and published only when the digest matches;
both stream back with ETag = digest and single byte ``Range`` support.
"""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from modelyard.registry import schemas
from modelyard.registry.artifacts import (
    ArtifactStore, StoredArtifact, format_content_digest, parse_content_digest, parse_digest,
)
from modelyard.registry.errors import Conflict, NotFound, RangeNotSatisfiable
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import (
    Artifacts, ModelPath, Reader, Store, VersionPath, Writer, delete_blobs, run_read,
)
from modelyard.registry.server.problems import problem_response
from modelyard.registry.server.ranges import parse_range

router = APIRouter(prefix="/models/{name}/versions/{version}", tags=["artifacts"])

ContentDigest = Annotated[str, Header(alias="Content-Digest", description="RFC 9530, e.g. sha-256=:<base64>:")]
_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_UPLOAD_RESPONSES: dict[int | str, dict] = {409: {"model": schemas.Problem}, 422: {"model": schemas.Problem}}
_DOWNLOAD_RESPONSES: dict[int | str, dict] = {
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a range"},
    304: {"description": "not modified"}, 409: {"model": schemas.Problem}, 416: {"model": schemas.Problem},
}


async def receive(request: Request, artifacts: ArtifactStore, content_digest: str) -> StoredArtifact:
    stored = await artifacts.put(parse_content_digest(content_digest), request.stream())
    request.app.state.metrics.artifact_bytes.labels("in").inc(stored.size)
    return stored


async def send(request: Request, artifacts: ArtifactStore, digest: str, what: str) -> Response:
    """Stream the blob ``digest`` back, honouring If-None-Match, Range and If-Range."""
    hex_digest = parse_digest(digest)
    size = await anyio.to_thread.run_sync(artifacts.size, hex_digest)  # a network call on S3
    if size is None:
        raise NotFound(f"the {what} ({digest}) is missing from the artifact store")
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    if etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range and if_range.strip() != etag:
        wanted = None
    try:
        selected = parse_range(wanted, size)
    except RangeNotSatisfiable as exc:
        response = problem_response(exc, request)
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    if selected is None:
        start, end, status = 0, size - 1, 200
        headers["Content-Digest"] = format_content_digest(hex_digest)
    else:
        (start, end), status = selected, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    request.app.state.metrics.artifact_bytes.labels("out").inc(end - start + 1)
    return StreamingResponse(artifacts.open_range(hex_digest, start, end), status_code=status, headers=headers,
                             media_type="application/octet-stream")


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


# -- the model program ------------------------------------------------------------------


@router.put("/artifact", response_model=schemas.Version, openapi_extra=_BINARY_BODY, responses=_UPLOAD_RESPONSES)
async def upload_artifact(name: ModelPath, version: VersionPath, request: Request, store: Store,
                          artifacts: Artifacts, content_digest: ContentDigest, _: Writer) -> schemas.Version:
    """Stream the artifact in; the version becomes ``ready`` only when its sha256 matches
    ``Content-Digest`` (on mismatch: 422, nothing stored, the version stays ``pending``)."""
    parse_content_digest(content_digest)  # a malformed header is refused before any byte is read
    await run_read(store, store.check_uploadable, name, version)
    stored = await receive(request, artifacts, content_digest)
    return await run_write(store, store.mark_ready, name, version, f"sha256:{stored.digest}", stored.size)


@router.head("/artifact", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES,
             operation_id="head_artifact")
@router.get("/artifact", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES,
            operation_id="download_artifact")
async def download_artifact(name: ModelPath, version: VersionPath, request: Request, store: Store,
                            artifacts: Artifacts, _: Reader) -> Response:
    """Stream the artifact back (ETag = digest, single byte ``Range``)."""
    found = await run_read(store, store.get_version, name, version)
    if found.status != schemas.VersionStatus.ready or not found.digest:
        raise Conflict(f"version {version} of model {name!r} is {found.status.value}: its artifact is not uploaded")
    return await send(request, artifacts, found.digest, f"artifact of {name}:{version}")


# -- the packaged Bento -------------------------------------------------------------------


@router.put("/bento", response_model=schemas.Version, openapi_extra=_BINARY_BODY, responses=_UPLOAD_RESPONSES)
async def upload_bento(name: ModelPath, version: VersionPath, request: Request, store: Store,
                       artifacts: Artifacts, content_digest: ContentDigest, _: Writer,
                       tag: Annotated[schemas.BentoTag, Query(description="the Bento's tag, NAME:VERSION")]
                       ) -> schemas.Version:
    """Stream in the version's exported ``.bento`` (made by ``modelyard package``); recorded
    only when its sha256 matches.  The same Bento twice is a no-op; another one is a 409."""
    parse_content_digest(content_digest)
    current = await run_read(store, store.get_version, name, version)
    if current.status != schemas.VersionStatus.ready:
        raise Conflict(f"version {version} of model {name!r} is {current.status.value}: upload its artifact first")
    stored = await receive(request, artifacts, content_digest)
    return await run_write(store, store.mark_packaged, name, version, tag, f"sha256:{stored.digest}", stored.size)


@router.head("/bento", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES, operation_id="head_bento")
@router.get("/bento", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES,
            operation_id="download_bento")
async def download_bento(name: ModelPath, version: VersionPath, request: Request, store: Store,
                         artifacts: Artifacts, _: Reader) -> Response:
    found = await run_read(store, store.get_version, name, version)
    if found.bento is None:
        raise NotFound(f"{name}:{version} is not packaged yet (run `modelyard package {name}:{version}`)")
    return await send(request, artifacts, found.bento.digest, f"Bento of {name}:{version}")


@router.delete("/bento", status_code=204, response_class=Response)
async def delete_bento(name: ModelPath, version: VersionPath, store: Store, artifacts: Artifacts,
                       _: Writer) -> Response:
    """Forget the version's Bento (to package it again)."""
    await delete_blobs(artifacts, await run_write(store, store.clear_bento, name, version))
    return Response(status_code=204)
