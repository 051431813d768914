"""Client commands: push, models, versions, alias, deployments (and the artifact half of pull)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.model import hf_model
from modelyard.registry.alias_rules import parse as parse_rule
from modelyard.registry.cli.common import (
    JsonOption, RegistryOption, TokenOption, bytes_progress, client, console, parse_metrics, parse_pairs,
    print_json,
)
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.digests import file_sha256
from modelyard.registry.kernel.errors import RegistryError, Unavailable
from modelyard.registry.model.formats import sniff_format
from modelyard.registry.model.hf_archive import DirectoryArchive
from modelyard.registry.model.signature import signature_metadata
from modelyard.registry.signing.sign import SigningKey, sign
from modelyard.registry.kernel.units import human_size
from modelyard.registry.kernel.names import check_alias, check_model_name, parse_model_ref

models_app = typer.Typer(help="Registered models.", no_args_is_help=True)
versions_app = typer.Typer(help="Model versions.", no_args_is_help=True)
alias_app = typer.Typer(help="Aliases (movable names such as 'production').", no_args_is_help=True)
deployments_app = typer.Typer(help="Deployments, as the clusters' operators report them.", no_args_is_help=True)
ModelArgument = Annotated[str, typer.Argument(help="model name")]
AliasArgument = Annotated[str, typer.Argument(help="alias")]


def push(
    file: Annotated[Path, typer.Argument(exists=True, readable=True,
                                         help="artifact to upload, or a Hugging Face model directory")],
    model: Annotated[str, typer.Option("--model", "-m", help="registered model name (created if missing)")],
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="point this alias at the new version")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE, repeatable")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="KEY=NUMBER, repeatable")] = None,
    format: Annotated[str | None, typer.Option("--format", help="torch-export | torchscript | bento | hf "
                                                                "[default: read from the file]")] = None,
    allow_code: Annotated[bool, typer.Option("--allow-code", help="accept a model directory that carries its own "
                                                                  "Python code (trust_remote_code)")] = False,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="e.g. -1,1,8,8 (batch first)")] = None,
    input_dtype: Annotated[str | None, typer.Option("--input-dtype", help="e.g. float32")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="comma-separated output class labels")] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    source: Annotated[str | None, typer.Option("--source", help="lineage: commit, run id, dataset …")] = None,
    sign_key: SignKeyOption = None,
    sign_cert: SignCertOption = None,
    sign_chain: SignChainOption = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Upload FILE as a new version of MODEL (streamed, digest-checked) and print it.

    With --sign-key (and for certificate signing --sign-cert and --sign-chain) the file or
    directory is signed with OpenSSF model signing before anything is created, and the
    signature is uploaded after it; the registry verifies it against its trust store.

    FILE must be a self-contained program: a torch.export archive (.pt2), TorchScript or
    an exported .bento; a torch.save pickle is refused (it needs your code to load).  A
    directory is a Hugging Face model (config.json, safetensors weights, tokenizer): it is
    sent as one archive, and its facts (architecture, parameters, context length, memory
    to load) are recorded on the version.
    """
    tags, metrics = parse_pairs(tag, "--tag"), parse_metrics(metric)
    with client(registry, token) as registry_client:
        check_model_name(model)
        if alias:
            check_alias(alias)
        upload = inspect_upload(file, format, allow_code, input_shape, input_dtype, labels)
        signing_key = signing_key_of(sign_key, sign_cert, sign_chain)
        bundle = sign(file, signing_key) if signing_key is not None else None
        with bytes_progress() as progress:
            task = progress.add_task("hashing", total=upload.size)
            digest = upload.sha256(lambda n: progress.advance(task, n))
            registry_client.ensure_model(model)
            version = registry_client.create_version(
                model, format=upload.format, description=description, metrics=metrics, tags=tags, source=source,
                metadata=upload.metadata,
            )
            progress.update(task, description=f"uploading {model}:{version.version}", completed=0)
            try:
                version = registry_client.upload_artifact(model, version.version, file, sha256=digest,
                                                          progress=lambda n: progress.advance(task, n))
            except RegistryError as exc:
                if not isinstance(exc, Unavailable):  # leave no pending version behind when we can say so
                    try:
                        registry_client.delete_version(model, version.version)
                    except RegistryError:
                        pass
                raise
        console.print(f"pushed [bold]{model}:{version.version}[/bold] {version.digest} ({human_size(version.size)})",
                      highlight=False)
        if isinstance(facts := version.metadata.get("hf"), dict):
            console.print(describe_hf(facts), highlight=False)
        if bundle is not None:
            try:
                version = registry_client.upload_signature(model, version.version, bundle)
            except RegistryError as exc:
                raise RegistryError(f"{model}:{version.version} is pushed but unsigned: {exc}. Sign it again with "
                                    f"`modelyard versions sign {model}:{version.version} {file}`") from None
            print_signatures(version)
        if alias:
            registry_client.set_alias(model, alias, version.version)
            console.print(f"alias [bold]{model}@{alias}[/bold] → {version.version}", highlight=False)


