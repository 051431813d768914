"""The pod runtime: resolve a version, fetch what serves it by digest into a cache, serve it.

``modelyard pull REF --to DIR`` (the chart's init container) is ``fetch``;
``modelyard serve REF`` is ``fetch`` then ``bentoml serve``.  What is fetched is the
version's Bento when the registry records one, else its artifact (a model version's
program is served by the installed service and needs no Bento; a pod never packages,
so its token only reads).  The cache is keyed by digest, so a restarted pod (or a
second pod on the same volume) serves without downloading again, and an archive is
only ever extracted after its sha256 matched the registry's record, within a size bound.

What is served is checked against the version, not only against the Bento: a
model version's Bento must record that very version and its program's digest
(``registry.model.bento_source``), and it is served by the installed generic service
(``modelyard.bentos.tensor.service``), never by code inside the Bento.  Only a version
in format ``bento`` (the user's own service) runs the Bento's code, and then the
Bento must be the version's artifact itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.bentos.pod.settings import LLM_ENGINE, VLLM_ENGINE, ServingSettings, engine_for, gpus_to_use
from modelyard.bentos.pod.failure import FAILURE_FILE_ENV, TERMINATION_LOG, tell_kubernetes
from modelyard.bentos.pod.manifest import MANIFEST_FILE, write_manifest
from modelyard.bentos.provenance import SignaturePolicy, check_signature
from modelyard.bentos.packager import FILE_SUFFIX, SERVABLE_FORMATS
from modelyard.bentos.pod.spec import MODEL_DIR, SPEC_FILE, ModelSpec
from modelyard.bentos.llm.loading import check_files, max_model_len
from modelyard.bentos.vllm.launch import VllmBuild, vllm_command
from modelyard.registry.kernel import schemas
from modelyard.registry.model.bento_source import source_mismatch
from modelyard.registry.signing.bundles import TrustRoot
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import NotFound
from modelyard.registry.model.hf_model import UnsafeModelDirectory, unique_member_name
from modelyard.registry.kernel.processes.children import stop_process
from modelyard.registry.kernel.names import ModelRef, parse_model_ref
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.settings import modelyard_home

log = logging.getLogger("modelyard.bentos")
READY_MARKER = ".modelyard-verified"
TENSOR_SERVICE = "modelyard.bentos.tensor.service:ModelService"
"""Serves torch.export and TorchScript programs behind ``/predict`` and the Open Inference Protocol."""
LLM_SERVICE = "modelyard.bentos.llm.service:LLMService"
"""Serves format ``hf`` (language and embedding models) behind OpenAI's API."""
EXPANSION_LIMIT = 20
"""A Bento may expand to this many times its archive's size (plus EXPANSION_FLOOR), no more."""
EXPANSION_FLOOR = 256 << 20
MAX_MEMBERS = 100_000


class BentoRefused(ValueError):
    """The Bento cannot be served as this version; the message says why."""


@dataclass(frozen=True)
class FetchedBento:
    version: schemas.Version
    directory: Path  # the extracted Bento
    downloaded: bool  # False: served from the cache
    signer: TrustRoot | None = None
    """The signer whose signature this process verified, where the deployment requires one."""

    @property
    def src(self) -> Path:
        return self.directory / "src"


def default_cache() -> Path:
    return Path(os.environ.get(Env.CACHE) or modelyard_home() / "cache").expanduser()


