"""``modelyard package`` and ``modelyard serve``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from modelyard.bentos.config import DEFAULT_MAX_REQUEST_BYTES
from modelyard.registry.cli.common import DEFAULT_URL, RegistryOption, TokenOption, client, console


def package(
    ref: Annotated[str | None, typer.Argument(help="NAME@ALIAS or NAME:VERSION to package")] = None,
    service: Annotated[str | None, typer.Option("--service", help="your own BentoML service, "
                                                "path/to/service.py:ClassName, pushed as a new version")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="with --service: the model to push to")] = None,
    force: Annotated[bool, typer.Option("--force", help="build again even if a Bento is recorded")] = False,
    registry: RegistryOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Package a registry version as a BentoML service (or push your own service) and record its Bento."""
    from modelyard.bentos.packager import PackagingError, package_service, package_version

    if (ref is None) == (service is None) or (service is not None) != (model is not None):
        raise typer.BadParameter("give either NAME@ALIAS|NAME:VERSION, or --service FILE:CLASS with --model NAME")
    with client(registry, token) as registry_client:
        try:
            if service is not None:
                assert model is not None
                version = package_service(registry_client, service, model)
                console.print(f"pushed your service as [bold]{model}:{version.version}[/bold] "
                              f"(Bento {version.bento.tag}, {version.digest})", highlight=False)  # type: ignore[union-attr]
                return
            assert ref is not None
            result = package_version(registry_client, ref, force=force)
        except PackagingError as exc:
            raise ValueError(str(exc)) from None
    bento = result.version.bento
    assert bento is not None
    state = "already packaged as" if result.reused else "packaged as"
    console.print(f"{result.version.model}:{result.version.version} {state} [bold]{bento.tag}[/bold] "
                  f"{bento.digest} ({bento.size} bytes)", highlight=False)


def serve(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME:VERSION")],
    cache: Annotated[Path | None, typer.Option(help="Bento cache (a pod volume) [default: MODELYARD_HOME/cache]",
                                               show_default=False)] = None,
    host: Annotated[str, typer.Option(help="bind address (0.0.0.0 inside a pod)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 3000,
    max_batch_size: Annotated[int, typer.Option(envvar="MODELYARD_MAX_BATCH_SIZE", min=1)] = 32,
    max_latency_ms: Annotated[int, typer.Option(envvar="MODELYARD_MAX_LATENCY_MS", min=1,
                                                help="BentoML sheds (503) requests it cannot serve within this")] = 1000,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="adaptive batching")] = True,
    workers: Annotated[int, typer.Option(envvar="MODELYARD_SERVE_WORKERS", min=1)] = 1,
    gpus: Annotated[int, typer.Option(envvar="MODELYARD_GPUS", min=0, help="GPUs to declare to BentoML")] = 0,
    max_request_bytes: Annotated[int, typer.Option(envvar="MODELYARD_MAX_REQUEST_BYTES", min=1024,
                                                   help="larger request bodies get a 413")] = DEFAULT_MAX_REQUEST_BYTES,
    registry: RegistryOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Fetch what serves the version (its Bento, or its artifact when it has none), verify it, and serve it."""
    from modelyard.bentos.config import ServingConfig
    from modelyard.bentos.runtime import default_cache, describe, fetch, serve_command, supervise

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cache = (cache or default_cache()).expanduser()
    with client(registry, token) as registry_client:
        fetched = fetch(registry_client, ref, cache)
    config = ServingConfig(max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, batching=batching,
                           workers=workers, gpus=gpus, max_request_bytes=max_request_bytes)
    argv, env = serve_command(fetched, host, port, config, cache)
    console.print(f"serving {describe(fetched)} on http://{host}:{port}", highlight=False, soft_wrap=True)
    failure_file = cache / f"failure-{os.getpid()}.txt"
    raise typer.Exit(supervise(argv, env, failure_file))
