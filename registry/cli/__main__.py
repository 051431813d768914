"""``python -m modelyard.registry.cli serve …``: the registry's own commands without the root command,
so the base package can start a registry server (``processes.children``) without importing upward."""

from modelyard.registry.cli.registry_cmds import registry_app

registry_app()
