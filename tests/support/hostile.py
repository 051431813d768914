"""Real ``torch.export`` archives rewritten to run code when ``torch.export.load`` reads them.

Each one touches a marker file when loaded: a test that the registry or the model
server refuses it checks that the marker never appears, and ``loads_and_runs``
proves the archive really is hostile (torch runs it) so the refusal means something.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch


class _Touch:
    """Unpickling this opens (creates) ``path``: the smallest visible side effect."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def _pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Touch(marker), buffer)
    return buffer.getvalue()


def exported_archive(path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), str(path))
    return path


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """Copy the zip, replacing entries by their path below the archive's root (None drops one)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as rewritten:
        root = original.namelist()[0].split("/", 1)[0]
        for info in original.infolist():
            inner = info.filename.split("/", 1)[1]
            if inner in change:
                if change[inner] is not None:
                    rewritten.writestr(info.filename, change[inner])  # type: ignore[arg-type]
            else:
                rewritten.writestr(info, original.read(info))
        for inner, data in change.items():
            if data is not None and f"{root}/{inner}" not in original.namelist():
                rewritten.writestr(f"{root}/{inner}", data)
    return target


def pickled_weight(source: Path, target: Path, marker: Path) -> Path:
    """The first weight stored as a pickle (``use_pickle: true``), as torch does for tensor subclasses."""
    with zipfile.ZipFile(source) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return _rewrite(source, target, {"data/weights/model_weights_config.json": json.dumps(config).encode(),
                                     f"data/weights/{first['path_name']}": _pickled(marker)})


def pickled_sample_inputs(source: Path, target: Path, marker: Path) -> Path:
    """Sample inputs that torch's safe unpickler refuses, so torch retries with the unsafe one."""
    return _rewrite(source, target, {"data/sample_inputs/model.pt": _pickled(marker)})


def opaque_constant(source: Path, target: Path, marker: Path) -> Path:
    """A constant stored as an "opaque object", which torch unpickles with plain ``pickle.loads``."""
    import pickle

    config = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                               "tensor_meta": None}}}
    return _rewrite(source, target, {"data/constants/model_constants_config.json": json.dumps(config).encode(),
                                     "data/constants/opaque_obj_0": pickle.dumps(_Touch(marker))})


def evaluated_shape(source: Path, target: Path, marker: Path) -> Path:
    """A symbolic shape that ``sympy.sympify`` evaluates as Python."""
    with zipfile.ZipFile(source) as archive:
        graph_name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        graph = json.loads(archive.read(graph_name))
    sizes = next(iter(graph["graph_module"]["graph"]["tensor_values"].values()))["sizes"]
    sizes[0] = {"as_expr": {"expr_str": f"Integer(len(open({str(marker)!r}, 'w').name) * 0 + 2)",
                            "hint": {"as_int": 2}}}
    return _rewrite(source, target, {"models/model.json": json.dumps(graph).encode()})


def loads_and_runs(path: Path, marker: Path) -> bool:
    """Whether ``torch.export.load`` of ``path`` touches ``marker`` (it is removed again)."""
    try:
        torch.export.load(str(path))
    except Exception:  # noqa: BLE001 - the side effect happens before any failure
        pass
    touched = marker.exists()
    marker.unlink(missing_ok=True)
    return touched
