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


# -- layers inside each package ------------------------------------------------------------------
#
# A package's rooms (a module, or a folder, right under it), top to bottom.  A room may import rooms
# of its own layer and the layers below, never one above; in a layer marked independent, rooms do not
# import each other either (the servers of ``bentos`` share the pod's contract, not each other).
# README.md's layout table shows the same layers.

LAYERS: dict[str, list[tuple[set[str], bool]]] = {
    "registry": [
        ({"cli", "app"}, False),  # the commands, and the application assembled from server and UI
        ({"ui"}, False),  # the web UI, built on the server's pieces
        ({"server"}, False),  # the REST API
        ({"operations", "garbage"}, False),  # the shared contract (store and client), the blob sweep
        ({"store", "client", "artifacts", "settings"}, True),  # the service's parts, each on its own
        ({"db", "alias_rules", "signing"}, False),  # tables and migrations; alias rules; signing and verifying
        ({"model"}, False),  # what a model file is and whether it is safe
        ({"kernel"}, False),  # defaults, names, errors, schemas: what everything shares
    ],
    "bentos": [
        ({"cli", "quickstart"}, False),
        ({"runtime", "packager"}, False),  # fetch, verify and start a server; build Bentos
        ({"provenance"}, False),  # the pod's signature check, with its own trust roots
        ({"vllm"}, False),  # vLLM as an engine: its command line, and the guard in its process (our server's parts)
        ({"tensor", "llm", "examples"}, True),  # the servers: never the runtime, never each other
        ({"oip"}, False),  # the Open Inference Protocol (REST and gRPC) the servers speak
        ({"pod"}, False),  # the pod's file contract, failure reporting, limits, the shared batcher
    ],
    "operator": [
        ({"main", "cli"}, False),
        ({"handlers"}, False),  # kopf, thin
        ({"reconciler"}, False),  # I/O around the pure core: read, transition, Helm, one status patch
        ({"follower", "kube", "helm_driver", "reporting", "config", "metrics", "scrape"}, False),
        ({"transitions", "canary_report"}, False),  # the state machine; what a verdict tells the registry (pure)
        ({"rollout", "resolve", "analysis"}, False),  # rollout decisions, canary analysis (pure)
        ({"values", "conditions"}, False),
        ({"spec"}, False),
        ({"status"}, False),
    ],
}
REGISTRY_ROOMS_FOR = {
    # what the pod's servers may load of the registry: no client, no store, no server
    "bentos": {"tensor": {"kernel", "model"}, "llm": {"kernel", "model"}, "pod": {"kernel", "model"},
               "examples": {"kernel", "model"}, "vllm": {"kernel", "model"}, "oip": {"kernel", "model"}},
}


def room_of(folder: str, path: Path) -> str:
    return path.relative_to(ROOT / folder).parts[0].removesuffix(".py")


def imported_rooms(folder: str, package: str) -> dict[str, set[tuple[str, str]]]:
    """Room → (file, room of ``modelyard.<package>`` it imports), from every import statement."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        source = room_of(folder, path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["modelyard", package] and len(parts) > 2:
                    target = parts[2]
                    if (ROOT / package / target).is_dir() or (ROOT / package / f"{target}.py").exists():
                        found.setdefault(source, set()).add((str(path.relative_to(ROOT)), target))
    return found


def layer_violations(folder: str) -> list[str]:
    layers = LAYERS[folder]
    index = {room: level for level, (rooms, _) in enumerate(layers) for room in rooms}
    wrong = []
    for source, targets in imported_rooms(folder, folder).items():
        for file, target in sorted(targets):
            if target == source:
                continue
            if source not in index or target not in index:
                wrong.append(f"{file}: {source} or {target} has no layer in LAYERS[{folder!r}]")
            elif index[target] < index[source]:
                wrong.append(f"{file}: {source} imports {target}, a layer above it")
            elif index[target] == index[source] and layers[index[source]][1]:
                wrong.append(f"{file}: {source} imports {target}; rooms of that layer stay independent")
    return wrong


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_no_room_imports_a_layer_above_it(folder: str) -> None:
    rooms = {room_of(folder, path) for path in (ROOT / folder).rglob("*.py")} - {"__init__", "__main__"}
    placed = {room for layer, _ in LAYERS[folder] for room in layer}
    assert rooms <= placed, f"rooms of {folder}/ with no layer: {sorted(rooms - placed)}"
    assert not layer_violations(folder), "\n".join(layer_violations(folder))


@pytest.mark.parametrize("folder", sorted(REGISTRY_ROOMS_FOR))
def test_the_servers_load_only_the_registrys_kernel_and_model_rooms(folder: str) -> None:
    allowed = REGISTRY_ROOMS_FOR[folder]
    wrong = [f"{file}: {source} imports registry.{target}"
             for source, targets in imported_rooms(folder, "registry").items() if source in allowed
             for file, target in sorted(targets) if target not in allowed[source]]
    assert not wrong, "\n".join(wrong)


def test_an_upward_import_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: a spec module that imports the reconciler is reported."""
    fake = tmp_path / "operator"
    fake.mkdir()
    (fake / "spec.py").write_text("from modelyard.operator.reconciler import Reconciler\n")
    (fake / "reconciler.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert layer_violations("operator") == ["operator/spec.py: spec imports reconciler, a layer above it"]
