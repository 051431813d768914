"""The kopf operator that turns ModelDeployments into Helm releases (later issues).

``modelyard.operator`` is a namespace package: see README.md beside this file.
"""
