"""The registry's REST API as one FastAPI application: store, artifacts, auth, routes, metrics.

It knows nothing of the web UI: ``registry.app`` adds the UI on top of it, so the UI builds on
the server's pieces and the arrow never runs back."""

from __future__ import annotations

import asyncio
from datetime import timedelta
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread

from fastapi import FastAPI

from modelyard.registry import garbage
from modelyard.registry.artifacts import ArtifactStore, open_artifact_store
from modelyard.registry.server import (aliases_api, artifacts_api, deployments_api, evaluations_api, events_api,
                                       health_api, models_api, signatures_api, versions_api)
from modelyard.registry.server.auth import Authenticator
from modelyard.registry.server.metrics import MetricsMiddleware, RegistryMetrics
from modelyard.registry.server.notify import EventNotifier
from modelyard.registry.server.problems import install_problem_handlers
from modelyard.registry.settings import RegistrySettings
from modelyard.registry.store import RegistryStore
from modelyard.registry.kernel.processes.tuning import tune_for_serving

log = logging.getLogger("modelyard.registry")
API_PREFIX = "/api/v1"


async def sweep_periodically(store: RegistryStore, artifacts: ArtifactStore, settings: RegistrySettings) -> None:
    """Collect blobs that crashes left behind and apply the event feed's retention, every
    ``gc_interval_seconds`` (first after one interval)."""
    while True:
        await asyncio.sleep(settings.gc_interval_seconds)
        try:
            pruned = await anyio.to_thread.run_sync(lambda: store.prune_events(
                older_than=timedelta(days=settings.event_retention_days), keep=settings.event_retention_count))
            if pruned:
                log.info("event retention: removed %d event(s)", pruned)
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            log.exception("event retention failed")
        try:
            result = await anyio.to_thread.run_sync(garbage.sweep, store, artifacts)
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            log.exception("artifact garbage sweep failed")
            continue
        if result.deleted:
            log.info("artifact sweep: removed %d unreferenced blob(s) of %d examined", len(result.deleted),
                     result.examined)


def build_api(settings: RegistrySettings) -> FastAPI:
    """The API with its state (``app.state``: settings, store, artifacts, notifier, metrics, auth)."""
    store = RegistryStore.open(settings.db_url, settings.migrate_on_start,
                               deployment_stale_seconds=settings.deployment_stale_seconds)
    store.inline_writes = store.inline_reads and settings.workers == 1
    for name, (scope, token) in settings.seed_tokens.items():
        cluster = settings.seed_cluster if scope == "report" else None
        if store.ensure_token(name, scope, token, cluster=cluster):
            log.info("registered the %s token from the environment (scope %s)", name, scope)
    artifacts = open_artifact_store(settings.artifacts_url)
    notifier = EventNotifier()
    metrics = RegistryMetrics()
    store.event_listeners.append(notifier.notify)
    store.change_listeners.append(notifier.notify)  # other replicas' events wake long-polls too
    store.event_listeners.append(metrics.events.inc)
    metrics.watch_read_cache(store.cache)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        notifier.bind(asyncio.get_running_loop())
        tune_for_serving()
        log.info("registry ready: database %s, artifacts %s", store.engine.url.render_as_string(hide_password=True),
                 artifacts.describe())
        sweeper = (asyncio.get_running_loop().create_task(sweep_periodically(store, artifacts, settings))
                   if settings.gc_interval_seconds > 0 else None)
        store.listen_for_changes()  # PostgreSQL: the hot reads' cache, coherent across replicas
        yield
        await anyio.to_thread.run_sync(store.stop_listening)
        if sweeper is not None:
            sweeper.cancel()
        store.engine.dispose()

    app = FastAPI(
        title="Modelyard registry",
        version="1",
        description="Models, versions, artifacts and aliases for Modelyard deployments.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.artifacts = artifacts
    app.state.notifier = notifier
    app.state.metrics = metrics
    app.state.auth = Authenticator(store, settings.anonymous_read)
    install_problem_handlers(app)
    # The operator's hot path (alias lookups) first: routes are matched in order.
    for module in (aliases_api, versions_api, events_api, models_api, artifacts_api, deployments_api,
                   evaluations_api, signatures_api):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health_api.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