SignKeyOption = Annotated[Path | None, typer.Option(
    "--sign-key", exists=True, dir_okay=False, help="sign with this elliptic-curve private key (PEM; an encrypted "
    "one's password from MODELYARD_SIGN_KEY_PASSWORD)")]
SignCertOption = Annotated[Path | None, typer.Option(
    "--sign-cert", exists=True, dir_okay=False, help="the signing certificate of --sign-key (certificate signing)")]
SignChainOption = Annotated[list[Path] | None, typer.Option(
    "--sign-chain", exists=True, dir_okay=False, help="intermediate certificates up to the CA (repeatable)")]


def signing_key_of(key: Path | None, certificate: Path | None, chain: list[Path] | None) -> SigningKey | None:
    if key is None:
        if certificate or chain:
            raise ValueError("--sign-cert and --sign-chain need --sign-key (the certificate's private key)")
        return None
    signing_key = SigningKey(key, certificate, tuple(chain or ()))
    signing_key.check()
    return signing_key


def print_signatures(version: schemas.Version) -> None:
    for signature in version.signatures:
        state = "trusted" if signature.trusted else "[red]no longer trusted[/red]"
        who = f" ({signature.identity})" if signature.identity else ""
        console.print(f"  signed by [bold]{signature.signer}[/bold]{who} with a {signature.method}, {state}",
                      highlight=False)


@dataclass(frozen=True)
class Upload:
    """What ``push`` sends: its format, the metadata recorded with it, and how to hash it."""

    format: str
    metadata: dict[str, Any]
    size: int
    sha256: Callable[[Callable[[int], None]], str]


def inspect_upload(path: Path, declared: str | None, allow_code: bool, input_shape: str | None,
                   input_dtype: str | None, labels: str | None) -> Upload:
    """Check ``path`` before anything is created in the registry (which checks again)."""
    if path.is_dir():
        if declared and declared != "hf":
            raise ValueError(f"{path.name} is a directory: only a Hugging Face model (format hf) is pushed as one")
        facts = hf_model.inspect(hf_model.directory_tree(path), allow_code=allow_code, label=str(path))
        archive = DirectoryArchive(path)
        return Upload("hf", {"filename": path.name, "hf": facts.metadata()}, archive.size, archive.sha256)
    if allow_code:
        raise ValueError("--allow-code is for model directories (format hf)")
    detected = sniff_format(path)
    if declared and declared != detected:
        raise ValueError(f"{path.name} is a {detected} artifact, not {declared}")
    metadata = {"filename": path.name, **signature_metadata(
        input_shape, input_dtype, [label.strip() for label in labels.split(",")] if labels else None)}
    return Upload(detected, metadata, path.stat().st_size, lambda progress: file_sha256(path, progress))


