"""The kopf operator that turns ModelDeployments into Helm releases of charts/model-server.

``modelyard.operator`` is a namespace package: see README.md beside this file.  Entry point:
``modelyard operator run`` (cli.py → main.py); handlers.py is thin over reconciler.py, whose
decisions are the pure functions in rollout.py, values.py and conditions.py.
"""
