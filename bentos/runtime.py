"""The pod runtime: resolve a version, fetch its Bento by digest into a cache, serve it.

``modelyard pull REF --to DIR`` (the chart's init container) is ``fetch``;
``modelyard serve REF`` is ``fetch`` then ``bentoml serve`` on the extracted
Bento.  The cache is keyed by digest, so a restarted pod (or a second pod on
the same volume) serves without downloading again, and a Bento is only ever
extracted from an archive whose sha256 matched the registry's record.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelyard.bentos.config import ServingConfig
from modelyard.bentos.loader import FAILURE_FILE_ENV
from modelyard.bentos.packager import package_version
from modelyard.bentos.spec import ModelSpec
from modelyard.registry import schemas
from modelyard.registry.client import RegistryClient
from modelyard.registry.local import stop_process
from modelyard.registry.errors import NotFound
from modelyard.registry.names import ModelRef, parse_model_ref

log = logging.getLogger("modelyard.bentos")
READY_MARKER = ".modelyard-verified"


@dataclass(frozen=True)
class FetchedBento:
    version: schemas.Version
    directory: Path  # the extracted Bento
    downloaded: bool  # False: served from the cache

    @property
    def src(self) -> Path:
        return self.directory / "src"


def default_cache() -> Path:
    return Path(os.environ.get("MODELYARD_CACHE") or Path(os.environ.get("MODELYARD_HOME", "~/.modelyard"))
                / "cache").expanduser()


def fetch(client: RegistryClient, ref: str | ModelRef, cache: Path, *, package: bool = True) -> FetchedBento:
    """The version's Bento, extracted under ``cache``; packaged first when the registry has none."""
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    version = client.resolve(ref)
    if version.bento is None:
        if not package:
            raise NotFound(f"{version.model}:{version.version} has no Bento; run `modelyard package "
                           f"{version.model}:{version.version}` first")
        # The resolved number, not the alias: it may move while we package.
        version = package_version(client, f"{version.model}:{version.version}").version
    assert version.bento is not None
    hex_digest = version.bento.digest.removeprefix("sha256:")
    directory = cache / "bentos" / hex_digest
    if (directory / READY_MARKER).exists():
        log.info("cache hit: %s (%s)", version.bento.tag, version.bento.digest)
        return FetchedBento(version, directory, downloaded=False)
    cache.joinpath("bentos").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / "bentos", prefix=".fetch-") as workdir:
        archive = Path(workdir) / "bento.tar"
        client.download_bento(version.model, version.version, archive)  # digest-verified
        staging = Path(workdir) / "extracted"
        with tarfile.open(archive) as bundle:
            bundle.extractall(staging, filter="data")  # no absolute paths, links out or devices
        (staging / READY_MARKER).write_text(version.bento.digest + "\n")
        if directory.exists():  # a stale, unverified leftover
            shutil.rmtree(directory)
        os.replace(staging, directory)
    log.info("fetched %s (%s) into %s", version.bento.tag, version.bento.digest, directory)
    return FetchedBento(version, directory, downloaded=True)


def serve_command(fetched: FetchedBento, host: str, port: int, config: ServingConfig,
                  cache: Path) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` invocation (argv, env) for an extracted Bento."""
    home = cache / "bentoml-home"  # empty: the Bento is served from its directory, not a store
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **config.to_env(), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "MODELYARD_BENTO_DIR": str(fetched.src)}
    executable = Path(sys.executable).with_name("bentoml")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "bentoml"]
    return [*command, "serve", str(fetched.directory), "--host", host, "--port", str(port)], env


def supervise(argv: list[str], env: dict[str, str], failure_file: Path, poll: float = 0.2) -> int:
    """Run the BentoML server as a child and return the exit status to exit with.

    BentoML restarts a worker whose model failed to load, forever; a pod must
    instead fail (and say why) so that Kubernetes reports it and the operator can
    roll back.  The service writes the reason to ``failure_file``; this stops the
    server and returns 1.  SIGTERM/SIGINT are passed on for a graceful shutdown.
    """
    failure_file.unlink(missing_ok=True)
    child = subprocess.Popen(argv, env={**env, FAILURE_FILE_ENV: str(failure_file)})

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = child.wait(timeout=poll)
                return code if code >= 0 else 128 - code
            except subprocess.TimeoutExpired:
                pass
            if failure_file.exists():
                log.error("model failed to load: %s", failure_file.read_text().strip())
                stop_process(child, timeout=30)
                return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe(fetched: FetchedBento) -> str:
    spec = ModelSpec.read(fetched.src) if (fetched.src / "modelyard-model.json").exists() else None
    what = f"{spec.format} program {spec.digest}" if spec else "user service"
    return (f"{fetched.version.model}:{fetched.version.version} as {fetched.version.bento.tag} "  # type: ignore[union-attr]
            f"({fetched.version.bento.digest}; {what}){'' if fetched.downloaded else ' from the cache'}")  # type: ignore[union-attr]
