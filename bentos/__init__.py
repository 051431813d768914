"""Packaging registry model versions as BentoML services, and the pod runtime that serves them.

Commands: ``package``, ``pull``, ``serve`` (``cli.py``) and ``quickstart``.  May import
``modelyard.registry`` only (``tests/test_dependencies.py``).
"""
