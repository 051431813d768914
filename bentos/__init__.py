"""Three servers and one runtime.

- ``pod/``: the pod's file contract every server shares: the model record (``spec``), the file
  manifest, typed serving settings per engine, failure reporting, request limits, the micro-batcher.
- ``tensor/``: the tensor server (BentoML service) for torch.export and TorchScript programs.
- ``llm/``: the language-model server, OpenAI's API over a continuous-batching engine.
- above them: ``provenance`` (the pod's own check of a version's signature), ``runtime`` (fetch by
  digest, verify, start the engine's server), ``packager``
  (Bentos), the commands ``package``, ``pull``, ``serve`` (``cli``) and ``quickstart``.

The servers never import the runtime, the packager or each other, and load only the registry's
``kernel`` and ``model`` rooms (``tests/test_dependencies.py``).
"""
