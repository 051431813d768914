"""The registry as a real HTTP server on 127.0.0.1, in a thread or as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from modelyard.registry.server.app import create_app
from modelyard.registry.settings import RegistrySettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"registry exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"registry at {url} not ready after {timeout} s")


class ThreadedRegistry:
    """uvicorn serving ``create_app(settings)`` in a daemon thread."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedRegistry:
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def store(self):  # noqa: ANN201
        return self.app.state.store


class ProcessRegistry:
    """``modelyard registry serve`` as a child process (for crash tests and the CLI)."""

    def __init__(self, db_url: str, artifacts: Path | str, extra_env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MODELYARD_DB_URL": db_url, "MODELYARD_ARTIFACTS": str(artifacts),
                    **(extra_env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> ProcessRegistry:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.registry.cli.main", "registry", "serve", "--port", str(self.port),
             "--log-level", "warning", *self.args], env=self.env,
        )
        wait_ready(self.url, process=self.process)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ProcessRegistry:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
