"""How a server tells the runtime that its model cannot be served.

BentoML restarts a worker whose ``__init__`` raised, forever; a pod must instead stop and say
why.  The runtime's supervisor names a file in ``MODELYARD_FAILURE_FILE``; a server writes the
reason there and the supervisor stops it with exit status 1 (``runtime.supervise``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from modelyard.registry.kernel.defaults import Env

log = logging.getLogger("bentoml.modelyard")  # under "bentoml" so the server's log config shows it


class ModelLoadError(RuntimeError):
    """The model cannot be served; the message says why."""


FAILURE_FILE_ENV = Env.FAILURE_FILE


def report_failure(exc: BaseException) -> None:
    """Tell the supervising runtime why the model cannot be served (see ``runtime.supervise``)."""
    log.error("cannot serve the model: %s", exc)
    path = os.environ.get(FAILURE_FILE_ENV)
    if path:
        Path(path).write_text(str(exc))
