"""Dependencies point one way: ``cli`` → ``operator``, ``bentos`` → ``registry``.

Two checks, because each misses what the other sees: every module of a package imported in a
fresh interpreter (what a user's process really loads), and every ``import`` statement in the
package's files, including those inside functions that a plain import never runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package folder → the packages of ours it may import (besides itself)
ALLOWED = {
    "registry": set(),
    "bentos": {"registry"},
    "operator": {"registry"},
    "cli": {"registry", "bentos", "operator"},
}
OURS = set(ALLOWED)
# Modules that do something when imported rather than define something: an entry point that runs
# a command, Alembic's migration environment, and the service module a Bento runs.
RUN_ON_IMPORT = ("__main__", "db.migrations", "examples.embedding")


def imported_packages(folder: str) -> dict[str, set[str]]:
    """Our packages each file of ``folder`` names in an import statement: file → packages."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "modelyard" and len(parts) > 1 and parts[1] in OURS:
                    found.setdefault(str(path.relative_to(ROOT)), set()).add(parts[1])
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_no_import_statement_points_upward(folder: str) -> None:
    upward = {file: sorted(packages - ALLOWED[folder] - {folder})
              for file, packages in imported_packages(folder).items() if packages - ALLOWED[folder] - {folder}}
    assert not upward, f"{folder}/ may import only {sorted(ALLOWED[folder]) or 'nothing'} of ours: {upward}"


def loaded_by_importing(package: str) -> list[str]:
    """Every module of ``modelyard.<package>`` imported in a fresh interpreter; our modules it loaded."""
    code = f"""
import importlib, json, pkgutil, sys
import modelyard.{package} as root
skip = {list(RUN_ON_IMPORT)!r}
for info in pkgutil.walk_packages(root.__path__, "modelyard.{package}."):
    if not any(part in info.name for part in skip) and not info.name.endswith((".service", "__main__")):
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("modelyard."))))
"""
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert answer.returncode == 0, answer.stderr[-3000:]
    return json.loads(answer.stdout)


@pytest.mark.parametrize("folder", ["registry", "bentos", "operator"])
def test_importing_a_package_loads_nothing_above_it(folder: str) -> None:
    loaded = loaded_by_importing(folder)
    assert any(m.startswith(f"modelyard.{folder}.") for m in loaded)  # the walk did import something
    above = [m for m in loaded if m.split(".")[1] not in ALLOWED[folder] | {folder}]
    assert not above, f"importing modelyard.{folder} loaded {above}"
