"""kopf handlers: thin, one line into the reconciler each.

Built on a registry of their own (not kopf's global one), so importing this module has
no side effects and tests can run two operators' registries side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from modelyard.operator.kube import GROUP, PLURAL, VERSION
from modelyard.operator.reconciler import Reconciler

FINALIZER = "modelyard.io/release"
MODEL_SERVER_LABELS = {"app.kubernetes.io/part-of": "modelyard", "app.kubernetes.io/component": "model-server"}


def build_registry(reconciler: Reconciler, kubeconfig: str | None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        # Progress and the last handled spec live in annotations: the status schema is ours.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.modelyard.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kopf.modelyard.io", key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # our own Events tell the story; kopf adds warnings only
        settings.batching.idle_timeout = 30.0
        settings.watching.server_timeout = 300

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        await reconciler.stop()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def reconcile(namespace: str | None, name: str, retry: int, **_: Any) -> None:
        """Resolve the model, plan the values, upgrade the release when they changed."""
        assert namespace is not None  # ModelDeployments are namespaced
        await reconciler.reconcile(namespace, name, retry)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def delete(namespace: str | None, name: str, **_: Any) -> None:
        assert namespace is not None
        await reconciler.delete(namespace, name)

    @kopf.on.event("apps", "v1", "deployments", labels=MODEL_SERVER_LABELS, registry=registry)
    async def deployment_changed(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        """A model server's Deployment reported: re-judge its ModelDeployment's rollout."""
        release = labels.get("app.kubernetes.io/instance")
        if release and namespace:
            reconciler.request_check(namespace, release)

    return registry
