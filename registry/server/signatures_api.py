"""Signed versions: ``…/versions/{v}/signature`` (upload an OpenSSF model signature, verified before it is
recorded), ``…/versions/{v}/signatures/{signer}`` (a recorded bundle), and ``/trust`` (the signers the
registry trusts; admin to change, public material readable by any reader, the pods included).

A signature is recorded only when a trusted signer's key or CA verifies it and its manifest names
exactly the version's stored bytes: one file with the artifact's sha256, or for a model directory
each file of the stored archive by the name a pod extracts it under.  Anything else is a 422 that
says why (which key, which file); nothing is recorded.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Request, Response

from modelyard.registry.artifacts import ArtifactStore, format_content_digest, parse_content_digest, parse_digest
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.errors import Conflict, DigestMismatch, Invalid, PayloadTooLarge
from modelyard.registry.kernel.names import NAME_PATTERN
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import Admin, Artifacts, ModelPath, Reader, Store, VersionPath, Writer, run_read
from modelyard.registry.signing.archive_files import archive_file_digests
from modelyard.registry.signing.bundles import (
    SignatureRefused, TrustRoot, VerifiedBundle, check_files, check_single_file, verify_bundle,
)

router = APIRouter(tags=["signatures"])
SignerPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="trust store name")]
_JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it passes ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the signature is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the signature is larger than {limit} bytes")
    return bytes(body)


def verify_for_version(artifacts: ArtifactStore, version: schemas.Version, data: bytes,
                       roots: list[TrustRoot]) -> VerifiedBundle:
    """The bundle verified by the trust store and matched to the version's stored bytes; 422 otherwise."""
    label = f"{version.model}:{version.version}"
    assert version.digest is not None
    try:
        verified = verify_bundle(data, roots)
        if version.format == schemas.ArtifactFormat.hf:
            with artifacts.open(parse_digest(version.digest)) as file:
                check_files(verified, archive_file_digests(file), f"the model directory of {label}")
        else:
            check_single_file(verified, parse_digest(version.digest), f"the artifact of {label}")
    except SignatureRefused as exc:
        raise Invalid(f"signature refused: {exc}; nothing was recorded") from None
    return verified


@router.put("/models/{name}/versions/{version}/signature", response_model=schemas.Version,
            openapi_extra=_JSON_BODY,
            responses={413: {"model": schemas.Problem}, 422: {"model": schemas.Problem, "description":
                       "unverifiable: unknown key, a manifest that does not match the bytes (which file)"}})
async def upload_signature(name: ModelPath, version: VersionPath, request: Request, store: Store,
                           artifacts: Artifacts, who: Writer,
                           content_digest: Annotated[str, Header(alias="Content-Digest")]) -> schemas.Version:
    """Upload an OpenSSF model signature bundle (JSON, at most 1 MiB, its sha256 in ``Content-Digest``).
    It is recorded under every trusted signer that verifies it, replacing that signer's earlier one
    (``version.signed``)."""
    expected = parse_content_digest(content_digest)
    data = await read_bounded(request, defaults.SIGNATURE_MAX_BYTES)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DigestMismatch(f"the signature's sha256 is {actual}, not {expected} as declared; nothing was recorded")
    current = await run_read(store, store.get_version, name, version)
    if current.status != schemas.VersionStatus.ready or not current.digest:
        raise Conflict(f"version {version} of model {name!r} is {current.status.value}: upload its artifact first")
    roots = await run_read(store, store.trust_roots)
    if not roots:
        raise Invalid("signature refused: the registry trusts no signer yet (`modelyard registry trust add`); "
                      "nothing was recorded")
    verified = await anyio.to_thread.run_sync(verify_for_version, artifacts, current, data, roots)
    return await run_write(store, partial(store.record_signature, name, version, digest=current.digest,
                                          signers=verified.signers, bundle=data, bundle_digest=f"sha256:{actual}",
                                          uploaded_by=who.identity))


@router.get("/models/{name}/versions/{version}/signatures/{signer}", response_class=Response,
            responses={200: {"content": {"application/json": {}}}})
async def get_signature(name: ModelPath, version: VersionPath, signer: SignerPath, store: Store,
                        _: Reader) -> Response:
    """The bundle ``signer`` verified, byte for byte as uploaded (its digest is in the version's answer)."""
    bundle = await run_read(store, store.signature_bundle, name, version, signer)
    return Response(bundle, media_type="application/json",
                    headers={"Content-Digest": format_content_digest(hashlib.sha256(bundle).hexdigest())})


@router.get("/trust", response_model=list[schemas.TrustRoot])
async def list_trust(store: Store, _: Reader) -> list[schemas.TrustRoot]:
    """The signers the registry trusts, with their public keys or CA certificates."""
    return await run_read(store, store.list_trust_roots)


@router.put("/trust/{signer}", status_code=201, response_model=schemas.TrustRoot)
async def add_trust(signer: SignerPath, body: schemas.TrustRootCreate, store: Store, who: Admin) -> schemas.TrustRoot:
    """Trust a signer (admin): its elliptic-curve public key, or the CA that issues its certificates."""
    return await run_write(store, lambda: store.add_trust_root(signer, body, created_by=who.identity))


@router.delete("/trust/{signer}", status_code=204, response_class=Response)
async def remove_trust(signer: SignerPath, store: Store, _: Admin) -> Response:
    """Stop trusting a signer (admin): what it signed stays listed, untrusted, and ``signed-by`` rules stop
    counting it."""
    await run_write(store, store.remove_trust_root, signer)
    return Response(status_code=204)
