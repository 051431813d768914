"""Package → serve → predict with real BentoML builds and a real BentoML server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelyard.bentos.examples import digits
from modelyard.bentos.packager import package_version
from modelyard.bentos.runtime import BentoRefused, extract
from modelyard.operator.analysis import numbers, read_exposition
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import Invalid
from modelyard.registry.kernel.processes.children import stop_process
from modelyard.registry.settings import RegistrySettings
from tests.support import behaviours
from tests.support.servers import ThreadedRegistry, free_port, wait_ready

pytestmark = pytest.mark.slow


@dataclass
class Served:
    registry: ThreadedRegistry
    images: np.ndarray
    expected: np.ndarray  # the in-process model's outputs for `images`
    workdir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("serving")
    settings = RegistrySettings(db_url=f"sqlite:///{workdir / 'r.db'}", artifacts_url=str(workdir / "artifacts"),
                                migrate_on_start=True)
    torch.manual_seed(0)
    model = digits.build_model().eval()  # untrained is fine: outputs are compared, not accuracy
    program = workdir / "digits.pt2"
    metadata = digits.export(model, program)
    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    with ThreadedRegistry(settings) as registry, RegistryClient(registry.url) as client:
        client.create_model("digits")
        client.create_version("digits", format="torch-export", metadata=metadata)
        client.upload_artifact("digits", 1, program)
        client.set_alias("digits", "production", 1)
        yield Served(registry, images, expected, workdir)


def start_serving(served: Served, cache: Path, ref: str = "digits@production",
                  *extra: str) -> tuple[subprocess.Popen[str], str, Path]:
    port = free_port()
    log = served.workdir / f"serve-{port}.log"
    handle = open(log, "w")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", "serve", ref, "--port", str(port), "--cache",
         str(cache), *extra],
        env={**os.environ, "MODELYARD_REGISTRY_URL": served.registry.url, "COLUMNS": "200"},
        stdout=handle, stderr=subprocess.STDOUT, text=True,
    )
    return process, f"http://127.0.0.1:{port}", log


def wait_serving(process: subprocess.Popen[str], url: str, log: Path, timeout: float = 90) -> None:
    try:
        wait_ready(url, process, timeout)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None


def stop(process: subprocess.Popen[str]) -> None:
    stop_process(process, timeout=30)


@pytest.mark.parametrize("option", [["--max-running", "4"], ["--prefill-tokens", "64"], ["--max-model-len", "9"]])
def test_a_language_model_setting_is_refused_for_a_program(served: Served, tmp_path: Path, option: list[str]) -> None:
    process, _, log = start_serving(served, tmp_path / "cache", "digits:1", *option)
    assert process.wait(timeout=180) == 2
    said = " ".join(log.read_text().split())
    assert f"{option[0]}: the torch engine that serves digits:1 does not read it" in said


def test_a_model_that_raises_is_a_500_on_every_route_and_counted_for_canary_analysis(served: Served,
                                                                                    tmp_path: Path) -> None:
    # Passes the server's load-time check (one forward pass), then fails every forward pass.
    program, metadata, _ = behaviours.faulty(tmp_path, 1.0, served.images, healthy_calls=1)
    with RegistryClient(served.registry.url) as client:
        client.ensure_model("faulty")
        version = client.create_version("faulty", format="torchscript", metadata=metadata).version
        client.upload_artifact("faulty", version, program)
    process, url, log = start_serving(served, tmp_path / "cache", f"faulty:{version}")
    try:
        wait_serving(process, url, log)
        before = read_exposition(httpx.get(f"{url}/metrics", timeout=30).text, "canary")
        assert before.requests == {"200": 0} and before.buckets["+Inf"] == 0  # ours from the start, at zero
        body = {"inputs": served.images.tolist()}
        oip = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(served.images.shape),
                           "data": served.images.ravel().tolist()}]}
        for route, payload in (("/predict", body), ("/predict_batch", body), ("/v2/models/faulty/infer", oip)):
            answer = httpx.post(f"{url}{route}", json=payload, timeout=30)
            assert answer.status_code == 500 and "error" in answer.json(), (route, answer.text)
        assert httpx.post(f"{url}/predict", json={"inputs": [[1.0]]}, timeout=30).status_code == 400
        counted = read_exposition(httpx.get(f"{url}/metrics", timeout=30).text, "canary")
        assert {code: n for code, n in counted.requests.items() if n} == {"500": 3, "400": 1}
        assert counted.buckets["+Inf"] == 4
        assert numbers(counted).error_rate == 0.75
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200  # a failing model still serves probes
    finally:
        stop(process)
    assert "the model failed on a request of 5 examples" in log.read_text()


def test_packaging_records_the_bento_once(served: Served) -> None:
    with RegistryClient(served.registry.url) as client:
        first = package_version(client, "digits:1")
        again = package_version(client, "digits@production")
    assert not first.reused and again.reused
    assert first.version.bento is not None and first.version.bento.tag.startswith("digits:v1-")
    assert again.version.bento == first.version.bento
    assert served.registry.store.events_after(0)[-1].type == "version.packaged"


def test_served_predictions_match_the_model_and_bad_input_is_a_400(served: Served, tmp_path: Path) -> None:
    process, url, log = start_serving(served, tmp_path / "cache", "digits@production", "--max-batch-size", "16")
    try:
        wait_serving(process, url, log)
        answer = httpx.post(f"{url}/predict", json={"inputs": served.images.tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()), served.expected, rtol=1e-4, atol=1e-5)
        wrong_shape = httpx.post(f"{url}/predict", json={"inputs": [[1.0] * 64]}, timeout=30)
        assert wrong_shape.status_code == 400 and "[-1, 1, 8, 8]" in wrong_shape.text
        not_numbers = httpx.post(f"{url}/predict", json={"inputs": [[["x"] * 8] * 8]}, timeout=30)
        assert not_numbers.status_code == 400
        batch = httpx.post(f"{url}/predict_batch", json={"inputs": np.concatenate([served.images] * 8).tolist()},
                           timeout=30)  # 40 examples: more than max_batch_size (16), run directly
        assert batch.status_code == 200, batch.text
        np.testing.assert_allclose(np.array(batch.json()), np.concatenate([served.expected] * 8), rtol=1e-4, atol=1e-5)
        assert httpx.post(f"{url}/predict", content=b"{oops", timeout=30).status_code == 400
        oip = httpx.post(f"{url}/v2/models/digits/infer", timeout=30, json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [5, 1, 8, 8], "data": served.images.ravel().tolist()}]})
        assert oip.status_code == 200, oip.text
        np.testing.assert_allclose(np.array(oip.json()["outputs"][0]["data"]).reshape(5, 10), served.expected,
                                   rtol=1e-4, atol=1e-5)
        about = httpx.post(f"{url}/model", json={}, timeout=30).json()
        assert (about["model"], about["version"], about["device"]) == ("digits", 1, "cpu")
        assert about["serving"]["engine"] == "torch" and "llm" not in about["serving"]
        assert about["serving"]["tensor"]["max_batch_size"] == 16  # the setting reached the server
        too_many = httpx.post(f"{url}/predict", json={"inputs": np.concatenate([served.images] * 4).tolist()},
                              timeout=30)  # 20 examples: past /predict's batch of 16
        assert too_many.status_code == 400 and "more than max_batch_size (16)" in too_many.text
        metrics = httpx.get(f"{url}/metrics", timeout=30).text  # the fast routes count themselves
        assert ('modelyard_requests_total{route="/predict",status="200"} 1.0') in metrics
        assert ('modelyard_requests_total{route="/predict",status="400"} 4.0') in metrics
        assert ('modelyard_requests_total{route="/predict_batch",status="200"} 1.0') in metrics
        assert ('modelyard_requests_total{route="/v2/models/{model}/infer",status="200"} 1.0') in metrics
    finally:
        stop(process)
    text = log.read_text()
    assert "serving digits:1 as digits:v1-" in text and "sha256:" in text and "on cpu" in text


def test_a_warm_cache_skips_the_download(served: Served, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with RegistryClient(served.registry.url) as client:
        from modelyard.bentos.runtime import fetch

        first = fetch(client, "digits:1", cache)
        outbound = served.registry.app.state.metrics.artifact_bytes.labels("out")._value.get()
        second = fetch(client, "digits:1", cache)
        assert first.downloaded and not second.downloaded and second.directory == first.directory
        assert served.registry.app.state.metrics.artifact_bytes.labels("out")._value.get() == outbound
    pulled = subprocess.run([sys.executable, "-m", "modelyard.cli", "pull", "digits@production",
                             "--to", str(cache)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MODELYARD_REGISTRY_URL": served.registry.url, "COLUMNS": "200"})
    assert pulled.returncode == 0 and "from the cache" in pulled.stdout, pulled.stderr


def test_a_tampered_cache_is_refused(served: Served, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with RegistryClient(served.registry.url) as client:
        from modelyard.bentos.runtime import fetch

        fetched = fetch(client, "digits:1", cache)
    program = next((fetched.src / "model").iterdir())
    program.write_bytes(program.read_bytes() + b"tampered")
    process, url, log = start_serving(served, cache, "digits:1")
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        stop(process)
        raise AssertionError(f"a tampered model was served:\n{log.read_text()[-3000:]}") from None
    assert process.returncode != 0
    assert "refusing to serve" in log.read_text()


def test_a_tampered_store_is_refused(served: Served, tmp_path: Path) -> None:
    version = served.registry.store.get_version("digits", 1)
    assert version.bento is not None
    hex_digest = version.bento.digest.removeprefix("sha256:")
    blob = Path(served.registry.settings.artifacts_url) / "sha256" / hex_digest[:2] / hex_digest
    original = blob.read_bytes()
    try:
        blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        pulled = subprocess.run([sys.executable, "-m", "modelyard.cli", "pull", "digits:1", "--to",
                                 str(tmp_path / "fresh")], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "MODELYARD_REGISTRY_URL": served.registry.url})
        assert pulled.returncode == 1 and "sha256" in pulled.stderr, pulled.stdout + pulled.stderr
        assert not list((tmp_path / "fresh" / "bentos").glob("[0-9a-f]*"))  # nothing extracted
    finally:
        blob.write_bytes(original)
    shutil.rmtree(tmp_path / "fresh", ignore_errors=True)


def test_your_own_service_is_packaged_pushed_and_served(served: Served, tmp_path: Path) -> None:
    """The embedding example: a user BentoML service with its own code, pushed as format `bento`."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MODELYARD_REGISTRY_URL": served.registry.url, "COLUMNS": "200"}
    pushed = subprocess.run([sys.executable, "-m", "modelyard.cli", "package", "--service",
                             str(root / "bentos/examples/embedding/service.py:TextEmbedding"), "--model", "minilm"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert pushed.returncode == 0, pushed.stderr + pushed.stdout
    version = served.registry.store.get_version("minilm", 1)
    assert version.format.value == "bento" and version.bento is not None and version.bento.digest == version.digest
    process, url, log = start_serving(served, tmp_path / "cache", "minilm:1")
    try:
        wait_serving(process, url, log, timeout=180)
        texts = ["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply today"]
        answer = httpx.post(f"{url}/embed", json={"texts": texts}, timeout=60)
        assert answer.status_code == 200, answer.text
        vectors = np.array(answer.json())
        assert vectors.shape == (3, 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
        similarity = vectors @ vectors.T
        assert similarity[0, 1] > similarity[0, 2] + 0.2  # meaning, not noise
    finally:
        stop(process)
    bad = subprocess.run([sys.executable, "-m", "modelyard.cli", "package", "--service",
                          "nowhere.py:X", "--model", "minilm"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1 and "path/to/service.py:ClassName" in bad.stderr
    assert served.registry.store.get_model("minilm").latest_version == 1  # the refused call created nothing


def test_a_model_version_runs_the_installed_service_not_code_from_its_bento(served: Served, tmp_path: Path) -> None:
    """A write token can upload a Bento whose record and program are right but whose service.py is
    its own: the server must never import it."""
    from modelyard.bentos.packager import SERVICE_PY, bento_tag, build_bento, write_context
    from modelyard.bentos.pod.spec import MODEL_DIR, ModelSpec

    marker = tmp_path / "bento-code-ran"
    program = served.workdir / "digits.pt2"
    with RegistryClient(served.registry.url) as client:
        metadata = client.get_version("digits", 1).metadata
        number = client.create_version("digits", format="torch-export", metadata=metadata).version
        version = client.upload_artifact("digits", number, program)
        spec = ModelSpec(model="digits", version=number, digest=str(version.digest), format="torch-export",
                         file=f"{MODEL_DIR}/model.pt2", metadata=metadata)
        context = tmp_path / "context"
        write_context(spec, program, context)
        (context / "service.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + SERVICE_PY)
        tag = bento_tag("digits", number, str(version.digest))
        client.upload_bento("digits", number, build_bento(context, tag, tmp_path / "evil.bento"), tag)
    marker.unlink(missing_ok=True)  # `bentoml build` imports the service; only the server matters here
    process, url, log = start_serving(served, tmp_path / "cache", f"digits:{number}")
    try:
        wait_serving(process, url, log)
        answer = httpx.post(f"{url}/predict", json={"inputs": served.images.tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()), served.expected, rtol=1e-4, atol=1e-5)
    finally:
        stop(process)
    assert not marker.exists(), "code from the Bento ran in the model server"


def pull(served: Served, ref: str, to: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelyard.cli", "pull", ref, "--to", str(to)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MODELYARD_REGISTRY_URL": served.registry.url, "COLUMNS": "200"})


def test_the_runtime_refuses_another_versions_bento(served: Served, tmp_path: Path) -> None:
    """As a registry from before the upload check could have recorded it: version 1's Bento on a new version."""
    store = served.registry.store
    with RegistryClient(served.registry.url) as client:
        first = package_version(client, "digits:1").version
        metadata = first.metadata
        number = client.create_version("digits", format="torch-export", metadata=metadata).version
        client.upload_artifact("digits", number, served.workdir / "digits.pt2")
    assert first.bento is not None
    store.mark_packaged("digits", number, first.bento.tag, first.bento.digest, first.bento.size)
    pulled = pull(served, f"digits:{number}", tmp_path / "cache")
    assert pulled.returncode == 1 and "built from digits:1" in pulled.stderr, pulled.stdout + pulled.stderr
    assert "Traceback" not in pulled.stderr


def test_a_hostile_bento_archive_is_refused_in_one_line(served: Served, tmp_path: Path) -> None:
    from tests.support.artifacts import tar_bytes

    hostile = tmp_path / "hostile.bento"
    hostile.write_bytes(tar_bytes({"bento.yaml": b"service: s:S\n", "../../escaped.txt": b"out of the cache"}))
    with RegistryClient(served.registry.url) as client:
        client.ensure_model("hostile")
        client.create_version("hostile", format="bento")
        # the registry reads member names as the pod extracts them, so it refuses the archive first
        with pytest.raises(Invalid, match="'../../escaped.txt' in the archive is not a clean relative path"):
            client.upload_artifact("hostile", 1, hostile)
        assert client.get_version("hostile", 1).status.value == "pending"  # nothing was stored
    # one that reached a store anyway (written before this check) is refused by the pod, in one line
    bundle = tmp_path / "deep" / "bento.tar"
    bundle.parent.mkdir()
    bundle.write_bytes(hostile.read_bytes())
    with pytest.raises(BentoRefused, match="cannot extract the Bento: .*escaped.txt"):
        extract(bundle, tmp_path / "deep" / "cache", limit=1 << 20)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_bento_that_expands_beyond_its_bound_is_refused(tmp_path: Path) -> None:
    import gzip
    import tarfile

    from modelyard.bentos.runtime import BentoRefused, extract

    bomb = tmp_path / "bomb.bento"
    with gzip.open(bomb, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w") as archive:
        info = tarfile.TarInfo("zeros")
        info.size = 64 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(BentoRefused, match="expands to more than"):
        extract(bomb, tmp_path / "out", limit=20 * bomb.stat().st_size)
    extract(bomb, tmp_path / "ok", limit=65 << 20)
    assert (tmp_path / "ok" / "zeros").stat().st_size == 64 << 20


def test_bad_and_oversized_requests_are_4xx_and_the_probes_keep_answering(served: Served, tmp_path: Path) -> None:
    import psutil

    limit = 1 << 20
    process, url, log = start_serving(served, tmp_path / "cache", "digits@production", "--max-request-bytes",
                                      str(limit))
    one = served.images[:1]
    try:
        wait_serving(process, url, log)

        def post(path: str, **kwargs) -> httpx.Response:  # noqa: ANN003
            return httpx.post(f"{url}{path}", timeout=60, **kwargs)

        def nested(value: object) -> list:
            return [[[[value] * 8] * 8]]

        def oip(data: object) -> dict:
            return {"json": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": data}]}}

        def oip_binary(array: np.ndarray, shape: list[int] | None = None) -> dict:
            head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape or list(array.shape),
                                           "parameters": {"binary_data_size": array.nbytes}}]}).encode()
            return {"content": head + array.tobytes(), "headers": {"Inference-Header-Content-Length": str(len(head))}}

        infer = "/v2/models/digits/infer"
        refused = {
            "an object where a number goes": ("/predict", {"json": {"inputs": nested({})}}),
            "booleans": (infer, oip(nested(True))),
            "strings": (infer, oip(nested("1.5"))),
            "nulls": ("/predict", {"json": {"inputs": nested(None)}}),
            "a number beyond float32": ("/predict", {"json": {"inputs": nested(1e39)}}),
            "NaN on /predict": ("/predict", {"content": b'{"inputs": [[[' + b"[NaN, 0, 0, 0, 0, 0, 0, 0], " * 7
                                             + b"[0, 0, 0, 0, 0, 0, 0, 0]]]]}",
                                             "headers": {"Content-Type": "application/json"}}),
            "Infinity in binary": (infer, oip_binary(np.full((1, 1, 8, 8), np.inf, np.float32))),
            "an integer beyond float32's exact range": (infer, oip(nested(2 ** 40 + 1))),
            "uint64 2**64-1 on /predict_batch": (
                "/predict_batch", {"content": b'{"inputs": ' + str(np.full((1, 1, 8, 8), 2 ** 64 - 1).tolist()).encode()
                                   + b"}", "headers": {"Content-Type": "application/json"}}),
            "FP64 binary for an FP32 input": (infer, {**oip_binary(one.astype(np.float64)), "content": (
                oip_binary(one.astype(np.float64))["content"].replace(b'"FP32"', b'"FP64"'))}),
            "a shape that lies about the binary size": (infer, oip_binary(one, [99999999, 1, 8, 8])),
            "more rows than max_batch_size on /predict": (
                "/predict", {"json": {"inputs": np.concatenate([served.images] * 8).tolist()}}),
        }
        for what, (path, request) in refused.items():
            answer = post(path, **request)
            assert answer.status_code == 400, (what, answer.status_code, answer.text)
        assert post(infer, **oip_binary(served.images)).status_code == 200
        too_big = b'{"inputs": [' + b"0.5, " * (limit // 4) + b"0.5]}"
        assert post("/predict", content=too_big, headers={"Content-Type": "application/json"}).status_code == 413

        def chunked() -> Iterator[bytes]:
            for start in range(0, len(too_big), 65536):
                yield too_big[start:start + 65536]

        assert post(infer, content=chunked(), headers={"Content-Type": "application/json"}).status_code == 413

        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        rss_before = sum(p.memory_info().rss for p in tree)
        for _ in range(20):  # 20 bodies of 16 MiB, refused from their Content-Length
            assert post("/predict", content=bytes(16 << 20), headers={"Content-Type": "application/json"}
                        ).status_code == 413
        assert sum(p.memory_info().rss for p in tree) - rss_before < 64 << 20

        # Largest accepted bodies, back to back, while the readiness probe keeps being asked.
        largest = {"inputs": np.random.default_rng(1).random((1100, 1, 8, 8)).round(6).tolist()}
        body = json.dumps(largest).encode()
        assert len(body) <= limit
        probe_seconds: list[float] = []
        stop_probing = threading.Event()

        def probe() -> None:
            while not stop_probing.is_set():
                started = time.monotonic()
                assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
                probe_seconds.append(time.monotonic() - started)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: post("/predict_batch", content=body,
                                                       headers={"Content-Type": "application/json"}), range(24)))
        finally:
            stop_probing.set()
            prober.join(30)
        assert all(answer.status_code == 200 for answer in answers)
        assert probe_seconds and max(probe_seconds) < 2.0, probe_seconds  # the chart's timeout is 5 s
    finally:
        stop(process)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]  # refused requests are not logged as crashes


def _hostile_members() -> dict[str, tarfile.TarInfo]:
    def entry(name: str, kind: bytes, **fields: object) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        for key, value in fields.items():
            setattr(info, key, value)
        return info

    return {
        "a link out of the Bento": entry("src/out", tarfile.SYMTYPE, linkname="/etc"),
        "a link that stays inside": entry("src/in", tarfile.SYMTYPE, linkname="service.py"),
        "a hard link": entry("src/hard", tarfile.LNKTYPE, linkname="/etc/passwd"),
        "a device": entry("src/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        "a fifo": entry("src/fifo", tarfile.FIFOTYPE),
        "an absolute path": entry("/tmp/absolute.txt", tarfile.REGTYPE),
        "a path up and out": entry("src/../../escaped.txt", tarfile.REGTYPE),
    }


@pytest.fixture(params=["this Python", "Python before 3.11.4 (no extraction filter)"])
def tarfile_of(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each extraction test twice: as is, and with ``tarfile`` as Python 3.11.2 has it (Debian
    bookworm's, which the images carry): no ``data_filter`` and no ``filter`` argument."""
    if request.param != "this Python":
        original = tarfile.TarFile.extractall

        def extractall(self, path=".", members=None, *, numeric_owner=False):  # noqa: ANN001, ANN202
            return original(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")

        monkeypatch.delattr(tarfile, "data_filter")
        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    return request.param


@pytest.mark.parametrize("what", list(_hostile_members()))
def test_extraction_refuses_links_devices_and_paths_out_on_every_python(
        what: str, tarfile_of: str, tmp_path: Path) -> None:
    from modelyard.bentos.runtime import BentoRefused, extract

    archive = tmp_path / "hostile.bento"
    with tarfile.open(archive, "w") as bundle:
        service = tarfile.TarInfo("src/service.py")
        service.size = 4
        bundle.addfile(service, io.BytesIO(b"x=1\n"))
        bundle.addfile(_hostile_members()[what])
    with pytest.raises(BentoRefused, match="cannot extract the Bento"):
        extract(archive, tmp_path / "cache" / "out", limit=1 << 20)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()
    assert not any(path.is_symlink() or path.is_fifo() or path.is_char_device()
                   for path in (tmp_path / "cache").rglob("*"))


def test_extraction_drops_special_mode_bits_on_every_python(tarfile_of: str, tmp_path: Path) -> None:
    from modelyard.bentos.runtime import extract

    archive = tmp_path / "modes.bento"
    with tarfile.open(archive, "w") as bundle:
        for name, mode in {"src/setuid": 0o4777, "src/plain": 0o644, "src/tool": 0o755}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = 1, mode
            bundle.addfile(info, io.BytesIO(b"x"))
    extract(archive, tmp_path / "out", limit=1 << 20)
    modes = {path.name: path.stat().st_mode & 0o7777 for path in (tmp_path / "out" / "src").iterdir()}
    assert modes == {"setuid": 0o755, "plain": 0o644, "tool": 0o755}, modes


def test_a_version_without_a_bento_is_served_from_its_artifact_and_nothing_is_written(
        served: Served, tmp_path: Path) -> None:
    """A pod's token only reads: the runtime must not package (build and upload a Bento)."""
    with RegistryClient(served.registry.url) as client:
        client.ensure_model("unpackaged")
        client.create_version("unpackaged", format="torch-export", metadata=client.get_version("digits", 1).metadata)
        client.upload_artifact("unpackaged", 1, served.workdir / "digits.pt2")
    events_before = len(served.registry.store.events_after(0))
    pulled = pull(served, "unpackaged:1", tmp_path / "cache")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    with RegistryClient(served.registry.url) as client:
        assert client.get_version("unpackaged", 1).bento is None
    assert "its artifact" in pulled.stdout
    assert len(served.registry.store.events_after(0)) == events_before  # no version.packaged, nothing written
    process, url, log = start_serving(served, tmp_path / "cache", "unpackaged:1")
    try:
        wait_serving(process, url, log)
        answer = httpx.post(f"{url}/predict", json={"inputs": served.images.tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()), served.expected, rtol=1e-4, atol=1e-5)
        assert "from the cache" in log.read_text()  # the init container's fetch is what serves
    finally:
        stop(process)
