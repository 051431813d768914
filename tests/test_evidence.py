"""Evidence on versions: evaluations recorded only by those who measure them, read by protected
aliases' rules, against a real registry server over HTTP with real tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.registry.alias_rules import Rule, evidence_read_by, failures
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.errors import Forbidden
from modelyard.registry.settings import RegistrySettings
from tests.support.servers import ThreadedRegistry
from tests.test_deployments_and_aliases import Registry


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> Iterator[Registry]:
    """On each database backend: the evidence queries (newest per source, prefix matches) run on both."""
    settings = RegistrySettings(db_url=db_url, artifacts_url=str(tmp_path / "a"), migrate_on_start=True,
                                )
    with ThreadedRegistry(settings) as server:
        found = Registry(server)
        found.tokens["evaluate"] = server.store.create_token("nightly-eval", "evaluate")[0]
        yield found


def canary(cluster: str = "staging", verdict: str = "pass", **fields: Any) -> dict[str, Any]:
    return {"kind": "canary", "source": f"{cluster}/ml/digits", "verdict": verdict,
            "metrics": {"error_rate": 0.0, "p99_ms": 80.0}, "requests": 600,
            "window": {"start": "2026-12-07T10:00:00Z", "end": "2026-12-07T10:05:00Z"}, **fields}


def offline(verdict: str = "pass", **fields: Any) -> dict[str, Any]:
    return {"kind": "offline", "source": "nightly-eval", "verdict": verdict, "metrics": {"accuracy": 0.97},
            "requests": 1797, **fields}


@pytest.mark.parametrize("scope, body, status", [
    ("evaluate", offline(), 201),
    ("report:staging", canary("staging"), 201),
    ("write", offline(), 403),  # a writer types claims; evidence is what replaces them
    ("write", canary("staging"), 403),
    ("admin", offline(), 403),
    ("admin", canary("staging"), 403),
    ("read", offline(), 403),
    ("evaluate", canary("staging"), 403),  # canaries are measured by a cluster's operator
    ("report:staging", offline(), 403),
    ("report:prod", canary("staging"), 403),  # another cluster's operator
])
def test_only_the_measurer_records_evidence(registry: Registry, scope: str, body: dict[str, Any],
                                            status: int) -> None:
    version = registry.ready_version("digits")
    answer = registry.call("POST", f"/models/digits/versions/{version}/evaluations", scope, json=body)
    assert answer.status_code == status, answer.text
    listed = registry.call("GET", f"/models/digits/versions/{version}/evaluations", "read").json()["items"]
    assert len(listed) == (1 if status == 201 else 0)
    if status == 201:
        assert listed[0]["recorded_by"] == ("token:nightly-eval" if scope == "evaluate" else "token:report-staging")
    else:
        assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("body, where", [
    (canary(source="staging"), "CLUSTER/NAMESPACE/NAME"),
    (offline(source="two words"), "evaluator's name"),
    ('{"kind": "offline", "source": "e", "verdict": "pass", "metrics": {"accuracy": Infinity}}', "finite"),
    ('{"kind": "offline", "source": "e", "verdict": "pass", "metrics": {"accuracy": 1e400}}', "finite"),
    ('{"kind": "offline", "source": "e", "verdict": "pass", "details": {"note": "a\\u0000b"}}', "NUL"),
    (offline(requests=2**60), "requests"),
    (offline(verdict="maybe"), "verdict"),
    (offline(kind="online"), "kind"),
    (offline(window={"start": "2026-12-07T10:05:00Z", "end": "2026-12-07T10:00:00Z"}), "before"),
    (offline(details={"blob": "x" * (70 * 1024)}), "64 KiB"),
    (offline(metrics={f"m{i}": 1.0 for i in range(300)}), "at most 256 metrics"),
    (offline(requests=-1), "requests"),
])
def test_bad_evidence_is_a_422_and_nothing_is_recorded(registry: Registry, body: dict[str, Any] | str,
                                                       where: str) -> None:
    version = registry.ready_version("digits")
    sent: dict[str, Any] = ({"content": body, "headers": {**registry.as_("evaluate"), "Content-Type": "application/json"}}
                            if isinstance(body, str) else {"json": body})
    answer = (registry.call("POST", f"/models/digits/versions/{version}/evaluations", "evaluate", **sent)
              if "json" in sent else httpx.post(f"{registry.api}/models/digits/versions/{version}/evaluations",
                                                timeout=10, **sent))
    assert answer.status_code == 422 and where in answer.text, answer.text
    assert registry.call("GET", f"/models/digits/versions/{version}/evaluations", "read").json()["items"] == []


def test_evidence_is_listed_filtered_paged_shown_on_the_version_and_announced(registry: Registry) -> None:
    version = registry.ready_version("digits")
    path = f"/models/digits/versions/{version}/evaluations"
    for body, scope in ((offline("fail", metrics={"accuracy": 0.5}), "evaluate"), (offline(), "evaluate"),
                        (canary("staging"), "report:staging"), (canary("prod", "fail"), "report:prod")):
        assert registry.call("POST", path, scope, json=body).status_code == 201
    first = registry.call("GET", path + "?limit=3", "read").json()
    assert [(e["kind"], e["verdict"]) for e in first["items"]] == [("canary", "fail"), ("canary", "pass"),
                                                                    ("offline", "pass")]
    rest = registry.call("GET", f"{path}?limit=3&cursor={first['next_cursor']}", "read").json()
    assert [(e["kind"], e["verdict"]) for e in rest["items"]] == [("offline", "fail")] and rest["next_cursor"] is None
    assert len(registry.call("GET", path + "?kind=canary&verdict=pass", "read").json()["items"]) == 1
    assert registry.call("GET", path + "?source=prod/ml/digits", "read").json()["items"][0]["verdict"] == "fail"
    assert registry.call("GET", path + "?cursor=bm90LWEtY3Vyc29y", "read").status_code == 400
    shown = registry.call("GET", f"/models/digits/versions/{version}", "read").json()["evaluations"]
    assert [(e["kind"], e["source"], e["verdict"]) for e in shown] == [  # the newest of each source
        ("canary", "prod/ml/digits", "fail"), ("canary", "staging/ml/digits", "pass"),
        ("offline", "nightly-eval", "pass")]
    listed = registry.call("GET", "/models/digits/versions", "read").json()["items"]
    assert listed[0]["evaluations"] == shown
    events = registry.call("GET", "/events?after=0", "read").json()["events"]
    assert [e["type"] for e in events].count("version.evaluated") == 4
    assert registry.call("DELETE", f"{path}", "admin").status_code == 405  # immutable: no way to change one
    assert registry.call("POST", "/models/digits/versions/99/evaluations", "evaluate", json=offline()).status_code \
        == 404


def test_each_source_keeps_its_newest_evaluations(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "EVALUATIONS_PER_SOURCE", 3)
    version = registry.ready_version("digits")
    store = registry.server.store
    for index in range(5):
        store.record_evaluation("digits", version, schemas.EvaluationCreate.model_validate(
            offline(metrics={"run": float(index)})), recorded_by="token:nightly-eval")
    store.record_evaluation("digits", version, schemas.EvaluationCreate.model_validate(canary()),
                            recorded_by="token:report-staging")
    kept = store.list_evaluations("digits", version).items
    assert [e.metrics.get("run") for e in kept if e.kind == "offline"] == [4.0, 3.0, 2.0]
    assert [e.kind for e in kept].count("canary") == 1  # another source keeps its own


def test_protected_rules_read_evidence_and_name_what_is_missing(registry: Registry) -> None:
    v1, v2 = registry.ready_version("digits"), registry.ready_version("digits", {"accuracy": 0.99})
    rules = ["canary@staging.error_rate<=0.01", "canary@staging.requests>=500", "offline.accuracy>=0.95"]
    assert registry.call("PUT", "/models/digits/aliases/production/protection", "admin",
                         json={"require": rules}).status_code == 200
    refused = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v2})
    assert refused.status_code == 403
    assert "no passing canary evaluation from cluster staging of this version" in refused.text
    assert "no passing offline evaluation of this version" in refused.text
    path = f"/models/digits/versions/{v2}/evaluations"
    # Evidence of the wrong cluster, a failing canary, or too few requests does not count.
    registry.call("POST", path, "report:prod", json=canary("prod"))
    registry.call("POST", path, "report:staging", json=canary("staging", "fail"))
    registry.call("POST", path, "evaluate", json=offline())
    refused = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v2})
    assert refused.status_code == 403 and "from cluster staging" in refused.text
    registry.call("POST", path, "report:staging", json=canary("staging", requests=120))
    refused = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v2})
    assert refused.status_code == 403 and "canary@staging.requests >= 500 (requests is 120)" in refused.text
    good = registry.call("POST", path, "report:staging", json=canary("staging")).json()
    moved = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v2})
    assert moved.status_code == 200, moved.text
    (move,) = registry.call("GET", "/models/digits/aliases/production/history", "read").json()["items"]
    assert move["judged"]["evidence"]["canary@staging"]["id"] == good["id"]
    assert move["judged"]["evidence"]["canary@staging"]["metrics"]["requests"] == 600
    assert registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v1}).status_code == 403


@pytest.mark.parametrize("rule", ["foo.accuracy>=0.9", "canary@Bad_Cluster.p99_ms<=1", "offline@x.accuracy>=1"])
def test_a_rule_naming_an_unknown_source_is_refused_when_set(registry: Registry, rule: str) -> None:
    registry.ready_version("digits")
    answer = registry.call("PUT", "/models/digits/aliases/production/protection", "admin", json={"require": [rule]})
    assert answer.status_code == 422, answer.text
    assert registry.call("GET", "/models/digits/aliases/production/protection", "read").status_code == 404


def test_the_client_records_and_lists_evidence(registry: Registry) -> None:
    version = registry.ready_version("digits")
    with RegistryClient(registry.server.url, registry.tokens["evaluate"]) as client:
        recorded = client.record_evaluation("digits", version, schemas.EvaluationCreate.model_validate(offline()))
        assert client.list_evaluations("digits", version).items == [recorded]
    with RegistryClient(registry.server.url, registry.tokens["write"]) as client, pytest.raises(Forbidden):
        client.record_evaluation("digits", version, schemas.EvaluationCreate.model_validate(offline()))


def test_rules_parse_their_source() -> None:
    assert Rule.parse("accuracy>=0.95") == Rule("accuracy", ">=", 0.95)
    assert Rule.parse("metrics.eval.top1>=0.9") == Rule("eval.top1", ">=", 0.9)  # a dotted name of its own
    assert Rule.parse("offline.accuracy>=0.95") == Rule("accuracy", ">=", 0.95, "offline")
    assert Rule.parse("canary.requests>=500") == Rule("requests", ">=", 500, "canary")
    assert Rule.parse(" canary@staging.p99_ms <= 120 ") == Rule("p99_ms", "<=", 120, "canary", "staging")
    assert str(Rule.parse("canary@staging.p99_ms<=120")) == "canary@staging.p99_ms <= 120"
    for bad in ("eval.top1>=0.9", "canary@.x<1", "canary@a.b@c<1", "accuracy=>1"):
        with pytest.raises(ValueError):
            Rule.parse(bad)
    rules = ["accuracy>=0.9", "canary.error_rate<=0.01", "canary@eu.p99_ms<=100"]
    assert evidence_read_by(rules) == {("canary", None), ("canary", "eu")}
    evidence = {"canary": {"id": 7, "metrics": {"error_rate": 0.02}}, "canary@eu": None}
    assert failures(rules, {"accuracy": 0.95}, evidence) == [
        "canary.error_rate <= 0.01 (error_rate is 0.02)",
        "canary@eu.p99_ms <= 100 (no passing canary evaluation from cluster eu of this version)"]


def test_the_cli_records_and_shows_evidence(registry: Registry) -> None:
    import json
    import os
    import subprocess
    import sys

    version = registry.ready_version("digits")

    def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelyard.cli", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "MODELYARD_REGISTRY_URL": registry.server.url,
                                                "MODELYARD_TOKEN": registry.tokens[token], "COLUMNS": "200"})

    recorded = cli("evaluate", "versions", "evaluate", f"digits:{version}", "--metric", "accuracy=0.97",
                   "--metric", "f1=0.9", "--verdict", "pass", "--source", "nightly-eval", "--requests", "1797")
    assert recorded.returncode == 0, recorded.stderr
    assert f"on digits:{version} (pass)" in recorded.stdout
    bad = cli("evaluate", "versions", "evaluate", f"digits:{version}", "--metric", "accuracy", "--verdict", "pass",
              "--source", "nightly-eval")
    assert bad.returncode == 2 and "NAME=NUMBER" in bad.stdout + bad.stderr
    refused = cli("write", "versions", "evaluate", f"digits:{version}", "--metric", "accuracy=1", "--verdict", "pass",
                  "--source", "nightly-eval")
    assert refused.returncode != 0 and "evaluate token" in " ".join((refused.stdout + refused.stderr).split())
    shown = cli("read", "versions", "evaluations", f"digits:{version}", "--json")
    assert shown.returncode == 0, shown.stderr
    (only,) = json.loads(shown.stdout)
    assert (only["kind"], only["source"], only["metrics"], only["requests"]) == (
        "offline", "nightly-eval", {"accuracy": 0.97, "f1": 0.9}, 1797)
    table = cli("read", "versions", "evaluations", f"digits:{version}")
    assert "nightly-eval" in table.stdout and "accuracy=0.97" in table.stdout


def test_an_operator_moves_an_alias_on_its_clusters_evidence_only(registry: Registry) -> None:
    """Revert: back to the version the alias held before, once its cluster recorded a failing canary of
    the current one.  Promote: to a version meeting rules that read its cluster's canary evidence.
    Nothing else, and never for another cluster."""
    v1, v2, v3 = (registry.ready_version("digits") for _ in range(3))
    alias = "/models/digits/aliases/production"
    assert registry.call("PUT", alias, "write", json={"version": v1}).status_code == 200
    assert registry.call("PUT", alias, "write", json={"version": v2}).status_code == 200
    assert registry.call("PUT", alias, "report:prod", json={"version": v1}).status_code == 403  # no evidence yet
    registry.call("POST", f"/models/digits/versions/{v2}/evaluations", "report:staging",
                  json=canary("staging", "fail", metrics={"error_rate": 0.125}))
    refused = registry.call("PUT", alias, "report:prod", json={"version": v1})  # staging's failure is not prod's
    assert refused.status_code == 403 and "only to revert a canary that failed in its cluster" in refused.text
    failed = registry.call("POST", f"/models/digits/versions/{v2}/evaluations", "report:prod",
                           json=canary("prod", "fail", metrics={"error_rate": 0.125})).json()
    assert registry.call("PUT", alias, "report:prod", json={"version": v3}).status_code == 403  # not back: forward
    reverted = registry.call("PUT", alias, "report:prod", json={"version": v1})
    assert reverted.status_code == 200, reverted.text
    move = registry.call("GET", alias + "/history", "read").json()["items"][0]
    assert (move["actor"], move["from_version"], move["to_version"]) == ("token:report-prod", v2, v1)
    assert move["judged"]["revert"]["evidence"]["id"] == failed["id"]
    assert move["judged"]["revert"]["evidence"]["metrics"] == {"error_rate": 0.125}
    assert registry.call("PUT", alias, "report:prod", json={"version": v2}).status_code == 403  # no way forward

    # Promotion: production reads staging's canary evidence, so staging's operator may move it, on evidence.
    assert registry.call("PUT", alias + "/protection", "admin", json={"require": [
        "canary@staging.error_rate<=0.01", "canary@staging.requests>=500"]}).status_code == 200
    refused = registry.call("PUT", alias, "report:staging", json={"version": v3})
    assert refused.status_code == 403 and "no passing canary evaluation from cluster staging" in refused.text
    assert registry.call("PUT", alias, "write", json={"version": v3}).status_code == 403  # a writer: same rules
    passed = registry.call("POST", f"/models/digits/versions/{v3}/evaluations", "report:staging",
                           json=canary("staging")).json()
    assert registry.call("PUT", alias, "report:prod", json={"version": v3}).status_code == 403  # not prod's rules
    promoted = registry.call("PUT", alias, "report:staging", json={"version": v3})
    assert promoted.status_code == 200, promoted.text
    move = registry.call("GET", alias + "/history", "read").json()["items"][0]
    assert (move["actor"], move["to_version"], move["judged"]["promoted_by"]) == ("token:report-staging", v3,
                                                                                  "staging")
    assert move["judged"]["evidence"]["canary@staging"]["id"] == passed["id"]
    assert registry.call("DELETE", alias, "report:staging").status_code == 403  # deleting is a writer's


def test_the_ui_tells_why_an_alias_moved(registry: Registry) -> None:
    v1, v2 = registry.ready_version("digits"), registry.ready_version("digits")
    alias = "/models/digits/aliases/production"
    registry.call("PUT", alias, "write", json={"version": v1})
    registry.call("PUT", alias, "write", json={"version": v2})
    registry.call("POST", f"/models/digits/versions/{v2}/evaluations", "report:prod",
                  json=canary("prod", "fail", metrics={"error_rate": 0.125}))
    assert registry.call("PUT", alias, "report:prod", json={"version": v1}).status_code == 200
    page = httpx.get(f"{registry.server.url}/ui/models/digits/aliases/production",
                     cookies={"modelyard_token": registry.tokens["read"]}, timeout=10)
    assert page.status_code == 200, page.text
    assert f"reverted: version {v2}'s canary failed (evaluation" in page.text and "error_rate=0.125" in page.text
    model = httpx.get(f"{registry.server.url}/ui/models/digits", cookies={"modelyard_token": registry.tokens["read"]},
                      timeout=10)
    assert "canary prod/ml/digits: fail" in model.text


def test_evidence_raced_by_the_versions_deletion_is_recorded_or_refused_never_orphaned(registry: Registry) -> None:
    """Recording while the version is deleted: each request is a 201 (before the delete) or a 404 (after),
    never a 500, and the delete takes the version's evidence with it."""
    from concurrent.futures import ThreadPoolExecutor

    import sqlalchemy

    version = registry.ready_version("digits")
    path = f"/models/digits/versions/{version}/evaluations"

    def record(_: int) -> int:
        return registry.call("POST", path, "evaluate", json=offline()).status_code

    with ThreadPoolExecutor(8) as pool:
        recorded = [pool.submit(record, i) for i in range(40)]
        deleted = registry.call("DELETE", f"/models/digits/versions/{version}", "admin")
        statuses = {future.result() for future in recorded}
    assert deleted.status_code == 204, deleted.text
    assert statuses <= {201, 404}, statuses
    assert registry.call("POST", path, "evaluate", json=offline()).status_code == 404
    with registry.server.store.engine.connect() as connection:
        assert connection.scalar(sqlalchemy.text("SELECT count(*) FROM evaluations")) == 0
