"""Package → serve → predict with real BentoML builds and a real BentoML server on 127.0.0.1."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelyard.bentos.examples import digits
from modelyard.bentos.packager import package_version
from modelyard.registry.client import RegistryClient
from modelyard.registry.local import stop_process
from modelyard.registry.settings import RegistrySettings
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
        [sys.executable, "-m", "modelyard.registry.cli.main", "serve", ref, "--port", str(port), "--cache",
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


def test_packaging_records_the_bento_once(served: Served) -> None:
    with RegistryClient(served.registry.url) as client:
        first = package_version(client, "digits:1")
        again = package_version(client, "digits@production")
    assert not first.reused and again.reused
    assert first.version.bento is not None and first.version.bento.tag.startswith("digits:v1-")
    assert again.version.bento == first.version.bento
    assert served.registry.store.events_after(0)[-1].type == "version.packaged"


def test_served_predictions_match_the_model_and_bad_input_is_a_400(served: Served, tmp_path: Path) -> None:
    process, url, log = start_serving(served, tmp_path / "cache")
    try:
        wait_serving(process, url, log)
        answer = httpx.post(f"{url}/predict", json={"inputs": served.images.tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()), served.expected, rtol=1e-4, atol=1e-5)
        wrong_shape = httpx.post(f"{url}/predict", json={"inputs": [[1.0] * 64]}, timeout=30)
        assert wrong_shape.status_code == 400 and "[-1, 1, 8, 8]" in wrong_shape.text
        not_numbers = httpx.post(f"{url}/predict", json={"inputs": [[["x"] * 8] * 8]}, timeout=30)
        assert not_numbers.status_code == 400
        lean = httpx.post(f"{url}/v2/predict", json={"inputs": served.images.tolist()}, timeout=30)
        assert lean.status_code == 200, lean.text
        np.testing.assert_allclose(np.array(lean.json()["outputs"]), served.expected, rtol=1e-4, atol=1e-5)
        buffer = io.BytesIO()
        np.save(buffer, served.images)
        binary = httpx.post(f"{url}/v2/predict", content=buffer.getvalue(),
                            headers={"Content-Type": "application/x-npy"}, timeout=30)
        assert binary.status_code == 200 and binary.headers["content-type"] == "application/x-npy"
        np.testing.assert_allclose(np.load(io.BytesIO(binary.content)), served.expected, rtol=1e-4, atol=1e-5)
        lean_bad = httpx.post(f"{url}/v2/predict", json={"inputs": [[1.0] * 64]}, timeout=30)
        assert lean_bad.status_code == 400 and "[-1, 1, 8, 8]" in lean_bad.json()["error"]
        assert httpx.post(f"{url}/v2/predict", content=b"{oops", timeout=30).status_code == 400
        many = np.concatenate([served.images] * 8)  # 40 examples: more than max_batch_size, run directly
        buffer = io.BytesIO()
        np.save(buffer, many)
        big = httpx.post(f"{url}/v2/predict", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"},
                         timeout=30)
        assert big.status_code == 200, big.text
        np.testing.assert_allclose(np.load(io.BytesIO(big.content)), np.concatenate([served.expected] * 8),
                                   rtol=1e-4, atol=1e-5)
        about = httpx.post(f"{url}/model", json={}, timeout=30).json()
        assert (about["model"], about["version"], about["device"]) == ("digits", 1, "cpu")
        metrics = httpx.get(f"{url}/metrics", timeout=30).text  # the lean route counts itself
        assert 'modelyard_lean_requests_total{status="200"} 3.0' in metrics
        assert 'modelyard_lean_requests_total{status="400"} 2.0' in metrics
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
    pulled = subprocess.run([sys.executable, "-m", "modelyard.registry.cli.main", "pull", "digits@production",
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
        pulled = subprocess.run([sys.executable, "-m", "modelyard.registry.cli.main", "pull", "digits:1", "--to",
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
    pushed = subprocess.run([sys.executable, "-m", "modelyard.registry.cli.main", "package", "--service",
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
    bad = subprocess.run([sys.executable, "-m", "modelyard.registry.cli.main", "package", "--service",
                          "nowhere.py:X", "--model", "minilm"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1 and "path/to/service.py:ClassName" in bad.stderr
    assert served.registry.store.get_model("minilm").latest_version == 1  # the refused call created nothing
