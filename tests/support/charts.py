"""Rendering the charts with real Helm (the Helm SDK, in process) and checking the output offline."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHARTS = Path(__file__).resolve().parents[2] / "charts"
MODEL_SERVER = CHARTS / "model-server"
MODELYARD = CHARTS / "modelyard"
KUBERNETES_VERSION = "1.37"  # the newest schemas kubernetes-validate ships
NOT_IN_KUBERNETES = {"monitoring.coreos.com/v1", "kopf.dev/v1"}  # CRD kinds: checked by hand


TEST_IMAGES = (("localhost/modelyard", "test"), ("localhost/modelyard-runtime", "test"))
"""What charts/modelyard is given where no pod runs (it has no default image: none is published)."""


def with_images(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """charts/modelyard's ``values`` with the test images (``local_cluster.chart_values``, as users get them)."""
    from modelyard.cli.local_cluster import chart_values

    return chart_values(*TEST_IMAGES, **(values or {}))


@cache
def load(chart: Path) -> helm.Chart:
    return helm.Chart.load(chart)


@cache
def values_schema(chart: Path) -> dict[str, Any]:
    return json.loads((chart / "values.schema.json").read_text())


def render(chart: Path, values: dict[str, Any] | None = None, *, name: str = "digits",
           namespace: str = "ml") -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out), in template order."""
    manifests = load(chart).render(values or {}, name=name, namespace=namespace, is_install=True)
    objects = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(chart: Path, values: dict[str, Any] | None = None, *, name: str = "digits", namespace: str = "ml") -> str:
    manifests = load(chart).render(values or {}, name=name, namespace=namespace, is_install=True)
    return next(text for template, text in manifests.items() if template.endswith("NOTES.txt"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def validate_kubernetes(objects: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> int:
    """Validate each object against the Kubernetes OpenAPI schemas (strict: unknown fields fail)."""
    checked = 0
    for obj in objects:
        if obj["apiVersion"] in NOT_IN_KUBERNETES:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata'].get('name')}: {exc.message} "
                                 f"at {list(exc.path)}") from None
        checked += 1
    return checked
