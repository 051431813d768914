"""Registry model version → exported Bento → back into the registry as the version's Bento.

The packager fetches the program by digest (verified), writes a build context
(the two-line ``service.py``, the program, ``modelyard-model.json``), builds it
offline with ``bentoml build`` in a private ``BENTOML_HOME``, exports the Bento
as one archive and uploads it (digest-checked).  A version is packaged once:
a second call finds its Bento recorded and reuses it.

Offline facts that shape this (BentoML 1.4): ``bentoml build`` needs the ``uv``
package installed even without locking; package locking is on by default,
reaches the network and would pin a CUDA torch, so it is off and the
requirements are pinned here instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelyard.bentos.pod.spec import MODEL_DIR, ModelSpec
from modelyard.registry.kernel import schemas
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.names import ModelRef, parse_model_ref

log = logging.getLogger("modelyard.bentos")

SERVABLE_FORMATS = ("torch-export", "torchscript")
FILE_SUFFIX = {"torch-export": ".pt2", "torchscript": ".pt"}
SERVICE_PY = '''"""A Modelyard model Bento: the code is modelyard.bentos.tensor.service, this Bento adds the model."""
import os

os.environ.setdefault("MODELYARD_BENTO_DIR", os.path.dirname(os.path.abspath(__file__)))

from modelyard.bentos.tensor.service import ModelService  # noqa: E402,F401
'''


class PackagingError(RuntimeError):
    """Packaging failed; the message carries BentoML's own words."""


@dataclass(frozen=True)
class Packaged:
    version: schemas.Version
    reused: bool


def bento_tag(model: str, version: int, digest: str) -> str:
    """Deterministic per version and program: ``digits-cnn:v7-1cb21b84c959``."""
    return f"{model}:v{version}-{digest.removeprefix('sha256:')[:12]}"


def bentofile(spec: ModelSpec) -> str:
    import torch

    torch_pin = torch.__version__.split("+")[0]
    return (
        'service: "service:ModelService"\n'
        f'description: "{spec.model}:{spec.version} ({spec.format}), packaged by Modelyard"\n'
        f'labels: {{modelyard.io/model: "{spec.model}", modelyard.io/version: "{spec.version}"}}\n'
        f'include: ["service.py", "modelyard-model.json", "{MODEL_DIR}/*"]\n'
        "python:\n"
        "  lock_packages: false\n"
        f'  packages: ["torch=={torch_pin}", "numpy"]\n'
    )


def write_context(spec: ModelSpec, program: Path, context: Path) -> None:
    """The build context: service.py, the program under model/, modelyard-model.json, bentofile.yaml."""
    (context / MODEL_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(program, context / spec.file)
    (context / "service.py").write_text(SERVICE_PY)
    spec.write(context)
    (context / "bentofile.yaml").write_text(bentofile(spec))


def _bentoml(*args: str, home: Path, cwd: Path | None = None, timeout: float = 600) -> str:
    executable = Path(sys.executable).with_name("bentoml")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "bentoml"]
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    answer = subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if answer.returncode:
        raise PackagingError(f"bentoml {args[0]} failed: {(answer.stderr or answer.stdout).strip()[-2000:]}")
    return answer.stdout


def build_bento(context: Path, tag: str, output: Path) -> Path:
    """``bentoml build`` + ``bentoml export`` in a private BENTOML_HOME; returns the archive."""
    name, _, version = tag.partition(":")
    with tempfile.TemporaryDirectory(prefix="modelyard-bentoml-") as home:
        _bentoml("build", str(context), "--name", name, "--version", version, "-o", "tag", home=Path(home),
                 cwd=context)
        _bentoml("export", tag, str(output), home=Path(home))
    if not output.exists():
        raise PackagingError(f"bentoml export wrote nothing at {output}")
    return output


def package_version(client: RegistryClient, ref: str | ModelRef, *, force: bool = False) -> Packaged:
    """Make sure the version has a Bento in the registry; build and upload it if not."""
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    version = client.resolve(ref)
    if version.bento is not None and not force:
        return Packaged(version, reused=True)
    if version.status != schemas.VersionStatus.ready or not version.digest:
        raise PackagingError(f"{version.model}:{version.version} is {version.status.value}: upload its artifact first")
    fmt = version.format.value if version.format else None
    with tempfile.TemporaryDirectory(prefix="modelyard-package-") as workdir:
        work = Path(workdir)
        if fmt == "bento":  # the artifact already is a Bento: record it as such
            archive = work / "artifact.bento"
            client.download_artifact(version.model, version.version, archive)
            tag = bento_tag(version.model, version.version, version.digest)
            return Packaged(client.upload_bento(version.model, version.version, archive, tag), reused=False)
        if fmt == "hf":
            raise PackagingError(f"{version.model}:{version.version} is a model directory (format hf): it is served "
                                 f"as it is, without a Bento (modelyard serve {version.model}:{version.version})")
        if fmt not in SERVABLE_FORMATS:
            raise PackagingError(f"{version.model}:{version.version} has format {fmt!r}; the generic service "
                                 f"serves {', '.join(SERVABLE_FORMATS)}")
        spec = ModelSpec(model=version.model, version=version.version, digest=version.digest, format=fmt,
                         file=f"{MODEL_DIR}/model{FILE_SUFFIX[fmt]}", metadata=version.metadata)
        program = work / "program"
        client.download_artifact(version.model, version.version, program)  # digest-verified
        context = work / "context"
        write_context(spec, program, context)
        tag = bento_tag(version.model, version.version, version.digest)
        archive = build_bento(context, tag, work / "model.bento")
        log.info("built %s (%d bytes) for %s:%s", tag, archive.stat().st_size, version.model, version.version)
        if force and version.bento is not None:
            client.delete_bento(version.model, version.version)
        return Packaged(client.upload_bento(version.model, version.version, archive, tag), reused=False)


def package_service(client: RegistryClient, service: str, model: str, *, description: str = "",
                    tags: dict[str, str] | None = None) -> schemas.Version:
    """Build a user's own BentoML service (``path/to/service.py:ClassName``) and push it as a
    new version of ``model`` in format ``bento``, recorded as that version's Bento too."""
    path_text, _, class_name = service.rpartition(":")
    source = Path(path_text)
    if not class_name or not source.is_file() or source.suffix != ".py":
        raise PackagingError(f"--service expects path/to/service.py:ClassName, got {service!r}")
    client.ensure_model(model)
    version = client.create_version(model, format="bento", description=description, tags=tags or {},
                                    metadata={"service": f"{source.stem}:{class_name}"}, source=str(source))
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-package-") as workdir:
            context = Path(workdir) / "context"
            shutil.copytree(source.parent, context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            if not (context / "bentofile.yaml").exists():
                (context / "bentofile.yaml").write_text(
                    f'service: "{source.stem}:{class_name}"\ninclude: ["*.py"]\npython:\n  lock_packages: false\n')
            tag = f"{model}:v{version.version}"
            archive = build_bento(context, tag, Path(workdir) / "service.bento")
            client.upload_artifact(model, version.version, archive)
            return client.upload_bento(model, version.version, archive, tag)
    except BaseException:
        try:  # leave no pending version behind
            client.delete_version(model, version.version)
        except Exception:  # noqa: BLE001 - the original error matters more
            log.warning("could not remove pending version %s:%s", model, version.version)
        raise
