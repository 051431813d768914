"""A version's bytes: ``…/artifact`` (the model program) and ``…/bento`` (it, packaged).

Both are streamed in with a declared sha256 (RFC 9530 ``Content-Digest``), hashed
on the way to a temporary object and published only when the digest matches;
both stream back with ETag = digest and single byte ``Range`` support.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from modelyard.registry.kernel import schemas
from modelyard.registry.artifacts import (
    ArtifactStore, StoredArtifact, format_content_digest, parse_content_digest, parse_digest,
)
from modelyard.registry.model.bento_source import ForeignBento, check_bento_source
from modelyard.registry.kernel.errors import Conflict, Invalid, NotFound, RangeNotSatisfiable
from modelyard.registry.model.formats import UnsupportedArtifact, read_artifact
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import Artifacts, ModelPath, Reader, Store, VersionPath, Writer, run_read
from modelyard.registry.server.problems import problem_response
from modelyard.registry.server.ranges import parse_range
from modelyard.registry.server.uploads import claimed, collect_garbage

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


async def receive(request: Request, artifacts: ArtifactStore, expected_hex: str) -> StoredArtifact:
    stored = await artifacts.put(expected_hex, request.stream())
    request.app.state.metrics.artifact_bytes.labels("in").inc(stored.size)
    return stored


def inspect_artifact(artifacts: ArtifactStore, hex_digest: str, version: schemas.Version,
                     label: str) -> tuple[str, dict[str, Any] | None]:
    """The stored artifact's kind and the facts the registry records from its bytes; 422 when it
    is none of the formats, is not safe to load (pickles, native code, model code the version did
    not allow) or is not what the version declared.

    A model directory's facts (``metadata.hf``) are read here from the stored archive and replace
    whatever the client sent, except ``allow_code``, which is the pusher's decision."""
    declared = version.format
    claimed = version.metadata.get("hf")
    allow_code = isinstance(claimed, dict) and claimed.get("allow_code") is True
    try:
        with artifacts.open(hex_digest) as file:
            artifact = read_artifact(file, label, allow_code=allow_code)
    except UnsupportedArtifact as exc:
        raise Invalid(f"{exc}; nothing was stored") from None
    if declared is not None and declared.value != artifact.kind:
        raise Invalid(f"{label} was declared {declared.value} but the file is {artifact.kind}; nothing was stored")
    return artifact.kind, None if artifact.hf is None else {"hf": artifact.hf.metadata()}


def check_bento_is_the_artifact(expected_hex: str, version: schemas.Version, label: str) -> None:
    """A version in format bento is packaged as its own artifact: decided from the declared digest,
    before a byte is read."""
    if f"sha256:{expected_hex}" != version.digest:
        raise Invalid(f"{label} is not {version.model}:{version.version}'s artifact ({version.digest}): the "
                      "Bento of a version in format bento is its artifact itself; nothing was stored")


def inspect_bento(artifacts: ArtifactStore, hex_digest: str, version: schemas.Version, label: str) -> None:
    """422 unless the stored model Bento was built from exactly this version (see ``bento_source``)."""
    try:
        with artifacts.open(hex_digest) as file:
            check_bento_source(file, model=version.model, version=version.version, digest=str(version.digest),
                               format=version.format.value if version.format else None,
                               metadata=version.metadata, label=label)
    except ForeignBento as exc:
        raise Invalid(f"{exc}; nothing was stored") from None


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
    ``Content-Digest`` and the file is a model program that is safe to load (else 422, nothing
    stored, the version stays ``pending``)."""
    expected = parse_content_digest(content_digest)  # a malformed header is refused before any byte is read
    current = await run_read(store, store.check_uploadable, name, version)
    async with claimed(store, artifacts, expected) as claim:
        stored = await receive(request, artifacts, expected)
        kind, facts = await anyio.to_thread.run_sync(inspect_artifact, artifacts, stored.digest, current,
                                                     f"the artifact of {name}:{version}")
        return await run_write(store, partial(store.mark_ready, name, version, f"sha256:{stored.digest}",
                                              stored.size, format=kind, claim=claim, facts=facts))


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
    only when its sha256 matches and it was built from exactly this version's artifact (else
    422).  The same Bento twice is a no-op; another one is a 409."""
    expected = parse_content_digest(content_digest)
    current = await run_read(store, store.get_version, name, version)
    if current.status != schemas.VersionStatus.ready:
        raise Conflict(f"version {version} of model {name!r} is {current.status.value}: upload its artifact first")
    label = f"the Bento uploaded for {name}:{version}"
    is_artifact = current.format == schemas.ArtifactFormat.bento
    if is_artifact:
        check_bento_is_the_artifact(expected, current, label)
    async with claimed(store, artifacts, expected) as claim:
        stored = await receive(request, artifacts, expected)
        if not is_artifact:
            await anyio.to_thread.run_sync(inspect_bento, artifacts, stored.digest, current, label)
        return await run_write(store, partial(store.mark_packaged, name, version, tag, f"sha256:{stored.digest}",
                                              stored.size, claim=claim))


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
    """Forget the version's Bento (to package it again); emits ``version.unpackaged``."""
    await collect_garbage(store, artifacts, await run_write(store, store.clear_bento, name, version))
    return Response(status_code=204)