def fetch(client: RegistryClient, ref: str | ModelRef, cache: Path) -> FetchedBento:
    """What serves the version, verified by digest, under ``cache``: its Bento when the registry
    records one, otherwise its artifact.  Where the deployment requires a signature
    (``provenance``), one is verified too, or ``SignatureNotAccepted``.

    A model version needs no Bento to be served (the installed generic service reads the
    program and its record), so a pod never packages and never writes to the registry: its
    token may only read.  A version in format ``bento`` is its own Bento.
    """
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    version = client.resolve(ref)
    if version.bento is not None:
        digest, size, what = version.bento.digest, version.bento.size, f"Bento {version.bento.tag}"
    else:
        if version.status != schemas.VersionStatus.ready or not version.digest:
            raise NotFound(f"{version.model}:{version.version} is {version.status.value}: nothing to serve yet")
        servable = (*SERVABLE_FORMATS, schemas.ArtifactFormat.bento.value, schemas.ArtifactFormat.hf.value)
        if version.format is None or version.format.value not in servable:
            raise NotFound(f"{version.model}:{version.version} has format "
                           f"{version.format.value if version.format else None!r}; it needs a Bento of its own "
                           "(modelyard package --service)")
        digest, size, what = version.digest, version.size or 0, "artifact"
    lay_out = version.bento is None and version.format != schemas.ArtifactFormat.bento
    directory = cache / ("programs" if lay_out else "bentos") / digest.removeprefix("sha256:")
    if (directory / READY_MARKER).exists():
        log.info("cache hit: %s:%s %s (%s)", version.model, version.version, what, digest)
        fetched = FetchedBento(version, directory, downloaded=False)
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".fetch-") as workdir:
            staging = Path(workdir) / "extracted"
            if version.bento is None and version.format == schemas.ArtifactFormat.hf:
                _lay_out_model_directory(client, version, staging, Path(workdir) / "model.tar")
            elif lay_out:
                _lay_out_program(client, version, staging)
            else:
                archive = Path(workdir) / "bento.tar"
                if version.bento is not None:
                    client.download_bento(version.model, version.version, archive)  # digest-verified
                else:
                    client.download_artifact(version.model, version.version, archive)  # digest-verified
                extract(archive, staging, limit=max(EXPANSION_LIMIT * size, EXPANSION_FLOOR))
            (staging / READY_MARKER).write_text(digest + "\n")
            if directory.exists():  # a stale, unverified leftover
                shutil.rmtree(directory)
            os.replace(staging, directory)
        log.info("fetched %s:%s %s (%s) into %s", version.model, version.version, what, digest, directory)
        fetched = FetchedBento(version, directory, downloaded=True)
    verify_source(fetched)
    policy = SignaturePolicy.from_env()
    if policy.required:
        model_directory = version.bento is None and version.format == schemas.ArtifactFormat.hf
        signer = check_signature(client, version, fetched.src / MANIFEST_FILE if model_directory else None, policy)
        fetched = dataclasses.replace(fetched, signer=signer)
    return fetched


def _lay_out_program(client: RegistryClient, version: schemas.Version, staging: Path) -> None:
    """The version's program and record where a model Bento has them (``src/``), straight from
    the registry's digest-checked artifact: nothing is built."""
    assert version.format is not None and version.digest is not None
    fmt = version.format.value
    spec = ModelSpec(model=version.model, version=version.version, digest=version.digest, format=fmt,
                     file=f"{MODEL_DIR}/model{FILE_SUFFIX[fmt]}", metadata=version.metadata)
    source = staging / "src"
    (source / MODEL_DIR).mkdir(parents=True)
    client.download_artifact(version.model, version.version, source / spec.file)  # digest-verified
    spec.write(source)


def _lay_out_model_directory(client: RegistryClient, version: schemas.Version, staging: Path,
                             archive: Path) -> None:
    """A model directory (format ``hf``) extracted from its digest-checked archive into
    ``src/model/``, with its record and a manifest of each file's sha256, which the service
    checks before it loads the weights (``bentos.llm.loading``)."""
    assert version.format is not None and version.digest is not None
    client.download_artifact(version.model, version.version, archive)  # digest-verified
    source = staging / "src"
    extract(archive, source / MODEL_DIR, limit=(version.size or 0) + EXPANSION_FLOOR)
    archive.unlink()
    write_manifest(source / MODEL_DIR, source / MANIFEST_FILE)
    ModelSpec(model=version.model, version=version.version, digest=version.digest, format=version.format.value,
              file=MODEL_DIR, metadata=version.metadata).write(source)


def extract(archive: Path, target: Path, *, limit: int) -> None:
    """Extract a Bento safely: regular files and directories only, every path inside ``target``,
    no special mode bits, at most ``limit`` bytes and MAX_MEMBERS files (a small archive can
    expand to any size).

    The checks are ours, so they hold on every supported Python: ``tarfile``'s ``filter``
    argument only exists from 3.11.4 on, and Debian bookworm's images carry 3.11.2.  Where
    the argument exists, the standard ``data`` filter runs as well.
    """
    target.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive) as bundle:
            bundle.extractall(target, members=_checked(bundle, target.resolve(), limit), **options)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BentoRefused(f"cannot extract the Bento: {exc}") from None


