"""The one-node cluster (tests/cluster/node.sh) and the product's images (tests/cluster/images.sh).

Unlike ``KubeApiServer`` alone, this cluster runs pods: a scheduler, a controller manager,
a kubelet on containerd, kube-proxy and a cluster DNS.  Tests reach pods and Services
by their IPs from this machine; nothing leaves it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import helm_python as helm
from kubernetes import client, config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


@dataclass(frozen=True)
class Image:
    archive: Path
    ref: str  # repository:tag as the node's containerd knows it

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]


def build_images() -> dict[str, Image]:
    """The product's images (cached by the hash of their inputs): ``modelyard``, ``modelyard-runtime`` and
    ``modelyard-runtime-vllm``."""
    result = subprocess.run(["bash", str(CLUSTER / "images.sh"), "build"], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"image build failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    images = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition("=")
        archive, ref = rest.split()
        images[name] = Image(Path(archive), ref)
    return images


def image_sizes() -> str:
    return subprocess.run(["bash", str(CLUSTER / "images.sh"), "sizes"], capture_output=True, text=True,
                          timeout=120).stdout


class Node:
    """One cluster in ``workdir``; ``stop`` stops only what ``start`` recorded and undoes its network setup."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.start_seconds = 0.0

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(CLUSTER / "node.sh"), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHON": sys.executable})

    def start(self) -> Node:
        started = time.monotonic()
        result = self._run("start", str(self.workdir), timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"the node did not start (exit {result.returncode}):\n{result.stderr[-4000:]}")
        self.start_seconds = time.monotonic() - started
        return self

    def load(self, *images: Image) -> float:
        """Import images into the node's containerd; returns the seconds it took."""
        started = time.monotonic()
        result = self._run("import", str(self.workdir), *(str(image.archive) for image in images), timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"image import failed:\n{result.stderr[-3000:]}")
        return time.monotonic() - started

    def stop(self) -> None:
        self._run("stop", str(self.workdir), timeout=180)

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def helm(self, namespace: str) -> helm.Config:
        return helm.Config(kubeconfig_path=str(self.kubeconfig), namespace=namespace)

    def log(self, component: str, lines: int = 40) -> str:
        path = self.workdir / "logs" / f"{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

