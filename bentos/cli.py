"""``modelyard package``, ``modelyard pull`` and ``modelyard serve``: the packaging and serving commands.

``python -m modelyard.bentos.cli serve …`` runs them without the root command (the quickstart does).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.names import parse_model_ref
from modelyard.registry.cli.client_cmds import pull_artifact
from modelyard.registry.cli.common import RegistryOption, TokenOption, client, console

if TYPE_CHECKING:
    from modelyard.bentos.runtime import FetchedBento
    from modelyard.registry.client import RegistryClient


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


def fetch_or_tell(registry_client: RegistryClient, ref: str, cache: Path) -> FetchedBento:
    """``runtime.fetch``; a refused signature becomes the container's termination message too (the operator
    reads its reason from the pod), then the usual one-line error."""
    from modelyard.bentos.pod.failure import tell_kubernetes
    from modelyard.bentos.provenance import SignatureNotAccepted
    from modelyard.bentos.runtime import fetch

    try:
        return fetch(registry_client, parse_model_ref(ref), cache)
    except SignatureNotAccepted as exc:
        tell_kubernetes(ref, str(exc))
        raise


def pull(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME:VERSION")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the artifact to this file")] = None,
    to: Annotated[Path | None, typer.Option("--to", help="fetch the version's Bento into this cache directory "
                                                          "(what a model pod's init container runs)")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Download a version's artifact (-o FILE) or its Bento (--to DIR), verifying the sha256."""
    from modelyard.bentos.runtime import describe

    if (output is None) == (to is None):
        raise typer.BadParameter("give exactly one of --output FILE or --to DIR")
    with client(registry, token) as registry_client:
        if output is not None:
            pull_artifact(registry_client, ref, output)
            return
        assert to is not None
        fetched = fetch_or_tell(registry_client, ref, to.expanduser())
        console.print(f"pulled {describe(fetched)} → {fetched.directory}", highlight=False, soft_wrap=True)


