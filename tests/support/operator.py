"""The real operator (``modelyard operator run``) as a child process, and registry helpers for its tests."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
import httpx

from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.processes.children import free_port, stop_process
from tests.support.artifacts import program_bytes


class OperatorProcess:
    """One operator watching ``namespaces`` on the test API server; stopped (only it) on exit."""

    def __init__(self, kubeconfig: Path, registry_url: str, namespaces: list[str], log: Path, *,
                 extra: tuple[str, ...] = ()) -> None:
        self.metrics_port = free_port()
        self.args = [sys.executable, "-m", "modelyard.cli", "operator", "run",
                     "--kubeconfig", str(kubeconfig), "--registry", registry_url, "--standalone",
                     "--metrics-host", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                     "--fallback-resolve-seconds", "2", "--failure-retry-seconds", "2",
                     "--runtime-image", "registry.example:5000/modelyard-runtime:test", *extra]
        for namespace in namespaces:
            self.args += ["--namespace", namespace]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "MODELYARD_TOKEN": "", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        """Die mid-work, as a node failure would: no cleanup handlers run."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)

    def metrics(self) -> str:
        """Its Prometheus text; empty while it is not listening yet."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def push_versions(client: RegistryClient, name: str, count: int) -> list[int]:
    """``count`` ready versions of a small artifact (the operator only needs their digests)."""
    client.ensure_model(name)
    numbers = []
    for i in range(count):
        data = program_bytes(f"{name} weights {i}".encode())
        version = client.create_version(name)
        client.upload_artifact(name, version.version, io.BytesIO(data),
                               sha256="sha256:" + hashlib.sha256(data).hexdigest())
        numbers.append(version.version)
    return numbers
