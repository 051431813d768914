"""The registry's commands (``registry …``, ``push``, ``models``, ``versions``, ``alias``) and the
helpers every package's commands share (``common``); the root command that assembles them all is
``modelyard.cli``.  Part of the base package: imports nothing of ours outside ``registry``."""
