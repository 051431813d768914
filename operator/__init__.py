"""The kopf operator that turns ModelDeployments into Helm releases (later issues).

Installed as ``modelyard.operator``; never importable as a bare ``operator``,
which would shadow the standard library's module.
"""
