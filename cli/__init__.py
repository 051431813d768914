"""The root ``modelyard`` command: assembles the sub-commands each package owns.

Top of the dependency order: ``cli`` → ``operator``, ``bentos`` → ``registry``.  Nothing imports
this package; it holds no logic of its own, only the assembly (``main.py``).
"""
