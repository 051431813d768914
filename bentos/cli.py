"""``modelyard package``, ``modelyard pull`` and ``modelyard serve``: the packaging and serving commands.

``python -m modelyard.bentos.cli serve …`` runs them without the root command (the quickstart does).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.names import parse_model_ref
from modelyard.registry.cli.client_cmds import pull_artifact
from modelyard.registry.cli.common import RegistryOption, TokenOption, client, console


def package(
    ref: Annotated[str | None, typer.Argument(help="NAME@ALIAS or NAME:VERSION to package")] = None,
    service: Annotated[str | None, typer.Option("--service", help="your own BentoML service, "
                                                "path/to/service.py:ClassName, pushed as a new version")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="with --service: the model to push to")] = None,
    force: Annotated[bool, typer.Option("--force", help="build again even if a Bento is recorded")] = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
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


def pull(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME:VERSION")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the artifact to this file")] = None,
    to: Annotated[Path | None, typer.Option("--to", help="fetch the version's Bento into this cache directory "
                                                          "(what a model pod's init container runs)")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Download a version's artifact (-o FILE) or its Bento (--to DIR), verifying the sha256."""
    from modelyard.bentos.runtime import describe, fetch

    if (output is None) == (to is None):
        raise typer.BadParameter("give exactly one of --output FILE or --to DIR")
    with client(registry, token) as registry_client:
        if output is not None:
            pull_artifact(registry_client, ref, output)
            return
        assert to is not None
        fetched = fetch(registry_client, parse_model_ref(ref), to.expanduser())
        console.print(f"pulled {describe(fetched)} → {fetched.directory}", highlight=False, soft_wrap=True)


def serve(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME:VERSION")],
    cache: Annotated[Path | None, typer.Option(help="Bento cache (a pod volume) [default: MODELYARD_HOME/cache]",
                                               show_default=False)] = None,
    host: Annotated[str, typer.Option(help="bind address (0.0.0.0 inside a pod)")] = defaults.MODEL_SERVER_HOST,
    port: Annotated[int, typer.Option(help="port")] = defaults.MODEL_SERVER_PORT,
    max_batch_size: Annotated[int, typer.Option(envvar=Env.MAX_BATCH_SIZE, min=1)] = defaults.MAX_BATCH_SIZE,
    max_latency_ms: Annotated[int, typer.Option(envvar=Env.MAX_LATENCY_MS, min=1,
                                                help="BentoML sheds (503) requests it cannot serve within this")]
    = defaults.MAX_LATENCY_MS,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="adaptive batching")]
    = defaults.BATCHING,
    workers: Annotated[int, typer.Option(envvar=Env.SERVE_WORKERS, min=1)] = defaults.SERVE_WORKERS,
    gpus: Annotated[int, typer.Option(envvar=Env.GPUS, min=0, help="GPUs to declare to BentoML")] = 0,
    max_request_bytes: Annotated[int, typer.Option(envvar=Env.MAX_REQUEST_BYTES, min=1024,
                                                   help="larger request bodies get a 413")]
    = defaults.MAX_REQUEST_BYTES,
    engine: Annotated[str, typer.Option(envvar=Env.ENGINE, help="auto | transformers (format hf) | torch "
                                                                "(torch.export, TorchScript)")] = defaults.ENGINE,
    max_model_len: Annotated[int | None, typer.Option(envvar=Env.MAX_MODEL_LEN, min=1,
                                                      help="a language model's longest sequence (prompt + "
                                                           "completion) [default: its context]")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Fetch what serves the version (its Bento, or its artifact when it has none), verify it, and serve it."""
    from modelyard.bentos.pod.settings import ServingConfig
    from modelyard.bentos.runtime import default_cache, describe, fetch, serve_command, supervise

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if engine not in defaults.ENGINES:
        raise typer.BadParameter(f"{engine!r} is not one of {', '.join(defaults.ENGINES)}", param_hint="--engine")
    cache = (cache or default_cache()).expanduser()
    with client(registry, token) as registry_client:
        fetched = fetch(registry_client, ref, cache)
    config = ServingConfig(max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, batching=batching,
                           workers=workers, gpus=gpus, max_request_bytes=max_request_bytes, engine=engine,
                           max_model_len=max_model_len)
    argv, env = serve_command(fetched, host, port, config, cache)
    console.print(f"serving {describe(fetched)} on http://{host}:{port}", highlight=False, soft_wrap=True)
    failure_file = cache / f"failure-{os.getpid()}.txt"
    raise typer.Exit(supervise(argv, env, failure_file))


bentos_app = typer.Typer(help="Package and serve registry versions.", no_args_is_help=True, add_completion=False)
for _command in (package, pull, serve):
    bentos_app.command()(_command)

if __name__ == "__main__":
    bentos_app()
