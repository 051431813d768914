"""Verifying an OpenSSF model signature (a Sigstore bundle over an in-toto manifest of each file's
digest) against trust roots, and its manifest against the bytes a version holds.

The registry and the pod both use this: the registry when a signature is uploaded, the pod before
it loads a byte.  Neither has the model as the directory ``model_signing.verifying`` hashes (the
registry holds one archive, the pod has already hashed each file while checking the download), so
the bundle is verified with model_signing's verifiers and its manifest compared with digests
computed once, here, by name.  A manifest's names are only compared, never opened.

Signatures made with file serialization and sha256 are accepted (model_signing's default, and
what ``modelyard push --sign-key`` makes); others are refused with that advice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509

from modelyard.registry.kernel import defaults
from modelyard.registry.signing.trust import CERTIFICATE, KEY, certificate_identities

SINGLE_FILE = "."
"""The name model_signing gives the one file of a signed single-file model."""


class SignatureRefused(ValueError):
    """The bundle does not prove what it must; the message says why (which key, which file)."""


@dataclass(frozen=True)
class TrustRoot:
    """A trust store entry as the verifier needs it."""

    name: str
    method: str
    pem: str
    fingerprint: str
    identity: str | None = None


@dataclass(frozen=True)
class VerifiedBundle:
    signers: tuple[TrustRoot, ...]
    """The trust store entries that verified it (their fingerprint: the material that did)."""
    files: dict[str, str]
    """Each signed file's name → its sha256 (hex)."""


class _Material:
    """What model_signing reads from a ``pathlib.Path`` (``read_text``/``read_bytes``), held in memory:
    a bundle or trust root comes from a request or the database, not from a file."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read_bytes(self) -> bytes:
        return self._data

    def read_text(self, encoding: str = "utf-8") -> str:
        return self._data.decode(encoding)


def read_bundle(data: bytes) -> Any:
    """The bundle as model_signing reads it, or ``SignatureRefused`` for anything that is not one."""
    from model_signing._signing import sign_sigstore_pb

    if len(data) > defaults.SIGNATURE_MAX_BYTES:
        raise SignatureRefused(f"the signature is larger than {defaults.SIGNATURE_MAX_BYTES} bytes")
    try:
        parsed = json.loads(data)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("verificationMaterial"), dict):
            raise ValueError("no verificationMaterial")
        return sign_sigstore_pb.Signature.read(_Material(data))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same answer
        raise SignatureRefused(f"not an OpenSSF model signature bundle ({str(exc)[:200]})") from None


@lru_cache(maxsize=defaults.TRUST_ROOTS_MAX)
def _verifier(method: str, pem: str) -> Any:
    from model_signing._signing import sign_certificate, sign_ec_key

    if method == KEY:
        return sign_ec_key.Verifier(_Material(pem.encode()))  # type: ignore[arg-type]
    return sign_certificate.Verifier([_Material(pem.encode())])  # type: ignore[list-item]


def verify_bundle(data: bytes, roots: Sequence[TrustRoot]) -> VerifiedBundle:
    """Every trust root that verifies the bundle, and the manifest it signs; ``SignatureRefused``
    when none does (naming the key it was made with) or the manifest is not one we can check."""
    signature = read_bundle(data)
    material = signature.bundle.verification_material
    chain = material.x509_certificate_chain
    if chain is not None and chain.certificates:
        candidates = [root for root in roots if root.method == CERTIFICATE]
        leaf_identities = _leaf_identities(chain.certificates[0].raw_bytes)
        what = f"a certificate for {', '.join(sorted(leaf_identities)) or 'no named identity'}"
    elif material.public_key is not None:
        hint = material.public_key.hint
        if not hint:
            raise SignatureRefused("the bundle does not say which key signed it (no public key hint): sign it "
                                   "again with model-signing 1.0 or later")
        candidates = [root for root in roots if root.method == KEY and root.fingerprint == hint]
        leaf_identities, what = set(), f"the key with hint {hint}"
    else:
        raise SignatureRefused("the bundle is signed neither with a key nor with a certificate chain: keyless "
                               "Sigstore signatures are not verified by this registry")
    signers, manifest, errors = [], None, []
    for root in candidates:
        if root.identity is not None and root.identity not in leaf_identities:
            errors.append(f"{root.name} requires identity {root.identity}")
            continue
        try:
            verified = _verifier(root.method, root.pem).verify(signature)
        except Exception as exc:  # noqa: BLE001 - cryptography, OpenSSL and payload errors alike
            errors.append(f"{root.name}: {str(exc)[:200] or type(exc).__name__}")
            continue
        manifest = verified
        signers.append(root)
    if not signers:
        why = f" ({'; '.join(errors[:5])})" if errors else ""
        raise SignatureRefused(f"the signature is made with {what}, which no trusted signer vouches for{why}")
    return VerifiedBundle(tuple(signers), _signed_files(manifest))


def _leaf_identities(der: bytes) -> set[str]:
    try:
        return certificate_identities(x509.load_der_x509_certificate(der))
    except ValueError as exc:
        raise SignatureRefused(f"the bundle's signing certificate is unreadable ({exc})") from None


def _signed_files(manifest: Any) -> dict[str, str]:
    serialization = manifest.serialization_type
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        raise SignatureRefused(f"the signature hashes with {serialization.get('method')}/"
                               f"{serialization.get('hash_type')}; sign with file serialization and sha256 "
                               "(model_signing's default)")
    files: dict[str, str] = {}
    for descriptor in manifest.resource_descriptors():
        if descriptor.digest.algorithm != "sha256":
            raise SignatureRefused(f"{str(descriptor.identifier)[:200]!r} is hashed with "
                                   f"{descriptor.digest.algorithm}, not sha256")
        files[str(descriptor.identifier)] = descriptor.digest.digest_hex
    return files


def check_single_file(bundle: VerifiedBundle, sha256_hex: str, what: str) -> None:
    """The bundle signs one file, with exactly these bytes (a program or a ``.bento``; its name is the
    signer's, so only the bytes count)."""
    if len(bundle.files) != 1:
        raise SignatureRefused(f"the signature covers {len(bundle.files)} files; {what} is one file: sign the "
                               "file itself")
    (name, digest), = bundle.files.items()
    if digest != sha256_hex:
        raise SignatureRefused(f"the signature does not match {what}: it signs a file with sha256 {digest}, "
                               f"{what} has sha256 {sha256_hex}")


def check_files(bundle: VerifiedBundle, actual: Mapping[str, str], what: str) -> None:
    """The bundle signs exactly ``actual``'s files (name → sha256), no more and no fewer."""
    added = sorted(set(actual) - set(bundle.files))
    missing = sorted(set(bundle.files) - set(actual))
    differences = ([f"{what} has files the signature does not cover: {_names(added)}"] if added else []) + (
        [f"the signature covers files {what} does not have: {_names(missing)}"] if missing else [])
    if differences:
        raise SignatureRefused("; ".join(differences))
    for name in sorted(actual):
        if actual[name] != bundle.files[name]:
            raise SignatureRefused(f"{name} in {what} does not match the signature (sha256 {actual[name]}, signed "
                                   f"{bundle.files[name]})")


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name[:200]) for name in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