def _checked(bundle: tarfile.TarFile, root: Path, limit: int) -> Iterator[tarfile.TarInfo]:
    expanded = 0
    seen: set[str] = set()
    for count, member in enumerate(bundle):
        expanded += member.size
        if expanded > limit or count >= MAX_MEMBERS:
            raise BentoRefused(f"the Bento expands to more than {limit} bytes or {MAX_MEMBERS} files: refused")
        if not (member.isreg() or member.isdir()):
            raise BentoRefused(f"cannot extract the Bento: {member.name!r} is a link or a special file")
        try:  # the registry's judge of names: the files extracted are the files it read
            name = member.name = unique_member_name(member, seen)
        except UnsafeModelDirectory as exc:
            raise BentoRefused(f"cannot extract the Bento: {exc}") from None
        place = (root / name).resolve()
        if place != root and root not in place.parents:  # belt and braces: member_name refused the rest
            raise BentoRefused(f"cannot extract the Bento: {name!r} lies outside the Bento")
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)  # no setuid, sticky, world-write
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        yield member


def verify_source(fetched: FetchedBento) -> None:
    """Refuse a Bento that was not built from this version (the registry checks this on upload too)."""
    version, bento = fetched.version, fetched.version.bento
    label = f"{version.model}:{version.version}"
    if version.format == schemas.ArtifactFormat.bento:
        if bento is not None and bento.digest != version.digest:
            raise BentoRefused(f"{label}'s Bento {bento.digest} is not its artifact {version.digest}: refusing to "
                               "serve it")
        return
    try:
        record = json.loads((fetched.src / SPEC_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BentoRefused(f"{label}'s Bento has no readable model record ({exc}): refusing to serve it") from None
    if not isinstance(record, dict):
        raise BentoRefused(f"{label}'s Bento has no readable model record: refusing to serve it")
    why = source_mismatch(record, model=version.model, version=version.version, digest=version.digest,
                          format=version.format.value if version.format else None, metadata=version.metadata)
    if why:
        raise BentoRefused(f"{label}'s Bento {why}: refusing to serve it")


def serving_engine(version: schemas.Version, engine: str, *, gpus: int | None = None) -> str | None:
    """The engine that serves ``version`` (``serving.engine``, or for ``auto`` by its format, and for a
    model directory by whether vLLM is installed here and the server has GPUs); None for a version in
    format ``bento``, which is its own service.  ``BentoRefused`` when the engine asked for does not
    serve the version's format."""
    if version.format == schemas.ArtifactFormat.bento:
        return None
    fmt = version.format.value if version.format else None
    vllm_here = engine == "auto" and fmt == "hf" and VllmBuild.installed().version is not None
    try:
        recorded = version.metadata.get("hf")
        hf: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        return engine_for(fmt, engine, gpus=(visible_gpus() if gpus is None else gpus) if vllm_here else 0,
                          vllm_available=vllm_here, task=hf.get("task"))
    except ValueError as exc:
        raise BentoRefused(f"{version.model}:{version.version}: {exc}") from None


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def vllm_serve_command(fetched: FetchedBento, host: str, port: int, settings: ServingSettings,
                       cache: Path) -> tuple[list[str], dict[str, str]]:
    """vLLM's server on the version's model directory, checked as our own engine checks it first
    (manifest, safety rules); ``ModelLoadError`` when it cannot serve it here."""
    spec = ModelSpec.read(fetched.src)
    facts = check_files(spec, fetched.src)
    gpus = gpus_to_use(settings.common.gpus, visible_gpus())
    argv, env = vllm_command(fetched.src / spec.file, model=spec.model, facts=facts,
                             max_model_len=max_model_len(facts, settings.llm.max_model_len), gpus=gpus,
                             settings=settings, host=host, port=port, cache=cache, build=VllmBuild.installed())
    return argv, {**os.environ, **env}


def serve_command(fetched: FetchedBento, host: str, port: int, settings: ServingSettings,
                  cache: Path) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` invocation (argv, env) for an extracted Bento.

    A model version is served by the installed service of its engine (the tensor server or the
    language-model server), from an empty working directory, with the Bento's directory as data
    only; a version in format ``bento`` is the user's service and is served from its Bento."""
    # Empty: the Bento is served from its directory, not a store.  One per port: BentoML keeps its
    # Prometheus files there and empties them when a server starts, so two servers sharing a cache
    # (the default one) would wipe each other's metrics, which the canary analysis reads.
    engine = serving_engine(fetched.version, settings.engine, gpus=settings.common.gpus)
    if engine == VLLM_ENGINE:
        return vllm_serve_command(fetched, host, port, settings, cache)
    home = cache / "bentoml-home" / str(port)
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           Env.BENTO_DIR: str(fetched.src), Env.SERVE_HOST: host}
    executable = Path(sys.executable).with_name("bentoml")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "bentoml"]
    if engine is None:
        target = [str(fetched.directory)]
    else:
        workdir = cache / "workdir"  # nothing importable in it: no module of the Bento can shadow ours
        workdir.mkdir(parents=True, exist_ok=True)
        service = LLM_SERVICE if engine == LLM_ENGINE else TENSOR_SERVICE
        target = [service, "--working-dir", str(workdir)]
    return [*command, "serve", *target, "--host", host, "--port", str(port)], env


ERROR_LINE = re.compile(r"\b((?:[A-Za-z_][\w.]*)?(?:Error|Exception)): (.+)$")
GENERIC_ERRORS = ("See root cause above", "EngineCore encountered an issue", "Engine core initialization failed",
                  "Traceback (most recent call last)")
"""Lines that only say an error happened elsewhere: the root cause is an earlier line."""


def failure_reason(lines: Iterable[str], limit: int = 1000) -> str | None:
    """The root cause a server printed before it exited: its last ``SomeError: message`` line that is not a
    wrapper pointing at another one (vLLM prints the cause, then "Engine core initialization failed")."""
    found = None
    for line in lines:
        match = ERROR_LINE.search(line)
        if match and not any(generic in line for generic in GENERIC_ERRORS):
            found = f"{match.group(1)}: {match.group(2).strip()}"
    return found[:limit] if found else None


def supervise(argv: list[str], env: dict[str, str], failure_file: Path, poll: float = 0.2, *,
              label: str = "the model", termination_log: Path = TERMINATION_LOG) -> int:
    """Run the server as a child and return the exit status to exit with.

    BentoML restarts a worker whose model failed to load, forever; a pod must
    instead fail (and say why) so that Kubernetes reports it and the operator can
    roll back.  The service writes the reason to ``failure_file``; this stops the
    server and returns 1.  A server that exits on its own with an error (vLLM, on an
    architecture it does not support or too little memory for its KV cache) is a failure
    too, its reason the last error it printed.  Either reason becomes the container's
    termination message (``failure.tell_kubernetes``).  The child's output passes through
    unchanged.  SIGTERM/SIGINT are passed on for a graceful shutdown.
    """
    failure_file.unlink(missing_ok=True)
    child = subprocess.Popen(argv, env={**env, FAILURE_FILE_ENV: str(failure_file)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    tail: deque[str] = deque(maxlen=400)
    copier = threading.Thread(target=_copy_output, args=(child, tail), daemon=True)
    copier.start()
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = child.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                copier.join(timeout=5)  # what the child printed last, unless a grandchild keeps the pipe open
                if code != 0 and not stopping:
                    reason = failure_reason(list(tail)) or f"the server exited with status {code}"
                    log.error("%s", tell_kubernetes(label, reason, termination_log))
                return code if code >= 0 else 128 - code
            if failure_file.exists():
                reason = failure_file.read_text().strip()
                log.error("model failed to load: %s", reason)
                stop_process(child, timeout=30)
                tell_kubernetes(label, reason, termination_log)
                return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _copy_output(child: subprocess.Popen[bytes], tail: deque[str]) -> None:
    """The child's output to ours as it comes, its last lines kept for ``failure_reason``."""
    assert child.stdout is not None
    out = sys.stdout.buffer
    for line in iter(child.stdout.readline, b""):
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            pass
        tail.append(line.decode(errors="replace").rstrip())


def describe(fetched: FetchedBento) -> str:
    spec = ModelSpec.read(fetched.src) if (fetched.src / SPEC_FILE).exists() else None
    what = f"{spec.format} program {spec.digest}" if spec else "user service"
    version, bento = fetched.version, fetched.version.bento
    source = f"{bento.tag} ({bento.digest}; {what})" if bento else f"its artifact ({what})"
    signed = (f"; signed by {fetched.signer.name} ({fetched.signer.method}), verified here"
              if fetched.signer is not None else "")
    return f"{version.model}:{version.version} as {source}{'' if fetched.downloaded else ' from the cache'}{signed}"