def describe_hf(facts: dict[str, Any]) -> str:
    context = facts.get("context_length") or "unknown"
    template = "yes" if facts.get("chat_template") else "no"
    return (f"  {facts.get('architecture') or facts.get('model_type') or 'model'}: "
            f"{facts.get('parameters', 0):,} parameters ({facts.get('dtype')}), "
            f"context {context}, chat template {template}, "
            f"{human_size(int(facts.get('load_bytes') or 0))} to load"
            f"{', runs its own code' if facts.get('needs_code') else ''}")


def pull_artifact(registry_client: RegistryClient, ref: str, output: Path) -> None:
    """``modelyard pull REF -o FILE``: the version's artifact, sha256-checked, with a progress bar.
    (The command itself is ``bentos.cli.pull``, which also fetches what serves a version.)"""
    version = registry_client.resolve(parse_model_ref(ref))
    with bytes_progress() as progress:
        task = progress.add_task(f"downloading {version.model}:{version.version}", total=version.size)
        registry_client.download_artifact(version.model, version.version, output,
                                          progress=lambda n: progress.advance(task, n))
    console.print(f"pulled [bold]{version.model}:{version.version}[/bold] {version.digest} → {output}",
                  highlight=False)


@models_app.command("ls")
def models_ls(
    prefix: Annotated[str | None, typer.Option("--prefix", help="name prefix")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE filter, repeatable")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="only models with this alias")] = None,
    as_json: JsonOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """List registered models."""
    with client(registry, token) as registry_client:
        found = list(registry_client.iter_models(prefix=prefix, tags=parse_pairs(tag, "--tag"), alias=alias))
    if as_json:
        print_json([m.model_dump(mode="json") for m in found])
        return
    table = Table("NAME", "LATEST", "ALIASES", "TAGS", "UPDATED", box=None)
    for m in found:
        table.add_row(m.name, str(m.latest_version or "-"),
                      ", ".join(f"{a}→{v}" for a, v in m.aliases.items()) or "-",
                      ", ".join(f"{k}={v}" for k, v in m.tags.items()) or "-", m.updated_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


ForceOption = Annotated[bool, typer.Option("--force", help="even while a deployment serves it (admin token)")]


@models_app.command("delete")
def models_delete(
    name: ModelArgument,
    force: ForceOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Delete a model and all its versions (refused while it has aliases or a deployment serves it)."""
    with client(registry, token) as registry_client:
        registry_client.delete_model(name, force=force)
    console.print(f"deleted model {name}")


@versions_app.command("rm")
def versions_rm(
    name: ModelArgument,
    version: Annotated[int, typer.Argument(help="version number", min=1)],
    force: ForceOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Delete a version (refused while an alias points at it or a deployment serves it)."""
    with client(registry, token) as registry_client:
        registry_client.delete_version(name, version, force=force)
    console.print(f"deleted {name}:{version}")


@versions_app.command("ls")
def versions_ls(
    name: ModelArgument,
    status: Annotated[str | None, typer.Option("--status", help="pending | ready | failed")] = None,
    as_json: JsonOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """List a model's versions, newest first."""
    with client(registry, token) as registry_client:
        found = list(registry_client.iter_versions(name, order="desc", status=status))
    if as_json:
        print_json([v.model_dump(mode="json") for v in found])
        return
    table = Table("VERSION", "STATUS", "DIGEST", "SIZE", "FORMAT", "ALIASES", "METRICS", "SIGNED BY", "CREATED",
                  box=None)
    for v in found:
        table.add_row(str(v.version), v.status.value, (v.digest or "-")[:19], human_size(v.size),
                      v.format.value if v.format else "-", ", ".join(v.aliases) or "-",
                      ", ".join(f"{k}={val:g}" for k, val in v.metrics.items()) or "-",
                      ", ".join(s.signer if s.trusted else f"{s.signer} (untrusted)" for s in v.signatures) or "-",
                      v.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@versions_app.command("show")
def versions_show(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME:VERSION")],
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Print one version as JSON."""
    with client(registry, token) as registry_client:
        print_json(registry_client.resolve(parse_model_ref(ref)).model_dump(mode="json"))


@versions_app.command("sign")
def versions_sign(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    path: Annotated[Path, typer.Argument(exists=True, readable=True, help="the file or model directory that was "
                                                                        "pushed as the version")],
    sign_key: Annotated[Path, typer.Option("--sign-key", exists=True, dir_okay=False,
                                           help="elliptic-curve private key (PEM)")],
    sign_cert: SignCertOption = None,
    sign_chain: SignChainOption = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Sign PATH (what was pushed as NAME:VERSION) and upload the signature; the registry records it only
    if a trusted signer verifies it and it covers exactly the version's bytes."""
    with client(registry, token) as registry_client:
        parsed = parse_model_ref(ref)
        if parsed.version is None:
            raise ValueError(f"{ref}: name the version (NAME:VERSION): a signature is of fixed bytes")
        signing_key = signing_key_of(sign_key, sign_cert, sign_chain)
        assert signing_key is not None
        version = registry_client.sign_version(parsed.name, parsed.version, path, signing_key)
        console.print(f"signed [bold]{version.model}:{version.version}[/bold] {version.digest}", highlight=False)
        print_signatures(version)


@alias_app.command("set")
def alias_set(
    name: ModelArgument,
    alias: Annotated[str, typer.Argument(help="alias, e.g. production")],
    version: Annotated[int, typer.Argument(help="version number", min=1)],
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Point ALIAS at VERSION (deployments following it roll the version out)."""
    with client(registry, token) as registry_client:
        answer = registry_client.set_alias(name, alias, version)
    console.print(f"alias [bold]{answer.model}@{answer.alias}[/bold] → {answer.version} ({answer.digest})",
                  highlight=False)


@alias_app.command("get")
def alias_get(
    name: ModelArgument,
    alias: AliasArgument,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Print the version an alias points at."""
    with client(registry, token) as registry_client:
        answer = registry_client.get_alias(name, alias)
    console.print(f"{answer.model}@{answer.alias} → {answer.version} ({answer.digest})", highlight=False)


@alias_app.command("rm")
def alias_rm(
    name: ModelArgument,
    alias: AliasArgument,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Delete an alias."""
    with client(registry, token) as registry_client:
        registry_client.delete_alias(name, alias)
    console.print(f"deleted alias {name}@{alias}")


@alias_app.command("protect")
def alias_protect(
    name: ModelArgument,
    alias: AliasArgument,
    require: Annotated[list[str] | None, typer.Option(
        "--require", help="[SOURCE.]METRIC OP NUMBER (accuracy>=0.95, canary@staging.p99_ms<=120) or "
                          "signed-by:NAME; repeatable (none: admins only)")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Protect ALIAS (admin token): it then moves only for admins, or to versions meeting every rule."""
    for rule in require or []:
        parse_rule(rule)  # a clear message before anything is sent
    with client(registry, token) as registry_client:
        registry_client.protect_alias(name, alias, schemas.validated(schemas.AliasProtection, require=require or []))
    rules = ", ".join(require or []) or "admin tokens only"
    console.print(f"{name}@{alias} is protected: {rules}", highlight=False)


@alias_app.command("unprotect")
def alias_unprotect(
    name: ModelArgument,
    alias: AliasArgument,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Lift an alias's protection (admin token)."""
    with client(registry, token) as registry_client:
        registry_client.unprotect_alias(name, alias)
    console.print(f"{name}@{alias} is no longer protected", highlight=False)


@versions_app.command("evaluations")
def versions_evaluations(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@ALIAS")],
    kind: Annotated[str | None, typer.Option(help="canary | offline")] = None,
    source: Annotated[str | None, typer.Option(help="CLUSTER/NAMESPACE/NAME of a canary, or an evaluator's name")]
    = None,
    verdict: Annotated[str | None, typer.Option(help="pass | fail")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest N")] = 20,
    as_json: JsonOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """The evidence measured on a version: canary and offline evaluations, newest first."""
    with client(registry, token) as registry_client:
        version = registry_client.resolve(parse_model_ref(ref))
        found = registry_client.list_evaluations(version.model, version.version, kind=kind, source=source,
                                                 verdict=verdict, limit=limit).items
    if as_json:
        print_json([e.model_dump(mode="json") for e in found])
        return
    table = Table("ID", "TIME", "KIND", "SOURCE", "VERDICT", "REQUESTS", "METRICS", "BY", box=None)
    for e in found:
        table.add_row(str(e.id), e.time.strftime("%Y-%m-%d %H:%M:%S"), e.kind, e.source, e.verdict,
                      "-" if e.requests is None else f"{e.requests:,}",
                      ", ".join(f"{k}={val:g}" for k, val in e.metrics.items()) or "-", e.recorded_by)
    console.print(table)


@versions_app.command("evaluate")
def versions_evaluate(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@ALIAS")],
    metric: Annotated[list[str], typer.Option("--metric", help="NAME=NUMBER (repeatable)")],
    verdict: Annotated[str, typer.Option(help="pass | fail")],
    source: Annotated[str, typer.Option(help="the evaluator's name (e.g. nightly-eval)")],
    requests: Annotated[int | None, typer.Option(min=0, help="examples evaluated")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Record an offline evaluation of a version (needs an evaluate token)."""
    metrics: dict[str, float] = {}
    for item in metric:
        key, sep, value = item.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: use NAME=NUMBER", param_hint="--metric")
    with client(registry, token) as registry_client:
        version = registry_client.resolve(parse_model_ref(ref))
        body = schemas.validated(schemas.EvaluationCreate, kind="offline", source=source, metrics=metrics,
                                 verdict=verdict, requests=requests)
        recorded = registry_client.record_evaluation(version.model, version.version, body)
    console.print(f"recorded evaluation {recorded.id} on {version.model}:{version.version} ({recorded.verdict})",
                  highlight=False)


@alias_app.command("history")
def alias_history(
    name: ModelArgument,
    alias: AliasArgument,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest N moves")] = 20,
    as_json: JsonOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Who moved ALIAS, from which version to which, and when (newest first)."""
    with client(registry, token) as registry_client:
        moves = registry_client.alias_history(name, alias, limit=limit).items
        protection = registry_client.alias_protection(name, alias)
    if as_json:
        print_json([m.model_dump(mode="json") for m in moves])
        return
    if protection is not None:
        console.print(f"protected: {', '.join(protection.require) or 'admin tokens only'}", highlight=False)
    table = Table("TIME", "FROM", "TO", "WHO", box=None)
    for move in moves:
        table.add_row(move.time.strftime("%Y-%m-%d %H:%M:%S"), str(move.from_version or "-"),
                      str(move.to_version) if move.to_version is not None else "(deleted)", move.actor)
    console.print(table)


@deployments_app.command("ls")
def deployments_ls(
    model: Annotated[str | None, typer.Option("--model", "-m", help="only this model")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="only this cluster")] = None,
    phase: Annotated[str | None, typer.Option("--phase", help="a phase, or Stale")] = None,
    as_json: JsonOption = False,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """What serves where, as the clusters' operators report it."""
    with client(registry, token) as registry_client:
        found = list(registry_client.iter_deployments(model=model, cluster=cluster, phase=phase))
    if as_json:
        print_json([d.model_dump(mode="json") for d in found])
        return
    table = Table("CLUSTER", "NAMESPACE", "NAME", "MODEL", "PHASE", "READY", "REVISION", "REPORTED", box=None)
    for d in found:
        table.add_row(d.cluster, d.namespace, d.name, f"{d.model}:{d.version or '-'}",
                      f"{d.phase} (stale)" if d.stale else d.phase, f"{d.ready_replicas}/{d.desired_replicas}",
                      str(d.helm_revision or "-"), d.reported_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)
