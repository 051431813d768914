"""``modelyard local-cluster``: which tools it picks, what it runs with them, and what it says when one is
missing.  Its cluster steps (the chart installed with images built here) are the node end-to-end test's
(``tests/support/platform.install`` installs with the same ``chart_values``)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard.cli.local_cluster import (
    CLUSTER_NAME, MissingTool, Tools, build_commands, chart_values, cluster_of_context, create_command, detect,
    load_commands,
)

ROOT = Path(__file__).resolve().parents[1]


def installed(*tools: str) -> Callable[[str], str | None]:
    return lambda tool: f"/usr/bin/{tool}" if tool in tools else None


@pytest.mark.parametrize("context, profiles, expected", [
    ("kind-dev", (), ("kind", "dev")),
    ("k3d-team-a", (), ("k3d", "team-a")),
    ("minikube", (), ("minikube", "minikube")),
    ("ml-lab", ("ml-lab",), ("minikube", "ml-lab")),
    ("gke_project_zone_prod", (), None),
    ("kind-", (), None),
    (None, (), None),
])
def test_a_kubectl_context_names_its_local_cluster(context: str | None, profiles: tuple[str, ...],
                                                  expected: tuple[str, str] | None) -> None:
    assert cluster_of_context(context, profiles) == expected


def test_the_current_local_cluster_is_used_and_otherwise_one_is_made() -> None:
    assert detect(installed("kubectl", "docker", "kind"), "kind-dev") == Tools("docker", "kind", "dev", create=False)
    assert detect(installed("kubectl", "podman", "kind", "minikube"), "minikube") == Tools(
        "podman", "minikube", "minikube", create=False)
    # a context that is no local cluster (a cloud one) is left alone: a new one is made with the first tool
    assert detect(installed("kubectl", "docker", "minikube", "k3d"), "gke_p_z_prod") == Tools(
        "docker", "minikube", CLUSTER_NAME, create=True)
    # the context's tool is not installed here: the same
    assert detect(installed("kubectl", "docker", "k3d"), "kind-dev") == Tools("docker", "k3d", CLUSTER_NAME, True)
    assert detect(installed("kubectl", "docker", "podman", "kind"), None, container="podman").container == "podman"


@pytest.mark.parametrize("tools, context, container, complaint", [
    (("docker", "kind"), "kind-dev", None, "kubectl is not installed: https://kubernetes.io/docs/tasks/tools/"),
    (("kubectl", "kind"), "kind-dev", None, "neither docker nor podman is installed"),
    (("kubectl", "docker"), None, None, "no local cluster tool is installed: install one of kind "
                                        "(https://kind.sigs.k8s.io"),
    (("kubectl", "podman", "k3d"), "k3d-dev", None, "k3d runs its clusters in docker"),
    (("kubectl", "docker", "kind"), None, "podman", "MODELYARD_CONTAINER_TOOL=podman is not installed"),
    (("kubectl", "docker", "kind"), None, "buildah", "use docker or podman"),
])
def test_a_missing_tool_is_named_with_where_to_get_it(tools: tuple[str, ...], context: str | None,
                                                     container: str | None, complaint: str) -> None:
    with pytest.raises(MissingTool) as missing:
        detect(installed(*tools), context, container=container)
    assert complaint in str(missing.value)


def test_the_steps_for_each_tool(tmp_path: Path) -> None:
    assert build_commands("podman") == [
        ["podman", "build", "-f", "docker/modelyard.Dockerfile", "-t", "modelyard:dev", "."],
        ["podman", "build", "-f", "docker/runtime.Dockerfile", "-t", "modelyard-runtime:dev", "."]]
    assert all((ROOT / command[3]).is_file() for command in build_commands("docker"))
    assert create_command(Tools("docker", "k3d", "modelyard", True)) == ["k3d", "cluster", "create", "modelyard"]
    assert load_commands(Tools("docker", "kind", "dev", False), tmp_path) == [
        ["kind", "load", "docker-image", "modelyard:dev", "--name", "dev"],
        ["kind", "load", "docker-image", "modelyard-runtime:dev", "--name", "dev"]]
    assert load_commands(Tools("podman", "kind", "dev", False), tmp_path)[:2] == [
        ["podman", "save", "-o", str(tmp_path / "modelyard.tar"), "modelyard:dev"],
        ["kind", "load", "image-archive", str(tmp_path / "modelyard.tar"), "--name", "dev"]]
    assert load_commands(Tools("podman", "minikube", "lab", False), tmp_path)[1] == [
        "minikube", "-p", "lab", "image", "load", str(tmp_path / "modelyard.tar")]
    assert load_commands(Tools("docker", "k3d", "dev", False), tmp_path)[1] == [
        "k3d", "image", "import", "modelyard-runtime:dev", "-c", "dev"]


def test_chart_values_name_both_images_and_keep_the_rest() -> None:
    values = chart_values(("modelyard", "dev"), ("modelyard-runtime", "dev"),
                          operator={"logFormat": "plain"}, registry={"replicas": 1})
    assert values == {"image": {"repository": "modelyard", "tag": "dev", "pullPolicy": "IfNotPresent"},
                      "operator": {"runtimeImage": {"repository": "modelyard-runtime", "tag": "dev"},
                                   "logFormat": "plain"},
                      "registry": {"replicas": 1}}


def executable(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_command_says_what_is_missing_and_exits_non_zero(tmp_path: Path) -> None:
    """The real command, on a PATH that has kubectl (answering no context) and docker, and no cluster tool."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir, "kubectl", "exit 1")
    executable(bin_dir, "docker", "exit 0")
    answer = subprocess.run([sys.executable, "-m", "modelyard.cli", "local-cluster"], capture_output=True, text=True,
                            env={**os.environ, "PATH": str(bin_dir), "COLUMNS": "300"}, timeout=120)
    assert answer.returncode == 1, answer.stdout + answer.stderr
    said = " ".join(answer.stderr.split())
    assert "error: no local cluster tool is installed: install one of kind" in said and "minikube" in said
    assert "Traceback" not in answer.stderr


def test_node_sh_runs_its_dns_sync_with_the_projects_virtualenv_or_says_what_it_needs(tmp_path: Path) -> None:
    node_sh = ROOT / "tests" / "cluster" / "node.sh"
    venv = subprocess.run(["bash", str(node_sh), "python"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHON"})
    assert venv.returncode == 0 and Path(venv.stdout.strip()).resolve() == Path(sys.executable).resolve(), venv
    # a copy away from the checkout (no .venv beside it) on a PATH whose python3 lacks the client
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "node.sh").write_text(node_sh.read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir, "python3", "exit 1")
    lost = subprocess.run(["/bin/bash", str(tmp_path / "cluster" / "node.sh"), "python"], capture_output=True,
                          text=True, timeout=60, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": "/bin/false",
                                                      "HOME": str(tmp_path)})
    assert lost.returncode == 1
    assert "PYTHON=/bin/false cannot import kubernetes" in lost.stderr
    assert "no Python with the kubernetes client: run `make venv`" in lost.stderr
