"""Options and error handling shared by every client command (the registry's, the packaging and
serving commands, the operator's): part of the base package so each layer can use them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import RegistryError
from modelyard.registry.kernel.names import InvalidName
from modelyard.registry.kernel.defaults import Env

console = Console()
errors = Console(stderr=True)

RegistryOption = Annotated[str, typer.Option("--registry", envvar=Env.REGISTRY_URL,
                                             help="registry URL", show_default=True)]
TokenOption = Annotated[str | None, typer.Option("--token", envvar=Env.TOKEN, help="bearer token",
                                                 show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn registry and input errors into one red line on stderr and exit status 1."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (RegistryError, InvalidName, ValueError, OSError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:  # e.g. the database is down or the URL is wrong
        errors.print(f"[red]error:[/red] database: {str(exc).splitlines()[0]}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@contextmanager
def client(registry: str, token: str | None) -> Iterator[RegistryClient]:
    with reported_errors(), RegistryClient(registry, token) as registry_client:
        yield registry_client


def bytes_progress() -> Progress:
    """A transfer's progress bar (hashing, upload, download) on the console; gone when done."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=what)
        pairs[key] = value
    return pairs


def parse_metrics(items: list[str] | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in parse_pairs(items, "--metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise typer.BadParameter(f"metric {key!r} needs a number, got {value!r}", param_hint="--metric") from None
    return metrics


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
