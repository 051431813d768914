"""Artifact kinds are told apart from real torch files; pickles are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from modelyard.registry.model.formats import UnsupportedArtifact, sniff_format
from modelyard.registry.model.signature import parse_shape, signature_metadata


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())


def test_torch_export_archive(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), str(path))
    assert sniff_format(path) == "torch-export"


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    assert sniff_format(path) == "torchscript"


@pytest.mark.parametrize("what", ["module", "state_dict"])
def test_torch_save_pickles_are_refused(model: torch.nn.Module, tmp_path: Path, what: str) -> None:
    path = tmp_path / "m.pt"
    torch.save(model if what == "module" else model.state_dict(), path)
    with pytest.raises(UnsupportedArtifact, match="pickle.*torch.export"):
        sniff_format(path)


def test_bento_archive_and_other_files(tmp_path: Path) -> None:
    bento = tmp_path / "svc.bento"
    with tarfile.open(bento, "w") as archive:
        data = b"service: 'service:Svc'\n"
        info = tarfile.TarInfo("bento.yaml")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    assert sniff_format(bento) == "bento"
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(UnsupportedArtifact, match="not a supported model artifact"):
        sniff_format(other)


def test_signature_metadata() -> None:
    assert parse_shape("-1, 3, 224, 224") == [-1, 3, 224, 224]
    for bad in ["1,8", "-1", "-1,0", "a,b"]:
        with pytest.raises(ValueError):
            parse_shape(bad)
    assert signature_metadata("-1,8", "int64", ["x", "y"]) == {
        "input": {"shape": [-1, 8], "dtype": "int64"}, "output": {"kind": "logits", "labels": ["x", "y"]}}
    assert signature_metadata(None, None, None) == {}
    with pytest.raises(ValueError, match="dtype"):
        signature_metadata("-1,8", "complex", None)
