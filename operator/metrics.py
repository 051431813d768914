"""The operator's Prometheus metrics (served by ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("modelyard_operator_reconciles_total", "Reconciles by result", ["result"])
RECONCILE_SECONDS = Histogram("modelyard_operator_reconcile_duration_seconds", "Reconcile duration",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ROLLOUTS = Counter("modelyard_operator_rollouts_total", "Rollouts by outcome", ["result"])
ROLLBACKS = Counter("modelyard_operator_rollbacks_total", "Automatic Helm rollbacks")
FAILURES = Counter("modelyard_operator_failures_total", "Failures by status reason", ["reason"])
REGISTRY_EVENTS = Counter("modelyard_operator_registry_events_total", "Registry events received", ["type"])
EVENT_TO_UPGRADE_SECONDS = Histogram(
    "modelyard_operator_event_to_upgrade_seconds", "Registry event → Helm upgrade started",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
FEED_UP = Gauge("modelyard_operator_registry_feed_up", "1 while the registry's event feed answers")
