"""The install layout: folders map to modelyard.*, nothing shadows the standard library."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"registry": "modelyard.registry", "bentos": "modelyard.bentos", "operator": "modelyard.operator"}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


def test_operator_does_not_shadow_the_standard_library() -> None:
    code = ("import operator, modelyard.operator; assert operator.add(2, 3) == 5; "
            "assert 'site-packages' not in operator.__file__ and 'lib/python' in operator.__file__; "
            "print(modelyard.operator.__name__)")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert answer.stdout.strip() == "modelyard.operator"


def test_registry_core_does_not_import_heavy_extras() -> None:
    code = ("import sys, modelyard.registry.server.app, modelyard.registry.client; "
            "heavy = [m for m in ('torch', 'boto3', 'bentoml', 'kopf') if m in sys.modules]; print(heavy)")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"
