"""What serves where (deployments reported by operators), protected aliases and the alias audit
trail, against a real registry server over HTTP with real tokens."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from modelyard.registry.kernel.errors import Conflict
from modelyard.registry.settings import RegistrySettings
from tests.support.servers import ThreadedRegistry

STALE_SECONDS = 1.5


class Registry:
    """A registry with authentication on and one token per scope (``as_(scope)`` → headers)."""

    def __init__(self, server: ThreadedRegistry) -> None:
        self.server = server
        self.api = server.url + "/api/v1"
        self.tokens = {scope: server.store.create_token(f"{scope}-bot", scope)[0]
                       for scope in ("read", "write", "admin")}

    def as_(self, scope: str) -> dict[str, str]:
        """``report:CLUSTER``: a report token bound to that cluster (made on first use)."""
        if scope not in self.tokens:
            kind, _, cluster = scope.partition(":")
            assert kind == "report" and cluster, scope
            self.tokens[scope] = self.server.store.create_token(f"report-{cluster}", "report", cluster=cluster)[0]
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    def call(self, method: str, path: str, scope: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.api + path, headers=self.as_(scope), timeout=10, **kwargs)

    def ready_version(self, model: str, metrics: dict[str, float] | None = None) -> int:
        if self.call("GET", f"/models/{model}", "read").status_code == 404:
            assert self.call("POST", "/models", "write", json={"name": model}).status_code == 201
        number = self.call("POST", f"/models/{model}/versions", "write", json={"metrics": metrics or {}}).json()
        number = number["version"]
        digest = "sha256:" + hashlib.sha256(f"{model}{number}{uuid.uuid4()}".encode()).hexdigest()  # own bytes
        self.server.store.mark_ready(model, number, digest, 1)
        return number

    def report(self, cluster: str, namespace: str, name: str, scope: str = "report", **fields: Any) -> httpx.Response:
        """As the operator of ``cluster`` (a report token bound to it), unless ``scope`` says otherwise."""
        body = {"model": "digits", "version": 1, "phase": "Ready", "ready_replicas": 2, "desired_replicas": 2,
                **fields}
        scope = f"report:{cluster}" if scope == "report" else scope
        return self.call("PUT", f"/deployments/{cluster}/{namespace}/{name}", scope, json=body)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    settings = RegistrySettings(db_url=f"sqlite:///{tmp_path / 'r.db'}", artifacts_url=str(tmp_path / "a"),
                                migrate_on_start=True, deployment_stale_seconds=STALE_SECONDS,
                                )
    with ThreadedRegistry(settings) as server:
        yield Registry(server)


def test_an_operator_reports_deployments_and_anyone_can_ask_what_serves_where(registry: Registry) -> None:
    v1 = registry.ready_version("digits")
    registry.call("POST", "/models", "write", json={"name": "other"})
    assert registry.report("prod-eu", "ml", "digits", version=v1, helm_revision=3, url="http://d.ml:3000",
                           rollout_result="Ready").status_code == 200
    assert registry.report("prod-us", "ml", "digits", version=v1, phase="RollingOut").status_code == 200
    assert registry.report("staging", "team-a", "other", model="other", version=None, phase="Failed",
                           ready_replicas=0).status_code == 200
    listed = registry.call("GET", "/deployments", "read").json()
    assert [(d["cluster"], d["name"]) for d in listed["items"]] == [
        ("prod-eu", "digits"), ("prod-us", "digits"), ("staging", "other")]
    first = listed["items"][0]
    assert (first["phase"], first["helm_revision"], first["reporter"], first["stale"]) == (
        "Ready", 3, "token:report-prod-eu", False)
    assert first["digest"] == registry.call("GET", f"/models/digits/versions/{v1}", "read").json()["digest"]
    assert [d["cluster"] for d in registry.call("GET", "/deployments", "read", params={
        "model": "digits", "phase": "RollingOut"}).json()["items"]] == ["prod-us"]
    page = registry.call("GET", "/deployments", "read", params={"limit": 2}).json()
    rest = registry.call("GET", "/deployments", "read", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [d["name"] for d in page["items"] + rest["items"]] == ["digits", "digits", "other"]
    assert rest["next_cursor"] is None
    version = registry.call("GET", f"/models/digits/versions/{v1}", "read").json()
    assert [(d["cluster"], d["phase"]) for d in version["deployments"]] == [("prod-eu", "Ready"),
                                                                          ("prod-us", "RollingOut")]
    listed_versions = registry.call("GET", "/models/digits/versions", "read").json()["items"]
    assert len(listed_versions[0]["deployments"]) == 2


def test_reports_need_the_report_scope_and_are_checked(registry: Registry) -> None:
    registry.ready_version("digits")
    assert registry.report("c", "ml", "x", scope="read").status_code == 403
    assert registry.report("c", "ml", "x", scope="write").status_code == 200  # scopes include the ones below
    for bad in ({"phase": "x" * 40}, {"ready_replicas": -1}, {"model": "Not A Name"}, {"url": "u" * 600},
                {"unknown": 1}):
        answer = registry.report("c", "ml", "x", **bad)
        assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", bad
    assert registry.report("UPPER", "ml", "x", scope="write").status_code == 422
    assert registry.report("c", "ml", "x" * 254).status_code == 422
    assert registry.call("GET", "/deployments", "read", params={"cursor": "garbage!"}).status_code == 400
    assert registry.call("DELETE", "/deployments/c/ml/missing", "report:c").status_code == 404


def test_heartbeats_keep_a_deployment_fresh_and_silence_turns_it_stale(registry: Registry) -> None:
    registry.ready_version("digits")
    registry.report("c", "ml", "d")
    after = registry.server.store.last_event_id()
    for _ in range(3):  # heartbeats: the same report again
        time.sleep(STALE_SECONDS / 2)
        assert registry.report("c", "ml", "d").json()["stale"] is False
    assert registry.server.store.events_after(after) == []  # a heartbeat is not news
    registry.report("c", "ml", "d", phase="Degraded")
    assert [e.type for e in registry.server.store.events_after(after)] == ["deployment.updated"]
    time.sleep(STALE_SECONDS + 0.2)
    (item,) = registry.call("GET", "/deployments", "read").json()["items"]
    assert item["stale"] is True and item["phase"] == "Degraded"  # the last word, marked not known healthy
    assert [d["name"] for d in registry.call("GET", "/deployments", "read",
                                             params={"phase": "Stale"}).json()["items"]] == ["d"]
    assert registry.call("GET", "/deployments", "read", params={"phase": "Degraded"}).json()["items"] == []
    assert registry.call("DELETE", "/deployments/c/ml/d", "report:c").status_code == 204
    assert registry.call("GET", "/deployments", "read").json()["items"] == []
    assert registry.server.store.events_after(after)[-1].type == "deployment.removed"


def test_a_version_a_live_deployment_serves_cannot_be_deleted_without_force(registry: Registry) -> None:
    v1, v2 = registry.ready_version("digits"), registry.ready_version("digits")
    registry.report("prod", "ml", "digits", version=v1)
    refused = registry.call("DELETE", f"/models/digits/versions/{v1}", "write")
    assert refused.status_code == 409 and "prod/ml/digits (Ready)" in refused.json()["detail"]
    assert refused.json()["deployments"] == ["prod/ml/digits"]
    assert registry.call("DELETE", "/models/digits", "admin").status_code == 409
    assert registry.call("DELETE", f"/models/digits/versions/{v1}", "write",
                         params={"force": "true"}).status_code == 403  # force is an admin's
    assert registry.call("DELETE", f"/models/digits/versions/{v2}", "write").status_code == 204  # not served
    time.sleep(STALE_SECONDS + 0.2)  # its operator went silent: no longer holds the version
    (quiet,) = registry.call("GET", f"/models/digits/versions/{v1}", "read").json()["deployments"]
    assert quiet["stale"] is True and quiet["cluster"] == "prod"
    assert registry.call("DELETE", f"/models/digits/versions/{v1}", "write").status_code == 204
    v3 = registry.ready_version("digits")
    registry.report("prod", "ml", "digits", version=v3)
    assert registry.call("DELETE", f"/models/digits/versions/{v3}", "admin",
                         params={"force": "true"}).status_code == 204


def test_a_protected_alias_moves_only_to_versions_that_meet_its_rules(registry: Registry) -> None:
    good = registry.ready_version("digits", {"accuracy": 0.97, "latency_ms": 4})
    bad = registry.ready_version("digits", {"accuracy": 0.91, "latency_ms": 4})
    unmeasured = registry.ready_version("digits")
    rules = {"require": ["accuracy>=0.95", "latency_ms<10"]}
    assert registry.call("PUT", "/models/digits/aliases/production/protection", "write",
                         json=rules).status_code == 403  # protecting is an admin's
    assert registry.call("PUT", "/models/digits/aliases/production/protection", "admin",
                         json=rules).json() == rules
    assert registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": good}).status_code == 200
    refused = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": bad})
    assert refused.status_code == 403 and "accuracy >= 0.95 (accuracy is 0.91)" in refused.json()["detail"]
    refused = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": unmeasured})
    assert refused.status_code == 403 and "records no accuracy" in refused.json()["detail"]
    assert registry.call("GET", "/models/digits/aliases/production", "read").json()["version"] == good
    assert registry.call("PUT", "/models/digits/aliases/production", "admin", json={"version": bad}).status_code == 200
    assert registry.call("DELETE", "/models/digits/aliases/production", "write").status_code == 403
    for invalid in (["accuracy >>= 1"], ["x" * 200], ["a>=1"] * 17):
        assert registry.call("PUT", "/models/digits/aliases/production/protection", "admin",
                             json={"require": invalid}).status_code == 422
    assert registry.call("DELETE", "/models/digits/aliases/production/protection", "admin").status_code == 204
    assert registry.call("GET", "/models/digits/aliases/production/protection", "read").status_code == 404
    assert registry.call("PUT", "/models/digits/aliases/production", "write",
                         json={"version": unmeasured}).status_code == 200


def test_every_alias_move_is_recorded_with_who_and_when(registry: Registry) -> None:
    v1, v2 = registry.ready_version("digits"), registry.ready_version("digits")
    registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v1})
    registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": v1})  # no move
    registry.call("PUT", "/models/digits/aliases/production", "admin", json={"version": v2})
    registry.call("DELETE", "/models/digits/aliases/production", "write")
    history = registry.call("GET", "/models/digits/aliases/production/history", "read").json()
    assert [(m["from_version"], m["to_version"], m["actor"]) for m in history["items"]] == [
        (v2, None, "token:write-bot"), (v1, v2, "token:admin-bot"), (None, v1, "token:write-bot")]
    page = registry.call("GET", "/models/digits/aliases/production/history", "read", params={"limit": 2}).json()
    rest = registry.call("GET", "/models/digits/aliases/production/history", "read",
                         params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert len(page["items"]) == 2 and [m["to_version"] for m in rest["items"]] == [v1]
    assert registry.call("GET", "/models/nope/aliases/production/history", "read").status_code == 404


def test_a_ready_versions_metrics_cannot_be_edited_to_talk_a_protected_alias_round(registry: Registry) -> None:
    """The attack: raise the metric, move the alias, set the metric back.  A ready version's metrics
    are immutable, and the history records what each protected move was judged on."""
    good = registry.ready_version("digits", {"accuracy": 0.97})
    weak = registry.ready_version("digits", {"accuracy": 0.91})
    registry.call("PUT", "/models/digits/aliases/production/protection", "admin", json={"require": ["accuracy>=0.95"]})
    assert registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": good}).status_code == 200
    assert registry.call("PUT", "/models/digits/aliases/production", "write",
                         json={"version": weak}).status_code == 403
    edit = registry.call("PATCH", f"/models/digits/versions/{weak}", "write", json={"metrics": {"accuracy": 0.99}})
    assert edit.status_code == 409 and edit.json()["rule"] == "metrics-immutable-once-ready"
    assert registry.call("PATCH", f"/models/digits/versions/{weak}", "admin",
                         json={"metrics": {"accuracy": 0.99}}).status_code == 409  # nobody, not even an admin
    assert registry.call("GET", f"/models/digits/versions/{weak}", "read").json()["metrics"] == {"accuracy": 0.91}
    assert registry.call("PUT", "/models/digits/aliases/production", "write",
                         json={"version": weak}).status_code == 403
    unchanged = registry.call("PATCH", f"/models/digits/versions/{weak}", "write",
                              json={"metrics": {"accuracy": 0.91}, "description": "still editable"})
    assert unchanged.status_code == 200 and unchanged.json()["description"] == "still editable"
    pending = registry.call("POST", "/models/digits/versions", "write", json={"metrics": {"accuracy": 0.5}}).json()
    assert registry.call("PATCH", f"/models/digits/versions/{pending['version']}", "write",
                         json={"metrics": {"accuracy": 0.6}}).json()["metrics"] == {"accuracy": 0.6}
    (move,) = registry.call("GET", "/models/digits/aliases/production/history", "read").json()["items"]
    assert move["judged"] == {"require": ["accuracy>=0.95"], "metrics": {"accuracy": 0.97}}


def test_a_report_token_speaks_for_its_own_cluster_and_registered_versions_only(registry: Registry) -> None:
    v1 = registry.ready_version("digits")
    assert registry.report("prod", "ml", "digits", version=v1).status_code == 200
    forged = registry.call("PUT", "/deployments/prod/ml/digits", "report:staging",
                           json={"model": "digits", "version": v1, "phase": "Failed"})
    assert forged.status_code == 403 and "bound to cluster 'staging'" in forged.json()["detail"]
    assert registry.call("DELETE", "/deployments/prod/ml/digits", "report:staging").status_code == 403
    (kept,) = registry.call("GET", "/deployments", "read").json()["items"]
    assert kept["phase"] == "Ready"
    assert registry.report("prod", "ml", "x", model="nonexistent", version=None).status_code == 404
    assert registry.report("prod", "ml", "x", version=99).status_code == 404
    assert registry.report("prod", "ml", "x", version=v1, digest="sha256:" + "0" * 64).status_code == 422
    with pytest.raises(Exception, match="bound to the cluster"):
        registry.server.store.create_token("unbound", "report")
    with registry.server.store.engine.begin() as connection:  # a report token from before the binding
        connection.execute(sqlalchemy.text("UPDATE api_tokens SET cluster = NULL WHERE name = 'report-staging'"))
    legacy = registry.call("PUT", "/deployments/staging/ml/x", "report:staging",
                           json={"model": "digits", "version": v1, "phase": "Ready"})
    assert legacy.status_code == 403 and "--cluster NAME" in legacy.json()["detail"]
    with pytest.raises(Exception, match="only a report token"):
        registry.server.store.create_token("w", "write", cluster="prod")


def test_a_version_lists_a_bounded_number_of_deployments_with_the_total(registry: Registry) -> None:
    v1 = registry.ready_version("digits")
    for i in range(25):
        assert registry.report("prod", "ml", f"d{i:02}", version=v1).status_code == 200
    answer = registry.call("GET", f"/models/digits/versions/{v1}", "read").json()
    assert len(answer["deployments"]) == 20 and answer["deployments_total"] == 25
    assert answer["deployments_link"] == f"/api/v1/deployments?model=digits&version={v1}"
    listed = registry.call("GET", "/models/digits/versions", "read").json()["items"][0]
    assert len(listed["deployments"]) == 20 and listed["deployments_total"] == 25
    assert len(registry.call("GET", "/deployments", "read", params={"model": "digits", "version": v1,
                                                                     "limit": 100}).json()["items"]) == 25


def test_the_event_feed_has_a_retention_and_a_follower_behind_it_is_told(registry: Registry) -> None:
    store = registry.server.store
    for i in range(5):
        registry.call("POST", "/models", "write", json={"name": f"m{i}"})
    last = store.last_event_id()
    assert store.prune_events(older_than=timedelta(days=30), keep=2) >= 3
    assert len(store.events_after(0)) == 2
    behind = registry.call("GET", "/events", "read", params={"after": 1}).json()
    assert behind["truncated"] is True
    current = registry.call("GET", "/events", "read", params={"after": last - 1}).json()
    assert current["truncated"] is False and [e["id"] for e in current["events"]] == [last]
    assert store.prune_events(older_than=timedelta(0), keep=100) == 2  # by age: everything is older than now


def test_a_deleted_models_reports_and_history_do_not_pass_to_a_new_model_of_its_name(registry: Registry) -> None:
    old = registry.ready_version("digits")
    old_digest = registry.call("GET", f"/models/digits/versions/{old}", "read").json()["digest"]
    registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": old})
    registry.report("prod", "ml", "digits", version=old)
    registry.call("DELETE", "/models/digits/aliases/production", "write")
    assert registry.call("DELETE", "/models/digits", "admin", params={"force": "true"}).status_code == 204
    history = registry.call("GET", "/models/digits/aliases/production/history", "read").json()["items"]
    assert [(m["to_version"], m["deleted_model"]) for m in history] == [(None, True), (old, True)]
    new = registry.ready_version("digits")  # same name, same number, other bytes
    assert new == 1 and registry.call("GET", f"/models/digits/versions/{new}", "read").json()["deployments"] == []
    assert registry.call("DELETE", f"/models/digits/versions/{new}", "write").status_code == 204
    # the old operator's heartbeat names bytes the new model does not have
    assert registry.report("prod", "ml", "digits", version=1, digest=old_digest).status_code == 404
    registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": registry.ready_version(
        "digits")})
    assert registry.report("prod", "ml", "digits", version=2, digest=old_digest).status_code == 422
    moves = registry.call("GET", "/models/digits/aliases/production/history", "read").json()["items"]
    assert [m["deleted_model"] for m in moves] == [False, True, True]
    assert registry.call("GET", "/models/never/aliases/production/history", "read").status_code == 404


def test_a_transition_time_keeps_its_instant_on_every_backend(registry: Registry) -> None:
    registry.ready_version("digits")
    registry.report("c", "ml", "d", last_transition_time="2026-01-01T12:00:00+05:00")
    (item,) = registry.call("GET", "/deployments", "read").json()["items"]
    assert datetime.fromisoformat(item["last_transition_time"]) == datetime(2026, 1, 1, 7, 0, tzinfo=timezone.utc)


def test_live_token_names_are_unique_so_the_history_can_tell_holders_apart(registry: Registry) -> None:
    store = registry.server.store
    with pytest.raises(Conflict, match="already named 'admin-bot'"):
        store.create_token("admin-bot", "write")
    admin = next(t for t in store.list_tokens() if t.name == "admin-bot")
    store.create_token("admin-2", "admin")
    store.revoke_token(admin.id)
    store.create_token("admin-bot", "write")  # the name is free once its holder is revoked
