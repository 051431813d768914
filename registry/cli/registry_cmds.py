"""``modelyard registry …``: run and administer the registry server."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelyard.registry.cli.common import (
    JsonOption, RegistryOption, TokenOption, client, console, errors, print_json, reported_errors,
)
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.names import check_model_name as check_name
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.settings import RegistrySettings, default_db_url, proxy_options

if TYPE_CHECKING:
    from modelyard.registry.store import RegistryStore

registry_app = typer.Typer(help="Run and administer the registry server.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (scopes: read < write < admin).", no_args_is_help=True)
registry_app.add_typer(token_app, name="token")
auth_app = typer.Typer(help="Whether the registry requires tokens.", no_args_is_help=True)
registry_app.add_typer(auth_app, name="auth")

DbOption = Annotated[str | None, typer.Option("--db", envvar=Env.DB_URL,
                                              help="SQLAlchemy URL [default: SQLite under MODELYARD_HOME]",
                                              show_default=False)]


@registry_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="bind address")] = defaults.REGISTRY_HOST,
    port: Annotated[int, typer.Option(help="port")] = defaults.REGISTRY_PORT,
    db: DbOption = None,
    artifacts: Annotated[str | None, typer.Option("--artifacts", envvar=Env.ARTIFACTS,
                                                  help="directory or s3://bucket/prefix", show_default=False)] = None,
    anonymous_read: Annotated[bool | None, typer.Option("--anonymous-read/--no-anonymous-read",
                                                        help="let clients without a token read "
                                                             "[default: only while no token exists]",
                                                        show_default=False)] = None,
    migrate: Annotated[bool | None, typer.Option("--migrate/--no-migrate",
                                                 help="upgrade the schema on start [default: SQLite only]",
                                                 show_default=False)] = None,
    workers: Annotated[int, typer.Option(min=1, help="server processes")] = 1,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Serve the REST API (on SQLite and local disk unless told otherwise)."""
    import uvicorn

    settings = RegistrySettings()  # environment first, flags override
    settings.db_url = db or settings.db_url
    settings.artifacts_url = artifacts or settings.artifacts_url
    if anonymous_read is not None:
        settings.anonymous_read = anonymous_read
    if migrate is not None:
        settings.migrate_on_start = migrate
    settings.workers = workers
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common = {"host": host, "port": port, "log_level": log_level, "access_log": False, "timeout_graceful_shutdown": 10,
              **proxy_options(settings)}
    with reported_errors():
        if workers == 1:
            from modelyard.registry.app import create_app

            uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        else:
            from modelyard.registry.db.prepare import prepare_database

            prepare_database(settings.db_url, settings.migrate_on_start)  # migrate once, before the workers start
            os.environ.update(settings.to_env())
            uvicorn.run("modelyard.registry.app:create_app_from_env", factory=True, workers=workers,
                        **common)  # type: ignore[arg-type]


@registry_app.command("migrate")
def migrate(db: DbOption = None) -> None:
    """Create or upgrade the database schema to this version's."""
    from modelyard.registry.db.engine import create_db_engine
    from modelyard.registry.db.migrate import current_revision, upgrade

    with reported_errors():
        engine = create_db_engine(db or default_db_url())
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    console.print(f"schema at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))


def _store(db: str | None) -> RegistryStore:
    from modelyard.registry.store import RegistryStore

    return RegistryStore.open(db or default_db_url(), migrate_on_start=True)


@token_app.command("create")
def token_create(
    scope: Annotated[str, typer.Option(help="read | evaluate (read, record offline evaluations) | report (an "
                                            "operator's: read, report deployments and canaries) | write | admin")]
    = "read",
    name: Annotated[str, typer.Option(help="who or what holds it (unique among live tokens)")] = "token",
    cluster: Annotated[str | None, typer.Option(
        help="for --scope report: the one cluster it may report deployments for (the operator's clusterName)")] = None,
    db: DbOption = None,
) -> None:
    """Create a token and print it (shown once; only its hash is stored).

    The first token turns authentication on for the whole registry.
    """
    with reported_errors():
        token, info = _store(db).create_token(name, scope, cluster=cluster)
    console.print(f"created token {info.id} ({info.name}, scope {info.scope}); store it now, it is not shown again:",
                  highlight=False)
    print(token)


@token_app.command("ls")
def token_ls(db: DbOption = None) -> None:
    """List tokens (never their values)."""
    with reported_errors():
        store = _store(db)
        tokens, enabled = store.list_tokens(), store.auth_enabled()
    table = Table("ID", "NAME", "SCOPE", "CLUSTER", "CREATED", "REVOKED", box=None)
    for t in tokens:
        table.add_row(str(t.id), t.name, t.scope, t.cluster or "", t.created_at.strftime("%Y-%m-%d %H:%M"),
                      "yes" if t.revoked else "")
    console.print(table)
    console.print(_auth_line(enabled), highlight=False)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(help="token id (see `token ls`)")],
                 last_admin: Annotated[bool, typer.Option(
                     "--last-admin", help="allow revoking the last live admin token")] = False,
                 db: DbOption = None) -> None:
    """Revoke a token: servers refuse it at once (SQLite), or as soon as each PostgreSQL replica hears of
    it (milliseconds).  Authentication stays on."""
    with reported_errors():
        _store(db).revoke_token(token_id, last_admin=last_admin)
    console.print(f"revoked token {token_id}")


