"""Signing what ``push`` uploads, with the OpenSSF ``model-signing`` library, so that a signature
covers exactly the bytes the registry stores and a pod loads.

A single-file program or a ``.bento`` is signed as that file.  A model directory is signed as the
files its archive carries (``hf_model.directory_tree``: hidden files and folders are left out of
both), under the same relative names the pod extracts them as.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelyard.registry.kernel.defaults import Env


@dataclass(frozen=True)
class SigningKey:
    """An elliptic-curve private key (PEM), and for certificate signing its certificate and chain.
    An encrypted key's password comes from ``MODELYARD_SIGN_KEY_PASSWORD``."""

    key: Path
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()

    def check(self) -> None:
        """ValueError for a combination or file that cannot sign, before anything is uploaded."""
        for path in (self.key, self.certificate, *self.chain):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        if self.chain and self.certificate is None:
            raise ValueError("--sign-chain needs --sign-cert (the signing certificate)")


def hidden_paths(root: Path) -> list[str]:
    """The outermost hidden files and folders under ``root``: what a model directory's archive leaves out."""
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if parts[-1].startswith(".") and not any(part.startswith(".") for part in parts[:-1]):
            found.append(Path(*parts).as_posix())
    return found


def sign(path: Path, key: SigningKey) -> bytes:
    """The signature bundle (JSON bytes) of the file or model directory at ``path``."""
    import model_signing
    from model_signing import hashing

    key.check()
    config = model_signing.signing.Config()
    if key.certificate is not None:
        config.use_certificate_signer(private_key=key.key, signing_certificate=key.certificate,
                                      certificate_chain=list(key.chain))
    else:
        config.use_elliptic_key_signer(private_key=key.key, password=os.environ.get(Env.SIGN_KEY_PASSWORD))
    if path.is_dir():
        config.set_hashing_config(hashing.Config().set_ignored_paths(paths=hidden_paths(path)))
    with tempfile.TemporaryDirectory(prefix="modelyard-sign-") as workdir:
        bundle = Path(workdir) / "signature.json"
        config.sign(path, bundle)
        return bundle.read_bytes()
