"""The REST API over real HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import content_digest, sha256
from tests.support.artifacts import program_bytes
from tests.support.servers import ThreadedRegistry

PROBLEM = "application/problem+json"
ONE, TWO, PAYLOAD, OTHER = (program_bytes(text) for text in (b"one", b"two", b"payload", b"other"))


@pytest.fixture
def http(sqlite_registry: ThreadedRegistry):
    with httpx.Client(base_url=sqlite_registry.url + "/api/v1", timeout=30) as client:
        yield client


def push(http: httpx.Client, name: str, data: bytes) -> int:
    http.post("/models", json={"name": name})
    version = http.post(f"/models/{name}/versions", json={"format": "torch-export"}).json()["version"]
    answer = http.put(f"/models/{name}/versions/{version}/artifact", content=data,
                      headers={"Content-Digest": content_digest(data)})
    assert answer.status_code == 200, answer.text
    return version


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:modelyard:problem:")
    for word in words:
        assert word in body["detail"], body
    return body


def test_models_lifecycle_and_errors(http: httpx.Client) -> None:
    created = http.post("/models", json={"name": "digits", "tags": {"team": "cv"}})
    assert created.status_code == 201 and created.headers["location"] == "/api/v1/models/digits"
    assert_problem(http.post("/models", json={"name": "digits"}), 409, "already exists")
    assert_problem(http.post("/models", json={"name": "Bad_Name"}), 422, "name")
    assert_problem(http.post("/models", json={"name": "x", "surprise": 1}), 422)
    assert_problem(http.get("/models/unknown"), 404, "unknown")
    assert_problem(http.get("/models/a..b"), 422)
    assert_problem(http.get("/models/..%2F..%2Fetc"), 404)  # never a path on disk: no route matches
    assert_problem(http.get("/nothing-here"), 404)
    assert_problem(http.post("/models/digits"), 405)
    assert http.patch("/models/digits", json={"description": "8x8"}).json()["description"] == "8x8"
    assert http.delete("/models/digits").status_code == 204
    assert_problem(http.get("/models/digits"), 404)


def test_version_create_get_patch_delete(http: httpx.Client) -> None:
    http.post("/models", json={"name": "m"})
    answer = http.post("/models/m/versions")  # empty body: every field optional
    assert answer.status_code == 201 and answer.json()["status"] == "pending" and answer.json()["version"] == 1
    assert_problem(http.post("/models/m/versions", json={"format": "pickle"}), 422, "format")
    assert_problem(http.post("/models/m/versions", json={"metrics": {"acc": "high"}}), 422)
    patched = http.patch("/models/m/versions/1", json={"metrics": {"acc": 0.97}, "tags": {"k": "v"}}).json()
    assert patched["metrics"] == {"acc": 0.97} and patched["tags"] == {"k": "v"}
    assert_problem(http.get("/models/m/versions/9"), 404, "version 9")
    assert_problem(http.get("/models/m/versions/0"), 422)
    assert http.delete("/models/m/versions/1").status_code == 204
    assert_problem(http.delete("/models/m/versions/1"), 404)


def test_upload_download_range_and_etag(http: httpx.Client) -> None:
    data = program_bytes(bytes(range(256)) * 5000)  # 1.28 MB, spans several write blocks
    version = push(http, "m", data)
    body = http.get(f"/models/m/versions/{version}").json()
    assert (body["status"], body["digest"], body["size"]) == ("ready", sha256(data), len(data))
    full = http.get(f"/models/m/versions/{version}/artifact")
    assert full.status_code == 200 and full.content == data
    assert full.headers["etag"] == f'"{sha256(data)}"' and full.headers["content-digest"] == content_digest(data)
    part = http.get(f"/models/m/versions/{version}/artifact", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = http.get(f"/models/m/versions/{version}/artifact", headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]
    unsatisfiable = http.get(f"/models/m/versions/{version}/artifact", headers={"Range": f"bytes={len(data)}-"})
    assert_problem(unsatisfiable, 416)
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(data)}"
    cached = http.get(f"/models/m/versions/{version}/artifact", headers={"If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    head = http.head(f"/models/m/versions/{version}/artifact")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""
    stale = http.get(f"/models/m/versions/{version}/artifact",
                     headers={"Range": "bytes=0-9", "If-Range": '"sha256:other"'})
    assert stale.status_code == 200 and len(stale.content) == len(data)


def test_artifacts_are_immutable_and_digest_checked(http: httpx.Client, sqlite_registry: ThreadedRegistry) -> None:
    http.post("/models", json={"name": "m"})
    http.post("/models/m/versions")
    wrong = http.put("/models/m/versions/1/artifact", content=b"payload",
                     headers={"Content-Digest": content_digest(b"something else")})
    body = assert_problem(wrong, 422, "mismatch")
    assert body["code"] == "digest-mismatch" and body["actual"] == sha256(b"payload")
    assert http.get("/models/m/versions/1").json()["status"] == "pending"
    assert_problem(http.get("/models/m/versions/1/artifact"), 409, "pending")
    assert list((sqlite_registry.app.state.artifacts.blobs).rglob("*")) == []  # nothing stored
    assert list(sqlite_registry.app.state.artifacts.tmp.iterdir()) == []  # temp removed
    assert_problem(http.put("/models/m/versions/1/artifact", content=b"x"), 422, "Content-Digest")
    assert_problem(http.put("/models/m/versions/1/artifact", content=b"x",
                            headers={"Content-Digest": "sha-512=:AAAA:"}), 422, "sha-256")
    assert http.put("/models/m/versions/1/artifact", content=PAYLOAD,
                    headers={"Content-Digest": content_digest(PAYLOAD)}).status_code == 200
    again = http.put("/models/m/versions/1/artifact", content=OTHER,
                     headers={"Content-Digest": content_digest(OTHER)})
    assert_problem(again, 409, "immutable")
    assert http.get("/models/m/versions/1/artifact").content == PAYLOAD


def test_alias_endpoints_and_delete_refusal(http: httpx.Client) -> None:
    push(http, "m", ONE)
    push(http, "m", TWO)
    assert_problem(http.put("/models/m/aliases/production", json={"version": 7}), 404)
    assert_problem(http.put("/models/m/aliases/Prod", json={"version": 1}), 422)
    assert_problem(http.put("/models/m/aliases/1abc", json={"version": 1}), 422)
    set_ = http.put("/models/m/aliases/production", json={"version": 1}).json()
    assert set_ == {"model": "m", "alias": "production", "version": 1, "digest": sha256(ONE)}
    assert http.get("/models/m/aliases/production").json() == set_
    refused = assert_problem(http.delete("/models/m/versions/1"), 409, "production")
    assert refused["aliases"] == ["production"]
    http.put("/models/m/aliases/production", json={"version": 2})
    assert http.delete("/models/m/versions/1").status_code == 204
    assert http.get("/models/m").json()["aliases"] == {"production": 2}
    assert http.delete("/models/m/aliases/production").status_code == 204
    assert_problem(http.get("/models/m/aliases/production"), 404)


def test_list_pagination_filters_and_latest(http: httpx.Client) -> None:
    for i in range(5):
        http.post("/models", json={"name": f"svc-{i}", "tags": {"tier": "gold" if i < 2 else "std"}})
    page = http.get("/models", params={"limit": 2, "prefix": "svc-"}).json()
    assert [m["name"] for m in page["items"]] == ["svc-0", "svc-1"] and page["next_cursor"]
    rest = http.get("/models", params={"limit": 10, "prefix": "svc-", "cursor": page["next_cursor"]}).json()
    assert [m["name"] for m in rest["items"]] == ["svc-2", "svc-3", "svc-4"] and rest["next_cursor"] is None
    gold = http.get("/models", params=[("tag", "tier=gold")]).json()["items"]
    assert [m["name"] for m in gold] == ["svc-0", "svc-1"]
    assert_problem(http.get("/models", params={"tag": "no-equals"}), 422, "key=value")
    assert_problem(http.get("/models", params={"limit": 1001}), 422)
    for _ in range(3):
        http.post("/models/svc-0/versions")
    latest = http.get("/models/svc-0/versions", params={"order": "desc", "limit": 1}).json()["items"]
    assert latest[0]["version"] == 3


def test_events_long_poll_wakes_within_a_second(http: httpx.Client) -> None:
    push(http, "m", ONE)
    after = http.get("/events").json()["next"]
    timer = threading.Timer(0.3, lambda: httpx.put(str(http.base_url).rstrip("/") + "/models/m/aliases/production",
                                                   json={"version": 1}))
    started = time.monotonic()
    timer.start()
    answer = http.get("/events", params={"after": after, "timeout": 10}).json()
    waited = time.monotonic() - started
    assert [(e["type"], e["alias"], e["version"]) for e in answer["events"]] == [("alias.set", "production", 1)]
    assert answer["next"] == answer["events"][0]["id"]
    assert 0.25 < waited < 1.0
    empty_started = time.monotonic()
    assert http.get("/events", params={"after": answer["next"], "timeout": 0.5}).json() == {"truncated": False,
        "events": [], "next": answer["next"]}
    assert time.monotonic() - empty_started >= 0.5


def test_64_concurrent_version_creations_over_http(registry: ThreadedRegistry) -> None:
    """On SQLite and PostgreSQL: 64 simultaneous POSTs get exactly 1..64."""
    base = registry.url + "/api/v1"
    httpx.post(f"{base}/models", json={"name": "race"}).raise_for_status()
    barrier = threading.Barrier(64)

    def create(_: int) -> int:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            answer = client.post(f"{base}/models/race/versions")
            answer.raise_for_status()
            return answer.json()["version"]

    with ThreadPoolExecutor(max_workers=64) as pool:
        numbers = list(pool.map(create, range(64)))
    assert sorted(numbers) == list(range(1, 65))


def test_health_readiness_metrics_and_openapi(sqlite_registry: ThreadedRegistry) -> None:
    url = sqlite_registry.url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    httpx.get(f"{url}/api/v1/models")
    metrics = httpx.get(f"{url}/metrics").text
    assert 'modelyard_registry_requests_total{method="GET",route="/models",status="200"}' in metrics
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/api/v1/models/{name}/aliases/{alias}" in spec["paths"]
    assert httpx.get(f"{url}/docs").status_code == 200


@pytest.mark.slow
def test_two_worker_processes_on_sqlite_share_one_numbering(tmp_path) -> None:  # noqa: ANN001
    """With --workers 2, SQLite writes from two processes still give exactly 1..64."""
    from tests.support.servers import ProcessRegistry

    with ProcessRegistry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "a", args=("--workers", "2")) as server:
        base = server.url + "/api/v1"
        httpx.post(f"{base}/models", json={"name": "race"}).raise_for_status()

        def create(_: int) -> int:
            answer = httpx.post(f"{base}/models/race/versions", timeout=60)
            answer.raise_for_status()
            return answer.json()["version"]

        with ThreadPoolExecutor(max_workers=32) as pool:
            numbers = list(pool.map(create, range(64)))
        assert sorted(numbers) == list(range(1, 65))


def test_metadata_must_be_portable_json(http: httpx.Client) -> None:
    """Found by the fuzzer: an integer beyond 64 bits in metadata was a 500."""
    http.post("/models", json={"name": "m"})
    answer = http.post("/models/m/versions", content=b'{"metadata": {"n": 123456789012345678901234567890}}',
                       headers={"Content-Type": "application/json"})
    assert_problem(answer, 422, "portable JSON")
    big = http.post("/models/m/versions", json={"metadata": {"blob": "x" * 70_000}})
    assert_problem(big, 422, "64 KiB")
