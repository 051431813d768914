"""Modelyard's model registry: store, artifact stores, REST server, client and CLI.

Layered like MLflow's registry: ``db`` + ``store`` hold the data, ``artifacts``
hold the bytes, ``server`` speaks HTTP over them, ``client`` speaks HTTP to it,
and ``cli`` is a thin shell over the client (and, for admin commands, the store).
"""
