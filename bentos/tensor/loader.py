"""Load a model program (torch.export or TorchScript) onto the best device, and check it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.bentos.pod.signature import InputSpec
from modelyard.bentos.pod.spec import ModelSpec
from modelyard.bentos.pod.failure import ModelLoadError
from modelyard.bentos.pod.settings import gpus_to_use
from modelyard.registry.model.formats import UnsupportedArtifact, sniff_format

log = logging.getLogger("bentoml.modelyard")  # under "bentoml" so the server's log config shows it


def pick_device(gpus: int | None = None) -> str:
    """``cuda`` when the server was given a GPU (or, given no count, when one is visible), else ``cpu``.
    A program runs on one GPU; the operator refuses more for one replica."""
    import torch

    one = None if gpus is None else min(gpus, 1)  # a program runs on one GPU, however many it was given
    return "cuda" if gpus_to_use(one, torch.cuda.device_count()) else "cpu"


def verify_digest(path: Path, digest: str) -> None:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise ModelLoadError(f"{path.name} has sha256:{hasher.hexdigest()}, expected {digest}: refusing to serve it")


def check_safe_to_load(path: Path, spec: ModelSpec) -> None:
    """Refuse a program torch would run code from while loading it (``registry.model.torch_export_check``):
    the registry checked it on upload, and this server checks again, before torch sees a byte."""
    try:
        kind = sniff_format(path, f"{spec.model}:{spec.version}'s program")
    except UnsupportedArtifact as exc:
        raise ModelLoadError(f"refusing to load it: {exc}") from None
    if kind != spec.format:
        raise ModelLoadError(f"{spec.model}:{spec.version}'s program is {kind}, not {spec.format}: refusing to load it")


@dataclass(frozen=True)
class LoadedProgram:
    module: Any
    """The callable module, on its device."""
    example_output: np.ndarray | None
    """What it answered to one example of its declared input (None: the version declares none), which
    tells the protocol's metadata the output's datatype and shape."""


def load_program(spec: ModelSpec, root: Path, device: str, threads: int) -> LoadedProgram:
    """The program, on ``device``, verified and warmed up with one example batch."""
    import torch

    torch.set_num_threads(threads)
    path = root / spec.file
    if not path.exists():
        raise ModelLoadError(f"model file {path} is missing")
    verify_digest(path, spec.digest)
    check_safe_to_load(path, spec)
    try:
        if spec.format == "torch-export":
            module = torch.export.load(str(path)).module().to(device)
        elif spec.format == "torchscript":
            module = torch.jit.load(str(path), map_location=device)
            module.eval()
        else:
            raise ModelLoadError(f"format {spec.format!r} cannot be served by the generic service")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported with its reason
        raise ModelLoadError(f"cannot load {spec.model}:{spec.version} ({spec.format}): {exc}") from exc
    input_spec = InputSpec.from_metadata(spec.metadata)
    example_output = None
    if input_spec is not None:
        try:
            with torch.inference_mode():
                example_output = module(torch.from_numpy(input_spec.example(1)).to(device)).detach().cpu().numpy()
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{spec.model}:{spec.version} fails on an example input of shape "
                                 f"{list(input_spec.shape)}: {exc}") from exc
    log.info("serving %s:%s %s on %s (%s, %d threads)", spec.model, spec.version, spec.digest, device,
             spec.format, threads)
    return LoadedProgram(module, example_output)
