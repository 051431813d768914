"""The registry's operations as one contract, satisfied by the SQL store and by the HTTP client.

As in MLflow's model registry (one abstract store, implemented by its SQL store and its REST
store), code written against ``RegistryOperations`` runs in the server's process on the database,
or anywhere over HTTP, unchanged; tests and tools pick whichever is at hand.  Both raise the same
typed errors (``registry.errors``): the client rebuilds them from the server's problem+json.

``tests/test_contract.py`` runs mypy over the assignments at the bottom of this file, so a
signature that drifts in either implementation fails the suite.

What the contract leaves out is transport-specific: bytes (the client streams files; the store
records digests of blobs the server wrote), the event feed (the client long-polls), and tokens
(administered on the store only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.registry.kernel import schemas


class RegistryOperations(Protocol):
    # -- models -------------------------------------------------------------------------

    def create_model(self, name: str, description: str = "", tags: Mapping[str, str] | None = None) -> schemas.Model:
        """Register a model.  Raises ``Invalid`` (a bad name, description or tags) or ``Conflict``
        (the name is taken)."""
        ...

    def get_model(self, name: str) -> schemas.Model:
        """The model with its aliases.  Raises ``NotFound``."""
        ...

    def list_models(self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None,
                    alias: str | None = None, limit: int = 100,
                    cursor: str | None = None) -> schemas.Page[schemas.Model]:
        """One page of models in name order: those whose name starts with ``prefix``, carrying every
        tag in ``tags``, having ``alias``.  Pass the page's ``next_cursor`` back for the next one.
        Raises ``BadRequest`` (a cursor this registry did not hand out)."""
        ...

    def update_model(self, name: str, *, description: str | None = None,
                     tags: Mapping[str, str] | None = None) -> schemas.Model:
        """Replace what is given (tags as a whole).  Raises ``NotFound`` or ``Invalid``."""
        ...

    def delete_model(self, name: str, *, force: bool = False) -> None:
        """Delete the model and its versions.  Raises ``NotFound``, or ``Conflict`` while any alias
        exists (delete or move aliases first) or a live deployment serves one of its versions
        (``force`` overrides the latter)."""
        ...

    # -- versions -----------------------------------------------------------------------

    def create_version(self, name: str, *, format: str | None = None, description: str = "",
                       metadata: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
                       tags: Mapping[str, str] | None = None, source: str | None = None) -> schemas.Version:
        """A new ``pending`` version with the next number (its artifact is uploaded next).  Raises
        ``NotFound`` (no such model) or ``Invalid`` (an unknown format, limits exceeded)."""
        ...

    def get_version(self, name: str, version: int) -> schemas.Version:
        """Raises ``NotFound`` (the model or the version)."""
        ...

    def list_versions(self, name: str, *, order: str = "asc", status: str | None = None,
                      tags: Mapping[str, str] | None = None, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.Version]:
        """One page of the model's versions by number (``order`` asc or desc), optionally only those
        in ``status`` carrying every tag in ``tags``.  Raises ``NotFound`` or ``BadRequest``."""
        ...

    def update_version(self, name: str, version: int, *, description: str | None = None,
                       metrics: Mapping[str, float] | None = None,
                       tags: Mapping[str, str] | None = None) -> schemas.Version:
        """Replace what is given (metrics and tags as a whole).  Raises ``NotFound`` or ``Invalid``."""
        ...

    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """Raises ``NotFound``, or ``Conflict`` while an alias points at the version or a live deployment
        serves it (naming the deployment; ``force``, an admin's, overrides the latter)."""
        ...

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> schemas.Alias:
        """Point ``alias`` at a ready version (a no-op when it already does).  Raises ``NotFound`` or
        ``Conflict`` (the version's artifact is not uploaded and verified)."""
        ...

    def get_alias(self, name: str, alias: str) -> schemas.Alias:
        """The version ``alias`` points at, with its digest.  Raises ``NotFound``."""
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Raises ``NotFound``."""
        ...


    # -- deployments (reported by operators) ---------------------------------------------------

    def report_deployment(self, cluster: str, namespace: str, name: str,
                          report: schemas.DeploymentReport) -> schemas.Deployment:
        """Record what ``cluster/namespace/name`` serves now (an upsert; ``deployment.updated`` when more
        than the heartbeat changed).  Raises ``Invalid`` (names, limits)."""
        ...

    def remove_deployment(self, cluster: str, namespace: str, name: str) -> None:
        """Its ModelDeployment was deleted (``deployment.removed``).  Raises ``NotFound``."""
        ...

    def list_deployments(self, *, model: str | None = None, version: int | None = None, cluster: str | None = None,
                         namespace: str | None = None, phase: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> schemas.Page[schemas.Deployment]:
        """One page by cluster, namespace and name; ``phase="Stale"`` lists those whose operator stopped
        reporting.  Raises ``BadRequest`` (a cursor not handed out)."""
        ...


if TYPE_CHECKING:  # checked by mypy (tests/test_contract.py); never run
    from modelyard.registry.client import RegistryClient
    from modelyard.registry.store import RegistryStore

    def _the_store_satisfies_the_contract(store: RegistryStore) -> RegistryOperations:
        return store

    def _the_client_satisfies_the_contract(client: RegistryClient) -> RegistryOperations:
        return client
