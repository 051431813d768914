"""``python -m modelyard.cli …`` is the ``modelyard`` command."""

from modelyard.cli.main import app

app()
