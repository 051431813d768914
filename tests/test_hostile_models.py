"""Model files that run code when torch loads them are refused by the registry and the model server.

Each archive is a real ``torch.export`` export rewritten the way an attacker would;
``loads_and_runs`` first proves that ``torch.export.load`` really runs it (the marker
file appears), then the registry and the model server's loader must refuse it
without the marker ever appearing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from modelyard.bentos.pod.failure import ModelLoadError
from modelyard.bentos.tensor.loader import load_program
from modelyard.bentos.pod.spec import ModelSpec
from modelyard.registry.model.formats import UnsupportedArtifact, sniff_format
from modelyard.registry.model.torch_export_check import UnsafeArchive, _check_sympy_term, _is_operator
from tests.helpers import content_digest, sha256
from tests.support import hostile
from tests.support.servers import ThreadedRegistry

HOSTILE: dict[str, tuple[Callable[[Path, Path, Path], Path], str]] = {
    "pickled weight": (hostile.pickled_weight, "use_pickle"),
    "pickled sample inputs": (hostile.pickled_sample_inputs, "not tensor data"),
    "opaque constant": (hostile.opaque_constant, "use_pickle"),
    "evaluated shape": (hostile.evaluated_shape, "symbolic shape"),
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.exported_archive(tmp_path_factory.mktemp("export") / "clean.pt2")


@pytest.fixture(params=sorted(HOSTILE))
def hostile_archive(request: pytest.FixtureRequest, clean: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    build, reason = HOSTILE[request.param]
    marker = tmp_path / "ran-code"
    path = build(clean, tmp_path / "hostile.pt2", marker)
    assert hostile.loads_and_runs(path, marker), "the test archive must really run code under torch.export.load"
    return path, marker, reason


def test_the_registry_refuses_it_on_upload(hostile_archive: tuple[Path, Path, str],
                                           sqlite_registry: ThreadedRegistry) -> None:
    path, marker, reason = hostile_archive
    with pytest.raises(UnsupportedArtifact, match=reason):
        sniff_format(path)  # what `modelyard push` checks before uploading
    data = path.read_bytes()
    api = sqlite_registry.url + "/api/v1"
    httpx.post(f"{api}/models", json={"name": "m"})
    httpx.post(f"{api}/models/m/versions")
    answer = httpx.put(f"{api}/models/m/versions/1/artifact", content=data,
                       headers={"Content-Digest": content_digest(data)})
    assert answer.status_code == 422 and reason in answer.json()["detail"], answer.text
    assert httpx.get(f"{api}/models/m/versions/1").json()["status"] == "pending"
    assert not marker.exists()


def test_the_model_server_refuses_it_before_loading(hostile_archive: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The server's own check, for a registry that accepted the file before this check existed."""
    path, marker, reason = hostile_archive
    (tmp_path / "model").mkdir()
    path.rename(tmp_path / "model" / "model.pt2")
    spec = ModelSpec(model="m", version=1, digest=sha256((tmp_path / "model" / "model.pt2").read_bytes()),
                     format="torch-export", file="model/model.pt2")
    with pytest.raises(ModelLoadError, match=reason):
        load_program(spec, tmp_path, "cpu", 1)
    assert not marker.exists()


def test_real_exports_pass_including_dynamic_shapes(clean: Path, tmp_path: Path) -> None:
    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x)[:, : x.shape[0] % 7 + 3]

    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = tmp_path / "dynamic.pt2"
    torch.export.save(torch.export.export(Model(), (torch.randn(3, 16),), dynamic_shapes=({0: batch},)),
                      str(dynamic))
    assert sniff_format(clean) == sniff_format(dynamic) == "torch-export"


@pytest.mark.parametrize("term", [
    "Symbol('s77', positive=True, integer=True)",
    "Add(Mod(Symbol('s77', positive=True, integer=True), Integer(7)), Integer(-3))",
    "FloorDiv(Max(Symbol('s0', integer=True), Integer(2)), Integer(4))",
    "Float('1.5e-3', precision=53)",
])
def test_plain_shape_terms_pass(term: str) -> None:
    _check_sympy_term(term, "graph")


@pytest.mark.parametrize("term", [
    "Integer(len(Symbol('s0')))",  # a builtin by name
    "Symbol.__init__",  # attribute access
    "sympify(Symbol('s0'))",  # a sympy function that evaluates strings
    "Symbol('s0')[0]",
    "Symbol('s0') if True else Integer(0)",
    "Integer(2); Integer(3)",
    "Integer(2, evaluate=exec)",
])
def test_other_shape_terms_are_refused(term: str) -> None:
    with pytest.raises(UnsafeArchive):
        _check_sympy_term(term, "graph")


@pytest.mark.parametrize("target,allowed", [
    ("torch.ops.aten.conv2d.default", True), ("torch.ops.higher_order.cond", True), ("_operator.getitem", True),
    ("math.floor", True), ("torch.load", False), ("torch.os.system", False), ("_operator.methodcaller", False),
    ("torch.ops.aten.__class__.__init__", False), ("builtins.exec", False), (7, False),
])
def test_graph_targets_must_be_operators(target: object, allowed: bool) -> None:
    assert _is_operator(target) is allowed
