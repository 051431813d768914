"""How a server tells the runtime that its model cannot be served, and the runtime tells Kubernetes.

BentoML restarts a worker whose ``__init__`` raised, forever; a pod must instead stop and say
why.  The runtime's supervisor names a file in ``MODELYARD_FAILURE_FILE``; a server writes the
reason there and the supervisor stops it with exit status 1 (``runtime.supervise``).  The
supervisor then writes the reason as the container's termination message, which the operator
reads from the pod's status (``defaults.SERVER_FAILURE_PREFIX``) to fail the rollout at once,
with the reason, instead of waiting for its progress deadline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from modelyard.registry.kernel.defaults import SERVER_FAILURE_PREFIX, Env

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


TERMINATION_LOG = Path("/dev/termination-log")
"""Kubernetes' default ``terminationMessagePath``: what a container writes here is its termination message."""
TERMINATION_LIMIT = 4096
"""Kubernetes keeps at most this many bytes of it."""


def tell_kubernetes(label: str, reason: str, path: Path = TERMINATION_LOG) -> str:
    """Write why ``label`` cannot be served as this container's termination message (where there is one:
    not outside a pod); returns the message."""
    message = f"{SERVER_FAILURE_PREFIX}{label}: {' '.join(reason.split())}"
    message = message.encode()[:TERMINATION_LIMIT].decode(errors="ignore")
    if path.exists():
        try:
            path.write_text(message)
        except OSError as exc:
            log.warning("cannot write the termination message to %s: %s", path, exc)
    return message