def _auth_line(enabled: bool) -> str:
    if enabled:
        return "authentication: on (clients need a token)"
    return "authentication: off (the registry is open: anonymous clients may do anything)"


@auth_app.command("status")
def auth_status(db: DbOption = None) -> None:
    """Say whether clients need a token."""
    with reported_errors():
        enabled = _store(db).auth_enabled()
    console.print(_auth_line(enabled), highlight=False)


@auth_app.command("open")
def auth_open(yes: Annotated[bool, typer.Option("--yes", help="confirm: anyone who can reach the registry "
                                                             "may then read, write and delete")] = False,
              db: DbOption = None) -> None:
    """Turn authentication off (recorded as an `auth.opened` event).  Creating a token turns it on again."""
    if not yes:
        errors.print("[red]error:[/red] opening the registry gives every anonymous client admin rights; "
                     "pass --yes to confirm", highlight=False)
        raise typer.Exit(1)
    with reported_errors():
        changed = _store(db).open_registry()
    console.print("authentication: off" + ("" if changed else " (it already was)"), highlight=False)


trust_app = typer.Typer(help="Signers whose OpenSSF model signatures the registry trusts (admin token to change).",
                        no_args_is_help=True)
registry_app.add_typer(trust_app, name="trust")


@trust_app.command("add")
def trust_add(
    name: Annotated[str, typer.Argument(help="the signer's name, as signed-by:NAME rules and specs name it")],
    public_key: Annotated[Path | None, typer.Option("--public-key", exists=True, dir_okay=False,
                                                    help="its elliptic-curve public key (PEM)")] = None,
    ca_cert: Annotated[Path | None, typer.Option("--ca-cert", exists=True, dir_okay=False,
                                                 help="the CA certificate(s) that issue its signing certificates")] = None,
    identity: Annotated[str | None, typer.Option("--identity", help="with --ca-cert: the email, URI, DNS name or "
                                                                    "common name its certificates must carry")] = None,
    registry: RegistryOption = defaults.REGISTRY_URL,
    token: TokenOption = None,
) -> None:
    """Trust NAME's key or CA: signatures it verifies are recorded on versions."""
    with client(registry, token) as registry_client:
        check_name(name)
        if (public_key is None) == (ca_cert is None):
            raise ValueError("give exactly one of --public-key and --ca-cert")
        if identity is not None and ca_cert is None:
            raise ValueError("--identity pins a CA's signers: it needs --ca-cert")
        method, path = ("key", public_key) if public_key is not None else ("certificate", ca_cert)
        assert path is not None
        added = registry_client.add_trust(name, schemas.TrustRootCreate(method=method, pem=path.read_text(),
                                                                        identity=identity))
    console.print(f"trusted [bold]{added.name}[/bold] ({added.method} {added.fingerprint[:16]}…"
                  f"{', identity ' + added.identity if added.identity else ''})", highlight=False)


@trust_app.command("ls")
def trust_ls(as_json: JsonOption = False, registry: RegistryOption = defaults.REGISTRY_URL,
             token: TokenOption = None) -> None:
    """List the trusted signers."""
    with client(registry, token) as registry_client:
        roots = registry_client.list_trust()
    if as_json:
        print_json([root.model_dump(mode="json") for root in roots])
        return
    table = Table("NAME", "METHOD", "FINGERPRINT", "IDENTITY", "ADDED BY", "ADDED", box=None)
    for root in roots:
        table.add_row(root.name, root.method, root.fingerprint[:16] + "…", root.identity or "-", root.created_by,
                      root.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@trust_app.command("rm")
def trust_rm(name: Annotated[str, typer.Argument(help="signer name")],
             registry: RegistryOption = defaults.REGISTRY_URL, token: TokenOption = None) -> None:
    """Stop trusting NAME: its signatures stay listed, untrusted, and signed-by:NAME rules refuse them."""
    with client(registry, token) as registry_client:
        registry_client.remove_trust(name)
    console.print(f"removed [bold]{name}[/bold] from the trust store", highlight=False)
