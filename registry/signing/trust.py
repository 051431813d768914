"""What a trust store entry holds, checked when it is added: a signer's public key, or the
certificate authority that issues its signing certificates (optionally pinned to one identity).

The fingerprint names the material, so a signature records which key or CA verified it: a signer
removed and added again with other material does not vouch for what the old one signed.  For a key
it is model_signing's own key hint (the sha256 of the key's PEM), so a key-signed bundle names the
entry it needs without trying the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelyard.registry.kernel import defaults

KEY = "key"
CERTIFICATE = "certificate"
METHODS = (KEY, CERTIFICATE)
CURVES = ("secp256r1", "secp384r1", "secp521r1")
"""The elliptic curves OpenSSF model signing accepts."""
MAX_CHAIN = 16


@dataclass(frozen=True)
class TrustMaterial:
    """A signer's verification material, normalised to PEM."""

    method: str
    pem: str
    fingerprint: str


def key_hint(pem: bytes) -> str:
    """model_signing's hint for a public key: the sha256 of its SubjectPublicKeyInfo PEM."""
    return hashlib.sha256(pem).hexdigest()


def read_public_key(data: bytes) -> TrustMaterial:
    """A PEM public key on a curve model signing supports, or ValueError saying what is wrong."""
    _check_size(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise ValueError(f"the key must be an elliptic-curve key on {', '.join(CURVES)} (OpenSSF model signing)")
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TrustMaterial(KEY, pem.decode(), key_hint(pem))


def read_ca_certificates(data: bytes) -> TrustMaterial:
    """One or more PEM certificates (a root and its intermediates), or ValueError."""
    _check_size(data)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"not PEM certificates ({exc})") from None
    if len(certificates) > MAX_CHAIN:
        raise ValueError(f"at most {MAX_CHAIN} certificates per signer")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certificates)
    return TrustMaterial(CERTIFICATE, pem.decode(), hashlib.sha256(der).hexdigest())


def read_material(method: str, pem: str) -> TrustMaterial:
    if method == KEY:
        return read_public_key(pem.encode())
    if method == CERTIFICATE:
        return read_ca_certificates(pem.encode())
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")


def certificate_identities(certificate: x509.Certificate) -> set[str]:
    """Who a signing certificate names: its subject alternative names (email, URI, DNS) and
    its subject's common name; ``--identity`` must be one of them."""
    found: set[str] = set()
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            found.update(str(value) for value in names.get_values_for_type(kind))
    except x509.ExtensionNotFound:
        pass
    found.update(str(attribute.value) for attribute in
                 certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    return found


def _check_size(data: bytes) -> None:
    if len(data) > defaults.TRUST_MATERIAL_MAX_BYTES:
        raise ValueError(f"larger than {defaults.TRUST_MATERIAL_MAX_BYTES} bytes")
