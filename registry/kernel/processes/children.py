"""Run a registry server as a child process on 127.0.0.1 (quickstart, tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from modelyard.registry.kernel.defaults import Env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[Any] | None = None, timeout: float = 30.0,
               probe: str = "/readyz") -> float:
    """Poll ``probe`` until it answers 200; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the registry exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}{probe}", timeout=1.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"the registry at {url} was not ready after {timeout:.0f} s")


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:  # type: ignore[type-arg]
    """Ask a child to stop (SIGTERM), wait ``timeout`` seconds for it, then kill it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RegistryProcess:
    """``modelyard registry serve`` in a child process; stopped (only it) on exit."""

    def __init__(self, env: dict[str, str] | None = None, args: tuple[str, ...] = (), port: int = 0,
                 log_level: str = "warning") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @classmethod
    def on(cls, db_url: str, artifacts: Path | str, env: dict[str, str] | None = None,
           args: tuple[str, ...] = ()) -> RegistryProcess:
        return cls({Env.DB_URL: db_url, Env.ARTIFACTS: str(artifacts), **(env or {})}, args)

    def start(self, timeout: float = 30.0) -> RegistryProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.registry.cli", "serve", "--port", str(self.port),
             "--log-level", self.log_level, *self.args], env=self.env,
        )
        try:
            self.startup_seconds = wait_ready(self.url, self.process, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
