"""Modelyard's model registry, and the base every other package builds on.

It imports nothing of ours, and everything else may import it (``tests/test_dependencies.py``).
Three things, in rooms:

- ``kernel/``: what every package shares: every default and ``MODELYARD_*`` name (``defaults``),
  names, typed errors, the API's schemas, cursors, digests, child processes.
- ``model/``: what a model file is and whether it is safe to serve: formats, model directories
  (``hf``) and their archives, pickle and torch.export checks, chat templates, Bento sources and
  input signatures.  Read by the registry on upload and by the pod's servers before loading.
- ``signing/``: OpenSSF model signatures: what a push signs, what a trust root holds, and the check
  of a bundle against trust roots and against the bytes (the registry's on upload, the pod's runtime
  before it serves).
- the registry service: ``operations`` is the contract both ``store`` (over ``db``, one module per
  concern, each under a contract in ``store.contracts``) and ``client`` (over HTTP) satisfy, as in
  MLflow's registry; ``artifacts`` hold the bytes; ``server`` speaks HTTP over the store; ``ui`` is
  the web UI built on the server's pieces; ``app`` assembles the two; ``cli`` holds the registry's
  commands and the helpers every package's commands share.

The layers between these rooms are in README.md's layout section and checked by the test above.
"""
