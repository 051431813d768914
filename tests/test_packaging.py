"""The install layout: folders map to modelyard.*, nothing shadows the standard library."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"registry": "modelyard.registry", "bentos": "modelyard.bentos", "operator": "modelyard.operator",
           "cli": "modelyard.cli"}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """Code folders (with an ``__init__.py``) and data folders (listed with their files under
    ``package-data``, which keeps setuptools from warning about each) alike."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set(FOLDERS.values())  # the roots, with or without __init__.py
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    data = {name for name in setuptools["package-data"] if name not in found}
    for name in data:
        root = next(f for f, p in FOLDERS.items() if name.startswith(p))
        assert (ROOT / root / Path(*name.split(".")[2:])).is_dir(), f"{name} lists data of a missing folder"
    assert found | data == listed


def test_the_operator_folder_is_never_a_regular_package() -> None:
    """With an __init__.py, `operator/` would shadow the standard library whenever the
    repository root is on sys.path (as with any `python -m …` run from it)."""
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_operator_does_not_shadow_the_standard_library() -> None:
    code = ("import sys, operator, collections, modelyard.operator.conditions; "
            "assert operator.add(2, 3) == 5 and not operator.__file__.startswith(sys.argv[1]), operator.__file__; "
            "print(modelyard.operator.conditions.__name__)")
    for cwd in ("/", str(ROOT)):  # from ROOT, '' (the repository root) comes first on sys.path
        answer = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=cwd)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == "modelyard.operator.conditions"
    # What broke `make` when operator/ had an __init__.py: a fresh venv's `python -m pip`
    # run from the repository root, before any .pth file had imported collections (-S).
    base = getattr(sys, "_base_executable", sys.executable)
    bare = subprocess.run([base, "-S", "-m", "json.tool", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 0, bare.stderr


def test_registry_core_does_not_import_heavy_extras() -> None:
    code = ("import sys, modelyard.registry.app, modelyard.registry.client; "
            "heavy = [m for m in ('torch', 'boto3', 'bentoml', 'kopf') if m in sys.modules]; print(heavy)")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"


def test_the_runtime_image_carries_the_projects_torch() -> None:
    """Programs are exported with the project's torch; the model pods must load them with the same one."""
    import re

    makefile_pin = re.search(r"pip install -q (torch==[\d.]+)", (ROOT / "Makefile").read_text())
    image_pin = re.search(r"^ARG TORCH=(\S+)$", (ROOT / "docker" / "runtime.Dockerfile").read_text(), re.M)
    assert makefile_pin and image_pin
    assert image_pin.group(1) == makefile_pin.group(1)


def test_both_images_take_a_base_and_default_to_python_3_11() -> None:
    for dockerfile in ("runtime.Dockerfile", "modelyard.Dockerfile"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert "ARG BASE=python:3.11-slim\nFROM ${BASE}\n" in text, dockerfile


def test_the_images_carry_every_package() -> None:
    """An image without a package folder installs a `modelyard` whose entry point cannot import."""
    import re

    images = (ROOT / "tests" / "cluster" / "images.sh").read_text()
    hashed = re.search(r'find "\$1" ([^\n]*) -type f', images)
    assert hashed, "images.sh: the input hash's find line moved"
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile.read_text(), re.M))
        assert set(FOLDERS) <= copied, f"{dockerfile.name} does not copy {sorted(set(FOLDERS) - copied)}"
    assert set(FOLDERS) <= set(hashed.group(1).split()), "images.sh does not hash every package folder"
