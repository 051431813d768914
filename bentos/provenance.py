"""The pod's own check of a version's signature, before a byte of it is loaded.

Where the deployment requires a signature (``MODELYARD_REQUIRE_SIGNATURE``, ``MODELYARD_SIGNERS``),
the runtime verifies one with the same code the registry used (``registry.signing.bundles``), but
with trust roots of its own: a Secret mounted at ``MODELYARD_TRUST_DIR`` when the spec names one
(independent of the registry), else the registry's trust store read with the pod's token.  The
manifest is matched to what was fetched: the digest-checked program, or for a model directory the
sha256 of each extracted file (the runtime's file manifest, which the server checks again before it
loads the weights).  A refusal says ``SignatureRequired`` (no signature from a required signer) or
``SignatureInvalid`` (none verifies), which the operator reads from the pod as its reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.digests import parse_digest
from modelyard.registry.kernel.errors import RegistryError
from modelyard.registry.signing.bundles import (
    SignatureRefused, TrustRoot, check_files, check_single_file, verify_bundle,
)
from modelyard.registry.signing.trust import read_ca_certificates, read_public_key

KEY_SUFFIX, CA_SUFFIX = ".pub", ".ca.pem"


class SignatureNotAccepted(ValueError):
    """The version may not be served here; the message starts with the reason the operator reports."""


@dataclass(frozen=True)
class SignaturePolicy:
    required: bool = False
    signers: tuple[str, ...] = ()
    trust_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SignaturePolicy:
        signers = tuple(name.strip() for name in env.get(Env.SIGNERS, "").split(",") if name.strip())
        required = env.get(Env.REQUIRE_SIGNATURE, "").lower() in ("1", "true", "yes", "on") or bool(signers)
        trust_dir = env.get(Env.TRUST_DIR)
        return cls(required, signers, Path(trust_dir) if trust_dir else None)


def trust_roots_from(directory: Path) -> list[TrustRoot]:
    """``NAME.pub`` (a public key) and ``NAME.ca.pem`` (CA certificates) files: a mounted Secret's keys."""
    roots = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # a Secret volume's ..data links
        for suffix, read in ((CA_SUFFIX, read_ca_certificates), (KEY_SUFFIX, read_public_key)):
            if path.name.endswith(suffix):
                try:
                    material = read(path.read_bytes())
                except ValueError as exc:
                    raise SignatureNotAccepted(f"{defaults.SIGNATURE_INVALID}: trust root {path.name}: {exc}") from None
                roots.append(TrustRoot(path.name.removesuffix(suffix), material.method, material.pem,
                                       material.fingerprint))
                break
    return roots


def check_signature(client: RegistryClient, version: schemas.Version, files_manifest: Path | None,
                    policy: SignaturePolicy) -> TrustRoot | None:
    """The signer that vouches for the version here, None when no signature is required; else
    ``SignatureNotAccepted``.  ``files_manifest``: for a model directory, the runtime's manifest of the
    extracted files (name → sha256)."""
    if not policy.required:
        return None
    label = f"{version.model}:{version.version}"
    whom = " or ".join(policy.signers) if policy.signers else "a trusted signer"
    candidates = [s for s in version.signatures if not policy.signers or s.signer in policy.signers]
    if not candidates:
        raise SignatureNotAccepted(f"{defaults.SIGNATURE_REQUIRED}: {label} carries no signature from {whom}")
    try:
        roots = trust_roots_from(policy.trust_dir) if policy.trust_dir else [
            TrustRoot(r.name, r.method, r.pem, r.fingerprint, r.identity) for r in client.list_trust()]
    except (OSError, RegistryError) as exc:
        raise SignatureNotAccepted(f"{defaults.SIGNATURE_INVALID}: cannot read the trust roots: {exc}") from None
    actual = json.loads(files_manifest.read_text()) if files_manifest is not None else None
    reasons = []
    for signature in candidates:
        try:
            bundle = client.signature_bundle(version.model, version.version, signature.signer,
                                             digest=signature.bundle_digest)
            verified = verify_bundle(bundle, [root for root in roots if root.name == signature.signer])
            if actual is not None:
                check_files(verified, actual, f"the model directory of {label}")
            else:
                assert version.digest is not None
                check_single_file(verified, parse_digest(version.digest), f"the artifact of {label}")
            return verified.signers[0]
        except (SignatureRefused, RegistryError) as exc:
            reasons.append(f"{signature.signer}: {exc}")
    raise SignatureNotAccepted(f"{defaults.SIGNATURE_INVALID}: no signature of {label} from {whom} verifies here "
                               f"({'; '.join(reasons)})")
