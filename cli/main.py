"""``modelyard``: one command line for the registry, packaging, serving and the operator.

Each package owns its sub-commands; this module only mounts them.
"""

from __future__ import annotations

import typer

from modelyard.bentos import cli as bento_cmds
from modelyard.bentos.quickstart import quickstart
from modelyard.cli.local_cluster import local_cluster
from modelyard.operator.cli import operator_app
from modelyard.registry.cli import client_cmds
from modelyard.registry.cli.registry_cmds import registry_app

app = typer.Typer(
    name="modelyard",
    help="Modelyard: a model registry, BentoML packaging and a Kubernetes operator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(registry_app, name="registry")
app.command()(client_cmds.push)
app.command()(bento_cmds.pull)
app.add_typer(client_cmds.models_app, name="models")
app.add_typer(client_cmds.versions_app, name="versions")
app.add_typer(client_cmds.alias_app, name="alias")
app.add_typer(client_cmds.deployments_app, name="deployments")
app.command()(bento_cmds.package)
app.command()(bento_cmds.serve)
app.command()(quickstart)
app.command("local-cluster")(local_cluster)
app.add_typer(operator_app, name="operator")
