"""The root ``modelyard`` command: assembles the sub-commands each package owns.

Top of the dependency order: ``cli`` → ``operator``, ``bentos`` → ``registry``.  Nothing of the product
imports this package.  It holds the assembly (``main.py``) and one command that uses all the others:
``local_cluster`` (a checkout to a served model on a local cluster; the tests reuse its chart values).
"""
