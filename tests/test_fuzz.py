"""Fuzz the registry from its own OpenAPI document: no input may cause a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from modelyard.registry.settings import RegistrySettings
from tests.helpers import content_digest
from tests.support.artifacts import program_bytes
from tests.support.servers import ThreadedRegistry

pytestmark = pytest.mark.slow


WEIGHTS = program_bytes(b"weights")


@pytest.fixture(scope="module")
def fuzzed_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedRegistry]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = RegistrySettings(db_url=f"sqlite:///{root / 'r.db'}", artifacts_url=str(root / "a"),
                                 migrate_on_start=True)
    with ThreadedRegistry(settings_) as server:
        api = server.url + "/api/v1"
        # Some real data, so generated requests also reach existing models and versions.
        for name in ("a", "m", "digits"):
            httpx.post(f"{api}/models", json={"name": name}).raise_for_status()
            httpx.post(f"{api}/models/{name}/versions").raise_for_status()
            httpx.put(f"{api}/models/{name}/versions/1/artifact", content=WEIGHTS,
                      headers={"Content-Digest": content_digest(WEIGHTS)}).raise_for_status()
            httpx.put(f"{api}/models/{name}/aliases/production", json={"version": 1}).raise_for_status()
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzzed_registry: ThreadedRegistry):  # noqa: ANN201
    return schemathesis.openapi.from_url(f"{fuzzed_registry.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, fuzzed_registry: ThreadedRegistry) -> None:  # noqa: ANN001
    if case.path.endswith("/events") and isinstance(case.query, dict):
        try:  # keep long-polls short; invalid values still go through as generated
            if float(case.query.get("timeout", 0)) > 0.1:
                case.query["timeout"] = 0.1
        except (TypeError, ValueError):
            pass
    response = case.call(base_url=fuzzed_registry.url, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} → {response.status_code}: {response.text}"
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        content_type = response.headers.get("content-type") or response.headers.get("Content-Type")
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/problem+json"), response.text
