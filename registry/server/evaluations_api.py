"""``/models/{m}/versions/{v}/evaluations``: evidence measured on a version (``store.evaluations``).

Evidence is recorded only by those who measure it: a ``canary`` by the report token of the cluster
whose operator ran it (its source names that cluster), an ``offline`` evaluation by an ``evaluate``
token.  A write or admin token cannot record either: a claim typed by a writer is what evidence
exists to replace.  On an open registry (no token exists) anyone may, as with everything else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import Forbidden
from modelyard.registry.server.auth import Caller
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.deps import (
    Cursor, Evaluator, Limit, ModelPath, Reader, Store, VersionPath, created, run_read,
)

router = APIRouter(prefix="/models/{name}/versions/{version}/evaluations", tags=["evaluations"])


def refuse_unless_measurer(who: Caller, evaluation: schemas.EvaluationCreate) -> None:
    """403 unless ``who`` may record this kind of evidence (see the module's docstring)."""
    if who.identity == "anonymous":  # an open registry
        return
    if evaluation.kind == "canary":
        if who.scope != "report":
            raise Forbidden(f"canary evidence is recorded by the measuring cluster's operator (a report token), "
                            f"not by a {who.scope} token")
        if who.reporting_cluster() != evaluation.cluster:
            raise Forbidden(f"this report token is bound to cluster {who.cluster!r}; it cannot record a canary "
                            f"measured in {evaluation.cluster!r}")
    elif who.scope != "evaluate":
        raise Forbidden(f"offline evidence is recorded by an evaluator (an evaluate token: `modelyard registry token "
                        f"create --scope evaluate --name NAME`), not by a {who.scope} token")


@router.post("", status_code=201, response_model=schemas.Evaluation)
async def record_evaluation(name: ModelPath, version: VersionPath, body: schemas.EvaluationCreate, store: Store,
                            who: Evaluator, request: Request) -> Response:
    """Record evidence measured on the version (immutable; event ``version.evaluated``)."""
    refuse_unless_measurer(who, body)
    recorded = await run_write(store, lambda: store.record_evaluation(name, version, body, recorded_by=who.identity))
    return created(recorded, f"{request.url.path}?kind={recorded.kind}")


@router.get("", response_model=schemas.Page[schemas.Evaluation])
async def list_evaluations(
    name: ModelPath, version: VersionPath, store: Store, _: Reader, limit: Limit = 100, cursor: Cursor = None,
    kind: Annotated[str | None, Query(pattern=r"^(canary|offline)$")] = None,
    source: Annotated[str | None, Query(max_length=381)] = None,
    verdict: Annotated[str | None, Query(pattern=r"^(pass|fail)$")] = None,
) -> schemas.Page[schemas.Evaluation]:
    """The version's evaluations, newest first (cursor pages; filter by kind, source, verdict)."""
    return await run_read(store, lambda: store.list_evaluations(name, version, kind=kind, source=source,
                                                                verdict=verdict, limit=limit, cursor=cursor))
