"""``/models/{name}/versions/{v}/artifact``: streaming, digest-checked upload and download."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from modelyard.registry import schemas
from modelyard.registry.artifacts import format_content_digest, parse_content_digest, parse_digest
from modelyard.registry.errors import Conflict, NotFound, RangeNotSatisfiable
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import Artifacts, ModelPath, Reader, Store, VersionPath, Writer, run_read
from modelyard.registry.server.problems import problem_response
from modelyard.registry.server.ranges import parse_range

router = APIRouter(prefix="/models/{name}/versions/{version}/artifact", tags=["artifacts"])

_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put("", response_model=schemas.Version, openapi_extra=_BINARY_BODY,
            responses={409: {"model": schemas.Problem}, 422: {"model": schemas.Problem}})
async def upload_artifact(
    name: ModelPath, version: VersionPath, request: Request, store: Store, artifacts: Artifacts, _: Writer,
    content_digest: Annotated[str, Header(alias="Content-Digest",
                                          description="RFC 9530, e.g. sha-256=:<base64>:")],
) -> schemas.Version:
    """Stream the artifact in.  It is hashed while it streams to a temporary object and
    published, and the version made ``ready``, only when its sha256 matches
    ``Content-Digest``; on mismatch nothing is stored and the answer is 422."""
    expected = parse_content_digest(content_digest)
    await run_read(store, store.check_uploadable, name, version)
    stored = await artifacts.put(expected, request.stream())
    request.app.state.metrics.artifact_bytes.labels("in").inc(stored.size)
    return await run_write(store, store.mark_ready, name, version, f"sha256:{stored.digest}", stored.size)


_DOWNLOAD_RESPONSES: dict[int | str, dict] = {
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a range"},
    304: {"description": "not modified"}, 409: {"model": schemas.Problem}, 416: {"model": schemas.Problem},
}


@router.head("", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES, operation_id="head_artifact")
@router.get("", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES, operation_id="download_artifact")
async def download_artifact(
    name: ModelPath, version: VersionPath, request: Request, store: Store, artifacts: Artifacts, _: Reader,
) -> Response:
    """Stream the artifact back; ETag is its digest, and single byte ``Range``s are honoured."""
    found = await run_read(store, store.get_version, name, version)
    if found.status != schemas.VersionStatus.ready or not found.digest:
        raise Conflict(f"version {version} of model {name!r} is {found.status.value}: its artifact is not uploaded")
    hex_digest = parse_digest(found.digest)
    size = await anyio.to_thread.run_sync(artifacts.size, hex_digest)
    if size is None:
        raise NotFound(f"the artifact of {name}:{version} ({found.digest}) is missing from the artifact store")
    etag = f'"{found.digest}"'
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
