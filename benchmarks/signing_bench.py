"""What verifying a signed model directory costs at push, at upload (the registry) and at pod start,
against hashing the same bytes once (sha256 of every file, one pass, in this process).

Every stage runs the product's own code on one directory of random weights:

- push: ``signing.sign`` (model_signing hashes every file, in parallel, and signs the manifest), which
  ``modelyard push --sign-key`` adds to the push's own digest and upload passes;
- upload: ``signing.bundles.verify_bundle`` and ``archive_file_digests`` over the stored archive (one
  streamed pass), what the registry does for ``PUT …/signature``;
- pod start: ``provenance.check_signature``'s work once the files are extracted: the bundle is
  verified and its manifest compared with the runtime's file manifest, which the runtime writes
  (hashing every file) whether or not a signature is required.

    python benchmarks/signing_bench.py --size-mib 1024 --files 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelyard.bentos.pod.manifest import write_manifest  # noqa: E402
from modelyard.registry.model.hf_archive import DirectoryArchive  # noqa: E402
from modelyard.registry.signing.archive_files import archive_file_digests  # noqa: E402
from modelyard.registry.signing.bundles import TrustRoot, check_files, verify_bundle  # noqa: E402
from modelyard.registry.signing.sign import SigningKey, sign  # noqa: E402
from modelyard.registry.signing.trust import read_public_key  # noqa: E402
from tests.support.signing import make_key_pair  # noqa: E402

CHUNK = 1 << 20


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def make_directory(root: Path, size_mib: int, files: int) -> None:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    each = size_mib * CHUNK // files
    for n in range(files):
        with open(root / f"model-{n:05d}-of-{files:05d}.safetensors", "wb") as handle:
            for _ in range(each // CHUNK):
                handle.write(os.urandom(CHUNK))


def hash_once(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hasher = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(CHUNK):
                    hasher.update(block)
            found[path.relative_to(root).as_posix()] = hasher.hexdigest()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="signing-bench-") as work:
        workdir = Path(work)
        model = workdir / "model"
        make_directory(model, args.size_mib, args.files)
        keys = make_key_pair(workdir / "keys", "team-cv")
        material = read_public_key(keys.public.read_bytes())
        roots = [TrustRoot("team-cv", material.method, material.pem, material.fingerprint)]
        archive = workdir / "stored.tar"
        with open(archive, "wb") as handle:
            for block in DirectoryArchive(model).chunks():
                handle.write(block)

        sign(workdir / "keys" / "team-cv.pub", SigningKey(keys.private))  # imports model_signing (~0.3 s) once
        baseline, _ = timed(lambda: hash_once(model))
        push, bundle = timed(lambda: sign(model, SigningKey(keys.private)))

        def registry_verifies() -> None:
            verified = verify_bundle(bundle, roots)
            with open(archive, "rb") as stored:
                check_files(verified, archive_file_digests(stored), "the model directory")

        upload, _ = timed(registry_verifies)
        manifest = workdir / "modelyard-files.json"
        files_manifest, _ = timed(lambda: write_manifest(model, manifest))

        def pod_verifies() -> None:
            check_files(verify_bundle(bundle, roots), json.loads(manifest.read_text()), "the model directory")

        pod, _ = timed(pod_verifies)
    size = args.size_mib * CHUNK
    print(f"signed model directory: {args.size_mib} MiB in {args.files} weight files + config.json; "
          f"bundle {len(bundle)} bytes; {os.cpu_count()} CPUs")
    print(f"{'stage':<58}{'seconds':>9}{'MB/s':>9}{'x hash once':>13}")
    rows = [("hash once: sha256 of every file, one pass (the baseline)", baseline),
            ("push: model_signing hashes and signs (signing.sign)", push),
            ("upload: registry verifies bundle + stored archive", upload),
            ("pod start: the runtime's file manifest (done unsigned too)", files_manifest),
            ("pod start: + signature check against that manifest", pod)]
    for label, seconds in rows:
        print(f"{label:<58}{seconds:>9.3f}{size / seconds / 1e6:>9.0f}{seconds / baseline:>13.3f}")


if __name__ == "__main__":
    main()
