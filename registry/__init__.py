"""Modelyard's model registry: store, artifact stores, REST server, client and its commands.

The base of the dependency order (``cli`` → ``operator``, ``bentos`` → ``registry``): it imports
nothing of ours, and everything else may import it (``tests/test_dependencies.py``).

Layered like MLflow's registry: ``operations`` is the contract that both ``store`` (over ``db``)
and ``client`` (over HTTP) satisfy; ``artifacts`` hold the bytes, ``server`` speaks HTTP over the
store, ``ui`` is the web UI over the same store and rules, ``cli`` holds the registry's commands and
the helpers every package's commands share, ``defaults`` every default and environment variable
name, ``processes`` child server processes.  ``store.deployments`` (what serves where, as operators
report it) and ``alias_rules`` (protected aliases) are parts of the store.
"""
