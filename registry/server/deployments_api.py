"""``/deployments``: what serves where, as operators report it (``store.deployments``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import Forbidden
from modelyard.registry.kernel.names import NAME_PATTERN, RESOURCE_NAME_PATTERN
from modelyard.registry.server.calls import run_write
from modelyard.registry.server.auth import Caller
from modelyard.registry.server.deps import Cursor, Limit, Reader, Reporter, Store, run_read

router = APIRouter(prefix="/deployments", tags=["deployments"])

ClusterPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="the operator's cluster name")]
NamespacePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)]
NamePath = Annotated[str, Path(pattern=RESOURCE_NAME_PATTERN, max_length=253)]


@router.get("", response_model=schemas.DeploymentPage)
async def list_deployments(
    store: Store, _: Reader, limit: Limit = 100, cursor: Cursor = None,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63)] = None,
    version: Annotated[int | None, Query(ge=1, le=schemas.MAX_VERSION)] = None,
    cluster: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63)] = None,
    namespace: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63)] = None,
    phase: Annotated[str | None, Query(pattern=schemas.PHASE_PATTERN,
                                       description="a phase, or Stale for those no longer reported")] = None,
) -> schemas.Page[schemas.Deployment]:
    return await run_read(store, lambda: store.list_deployments(
        model=model, version=version, cluster=cluster, namespace=namespace, phase=phase, limit=limit, cursor=cursor))


@router.put("/{cluster}/{namespace}/{name}", response_model=schemas.Deployment)
async def report_deployment(cluster: ClusterPath, namespace: NamespacePath, name: NamePath,
                            body: schemas.DeploymentReport, store: Store, who: Reporter) -> schemas.Deployment:
    """An operator reports a ModelDeployment (on each status change, and as a heartbeat)."""
    refuse_other_cluster(who, cluster)
    return await run_write(store, lambda: store.report_deployment(cluster, namespace, name, body,
                                                                  reporter=who.identity))


@router.delete("/{cluster}/{namespace}/{name}", status_code=204, response_class=Response)
async def remove_deployment(cluster: ClusterPath, namespace: NamespacePath, name: NamePath, store: Store,
                            who: Reporter) -> Response:
    """The ModelDeployment was deleted."""
    refuse_other_cluster(who, cluster)
    await run_write(store, store.remove_deployment, cluster, namespace, name)
    return Response(status_code=204)


def refuse_other_cluster(who: Caller, cluster: str) -> None:
    """A report token speaks for its own cluster only: it must not overwrite or delete what another
    cluster's operator reported.  Write and admin tokens may (an administrator cleaning up)."""
    if who.scope == "report" and who.reporting_cluster() != cluster:
        raise Forbidden(f"this report token is bound to cluster {who.cluster!r}; it cannot report for {cluster!r}")