def serve(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME:VERSION")],
    cache: Annotated[Path | None, typer.Option(help="Bento cache (a pod volume) [default: MODELYARD_HOME/cache]",
                                               show_default=False)] = None,
    host: Annotated[str, typer.Option(help="bind address (0.0.0.0 inside a pod)")] = defaults.MODEL_SERVER_HOST,
    port: Annotated[int, typer.Option(help="port")] = defaults.MODEL_SERVER_PORT,
    engine: Annotated[str, typer.Option(envvar=Env.ENGINE, help="auto | transformers or vllm (format hf) | torch "
                                                                "(torch.export, TorchScript)")] = defaults.ENGINE,
    gpus: Annotated[int | None, typer.Option(envvar=Env.GPUS, min=0, show_default=False,
                                             help="GPUs to serve on (0: the CPU) [default: every visible one]")]
    = None,
    max_request_bytes: Annotated[int, typer.Option(envvar=Env.MAX_REQUEST_BYTES, min=1024,
                                                   help="larger request bodies get a 413")]
    = defaults.MAX_REQUEST_BYTES,
    max_batch_size: Annotated[int | None, typer.Option(envvar=Env.MAX_BATCH_SIZE, min=1, show_default=False,
                                                       help=f"tensor server [default: {defaults.MAX_BATCH_SIZE}]")]
    = None,
    max_latency_ms: Annotated[int | None, typer.Option(
        envvar=Env.MAX_LATENCY_MS, min=1, show_default=False,
        help=f"tensor server: requests that wait longer than this for the model get a 503 [default: "
             f"{defaults.MAX_LATENCY_MS}]")] = None,
    batching: Annotated[bool | None, typer.Option("--batching/--no-batching", show_default=False,
                                                  help="tensor server: micro-batching [default: on]")] = None,
    workers: Annotated[int | None, typer.Option(envvar=Env.SERVE_WORKERS, min=1, show_default=False,
                                                help=f"tensor server [default: {defaults.SERVE_WORKERS}]")] = None,
    grpc_port: Annotated[int | None, typer.Option(envvar=Env.GRPC_PORT, min=1, max=65535, show_default=False,
                                                  help="tensor server: also serve the Open Inference Protocol over "
                                                       "gRPC on this port [default: off]")] = None,
    max_running: Annotated[int | None, typer.Option(
        envvar=Env.LLM_MAX_RUNNING, min=1, show_default=False,
        help=f"language models: sequences generated for at once [default: {defaults.LLM_MAX_RUNNING}]")] = None,
    max_waiting: Annotated[int | None, typer.Option(
        envvar=Env.LLM_MAX_WAITING, min=0, show_default=False,
        help=f"language models: requests that may wait, then 429 [default: {defaults.LLM_MAX_WAITING}]")] = None,
    prefill_tokens: Annotated[int | None, typer.Option(
        envvar=Env.LLM_PREFILL_TOKENS, min=1, show_default=False,
        help=f"language models: prompt tokens prefilled together [default: {defaults.LLM_PREFILL_TOKENS}]")] = None,
    max_model_len: Annotated[int | None, typer.Option(envvar=Env.MAX_MODEL_LEN, min=1, show_default=False,
                                                      help="language models: the longest sequence (prompt + "
                                                           "completion) [default: its context]")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        envvar=Env.VLLM_GPU_MEMORY_UTILIZATION, min=0.05, max=1.0, show_default=False,
        help="vllm: the share of each GPU's memory it may take [default: vLLM's]")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(envvar=Env.VLLM_MAX_NUM_SEQS, min=1, show_default=False,
                                                     help="vllm: sequences scheduled at once [default: vLLM's]")]
    = None,
    prefix_caching: Annotated[bool | None, typer.Option("--prefix-caching/--no-prefix-caching", show_default=False,
                                                        help="vllm: reuse the KV cache of shared prefixes")] = None,
    cpu_kv_cache_gib: Annotated[int | None, typer.Option(
        envvar=Env.VLLM_CPU_KV_CACHE_GIB, min=1, show_default=False,
        help=f"vllm on CPU: the KV cache in GiB [default: {defaults.VLLM_CPU_KV_CACHE_GIB}]")] = None,
    tool_call_parser: Annotated[str | None, typer.Option(
        envvar=Env.VLLM_TOOL_CALL_PARSER, show_default=False,
        help=f"vllm: read tool calls with this parser ({', '.join(defaults.VLLM_TOOL_CALL_PARSERS)})")] = None,
    compact_json: Annotated[bool | None, typer.Option(
        "--compact-json/--no-compact-json", show_default=False,
        help="vllm: structured output without whitespace between JSON tokens (xgrammar)")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Fetch what serves the version (its Bento, or its artifact when it has none), verify it, and serve it
    with its engine's server."""
    from modelyard.bentos.pod.failure import ModelLoadError, tell_kubernetes
    from modelyard.bentos.pod.settings import CommonSettings, ServingSettings, ignored
    from modelyard.bentos.runtime import (
        BentoRefused, default_cache, describe, serve_command, serving_engine, supervise,
    )

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if engine not in defaults.ENGINES:
        raise typer.BadParameter(f"{engine!r} is not one of {', '.join(defaults.ENGINES)}", param_hint="--engine")
    if tool_call_parser is not None and tool_call_parser not in defaults.VLLM_TOOL_CALL_PARSERS:
        raise typer.BadParameter(f"{tool_call_parser!r} is not one of {', '.join(defaults.VLLM_TOOL_CALL_PARSERS)}",
                                 param_hint="--tool-call-parser")
    sections: dict[str, dict[str, Any]] = {"tensor": {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms,
                           "batching": batching, "workers": workers, "grpc_port": grpc_port},
                "llm": {"max_running": max_running, "max_waiting": max_waiting, "prefill_tokens": prefill_tokens,
                        "max_model_len": max_model_len},
                "vllm": {"gpu_memory_utilization": gpu_memory_utilization, "max_num_seqs": max_num_seqs,
                         "enable_prefix_caching": prefix_caching, "cpu_kv_cache_gib": cpu_kv_cache_gib,
                         "tool_call_parser": tool_call_parser, "compact_json": compact_json}}
    options = {"batching": "--batching/--no-batching", "enable_prefix_caching": "--prefix-caching/--no-prefix-caching",
               "compact_json": "--compact-json/--no-compact-json"}
    settings = ServingSettings(engine=engine, common=CommonSettings(max_request_bytes=max_request_bytes, gpus=gpus))
    for section, values in sections.items():
        settings = settings.with_values(section, **values)
    cache = (cache or default_cache()).expanduser()
    with client(registry, token) as registry_client:
        fetched = fetch_or_tell(registry_client, ref, cache)
    try:
        chosen = serving_engine(fetched.version, engine, gpus=gpus)
    except BentoRefused as exc:
        raise typer.BadParameter(str(exc), param_hint="--engine") from None
    given = [options.get(name.split(".")[1], f"--{name.split('.')[1].replace('_', '-')}")
             for name in (ignored(settings, chosen) if chosen else [])]
    if given:
        raise typer.BadParameter(f"{', '.join(given)}: the {chosen} engine that serves {fetched.version.model}:"
                                 f"{fetched.version.version} does not read {'it' if len(given) == 1 else 'them'}")
    settings = ServingSettings(engine=chosen or engine, common=settings.common, tensor=settings.tensor,
                               llm=settings.llm, vllm=settings.vllm)
    label = f"{fetched.version.model}:{fetched.version.version}"
    try:
        argv, env = serve_command(fetched, host, port, settings, cache)
    except ModelLoadError as exc:  # vLLM's checks, before it starts: the pod says why, as a failed load does
        console.print(f"error: {tell_kubernetes(label, str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"serving {describe(fetched)} on http://{host}:{port}", highlight=False, soft_wrap=True)
    failure_file = cache / f"failure-{os.getpid()}.txt"
    raise typer.Exit(supervise(argv, env, failure_file, label=label))


bentos_app = typer.Typer(help="Package and serve registry versions.", no_args_is_help=True, add_completion=False)
for _command in (package, pull, serve):
    bentos_app.command()(_command)

if __name__ == "__main__":
    bentos_app()
