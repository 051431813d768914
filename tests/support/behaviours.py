"""Model versions that load and serve fine but behave badly under traffic, made in code for the
canary-analysis tests: TorchScript programs wrapping the digits CNN (TorchScript, unlike
torch.export, keeps data-independent control flow such as a random failure or a loop).

- ``plain``: behaves (the control);
- ``faulty``: raises on a share of forward passes once it served a few (the server answers those with a 500);
- ``slow``: adds matrix products after the CNN until a forward pass takes a set time on this
  machine (measured here when the program is made; the node runs on the same CPUs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.bentos.examples import digits
from modelyard.registry.model.signature import INPUT_KEY, OUTPUT_KEY, InputSignature, logits_output


class _Faulty(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, share: float, healthy_calls: int) -> None:
        super().__init__()
        self.inner = inner
        self.share = share
        self.healthy_calls = healthy_calls
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.healthy_calls and float(torch.rand(1).item()) < self.share:
            raise RuntimeError("injected fault: this version fails a share of its forward passes")
        return self.inner(x)


class _Slow(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, rounds: int) -> None:
        super().__init__()
        self.inner = inner
        self.rounds = rounds
        self.register_buffer("weight", torch.randn(512, 512) / 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ones(512, 512)
        for _ in range(self.rounds):
            h = torch.tanh(h @ self.weight)
        return self.inner(x) + 0.0 * h.sum()


def _model(seed: int) -> torch.nn.Module:
    """The digits CNN with weights of its own (``seed``), so answers tell versions apart."""
    model = digits.build_model().eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def _script(module: torch.nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(module.eval()), str(path))


def plain(workdir: Path, images: np.ndarray, seed: int) -> tuple[Path, dict[str, Any], np.ndarray]:
    """A version that behaves: the CNN with weights of its own, as TorchScript."""
    inner = _model(seed)
    path = workdir / f"plain-{seed}.pt"
    _script(inner, path)
    return path, _metadata(), _outputs(inner, images)


def faulty(workdir: Path, share: float, images: np.ndarray, seed: int = 100, healthy_calls: int = 8
           ) -> tuple[Path, dict[str, Any], np.ndarray]:
    """(program, metadata, outputs for ``images`` when it does not fail).  Its first ``healthy_calls``
    forward passes never fail: the server's load-time check runs one, and passes it."""
    inner = _model(seed)
    path = workdir / f"faulty-{share}-{seed}.pt"
    _script(_Faulty(inner, share, healthy_calls), path)
    return path, _metadata(), _outputs(inner, images)


def slow(workdir: Path, seconds: float, images: np.ndarray, seed: int = 200
         ) -> tuple[Path, dict[str, Any], np.ndarray]:
    """A program whose forward pass takes about ``seconds`` on this machine's CPUs, one thread."""
    inner = _model(seed)
    probe = _Slow(inner, 20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            started = time.perf_counter()
            probe(torch.from_numpy(images))
            per_round = (time.perf_counter() - started) / 20
    finally:
        torch.set_num_threads(threads)
    path = workdir / f"slow-{seconds}-{seed}.pt"
    _script(_Slow(inner, max(1, round(seconds / per_round))), path)
    return path, _metadata(), _outputs(inner, images)


def _metadata() -> dict[str, Any]:
    return {INPUT_KEY: InputSignature((-1, *digits.INPUT_SHAPE), "float32").to_metadata(),
            OUTPUT_KEY: logits_output(digits.CLASSES)}


def _outputs(inner: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return inner(torch.from_numpy(images)).numpy()
