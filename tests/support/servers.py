"""The registry as a real HTTP server on 127.0.0.1, in a thread or as a subprocess."""

from __future__ import annotations

import threading
from pathlib import Path

import uvicorn

from modelyard.registry.kernel.processes.children import RegistryProcess, free_port, wait_ready
from modelyard.registry.app import create_app
from modelyard.registry.settings import RegistrySettings, proxy_options


class ThreadedRegistry:
    """uvicorn serving ``create_app(settings)`` in a daemon thread."""

    def __init__(self, settings: RegistrySettings, probe: str = "/readyz") -> None:
        self.settings = settings
        self.probe = probe
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                **proxy_options(settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedRegistry:
        self.thread.start()
        wait_ready(self.url, probe=self.probe)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def store(self):  # noqa: ANN201
        return self.app.state.store


def ProcessRegistry(db_url: str, artifacts: Path | str, extra_env: dict[str, str] | None = None,  # noqa: N802
                    args: tuple[str, ...] = ()) -> RegistryProcess:
    """``modelyard registry serve`` as a child process (for crash tests and the CLI)."""
    return RegistryProcess.on(db_url, artifacts, extra_env, args)
