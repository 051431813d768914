"""Digest spellings: ``sha256:<hex>`` in the API, RFC 9530 ``Content-Digest`` on the wire."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
import binascii
import re

from modelyard.registry.kernel.errors import Invalid

_HEX = re.compile(r"^[0-9a-f]{64}$")
_MEMBER = re.compile(r"^\s*([a-z0-9_*-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")


def parse_digest(value: str) -> str:
    """``sha256:<hex>`` (or bare hex) → hex; 422 for anything else."""
    hex_part = value[7:] if value.startswith("sha256:") else value
    if not _HEX.match(hex_part):
        raise Invalid(f"invalid digest {value!r}: expected sha256:<64 lower-case hex digits>")
    return hex_part


def format_content_digest(hex_digest: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(hex_digest)).decode() + ":"


def parse_content_digest(header: str | None) -> str:
    """The sha-256 member of an RFC 9530 ``Content-Digest`` header, as hex."""
    if not header:
        raise Invalid("missing Content-Digest header: send 'Content-Digest: sha-256=:<base64 of the sha256>:'")
    algorithms = []
    for member in header.split(","):
        match = _MEMBER.match(member)
        if not match:
            raise Invalid(f"malformed Content-Digest header {header!r}")
        algorithm, encoded = match.groups()
        algorithms.append(algorithm)
        if algorithm == "sha-256":
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise Invalid(f"Content-Digest sha-256 value is not base64: {encoded!r}") from exc
            if len(raw) != 32:
                raise Invalid(f"Content-Digest sha-256 value has {len(raw)} bytes, expected 32")
            return raw.hex()
    raise Invalid(f"Content-Digest has no sha-256 member (got {', '.join(algorithms)}); only sha-256 is supported")


CHUNK = 1 << 20
Progress = Callable[[int], None]
"""Called with the size of each block read."""


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """A file's sha256 as hex, read in blocks (the client's uploads, the pod's manifest)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            hasher.update(block)
            if progress:
                progress(len(block))
    return hasher.hexdigest()
