"""``modelyard local-cluster`` (``make local-cluster``): from a checkout to a served prediction on a local
cluster, for a newcomer.

It finds the tools (kind, minikube or k3d; docker or podman; kubectl), builds the two images from this
repository (no Modelyard image is published), loads them into the cluster, installs ``charts/modelyard``
with them (Helm in process), trains and pushes the quickstart's model through a port-forward, applies
its ModelDeployment, waits for ``Ready`` and prints the commands that query it.

What to run is decided by pure functions (``detect``, ``build_commands``, ``load_commands``,
``chart_values``: unit-tested, and ``chart_values`` is also what the node end-to-end test installs
with); ``LocalCluster`` carries it out.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard.registry.cli.common import console, reported_errors
from modelyard.registry.kernel.defaults import Env

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_TOOLS = ("kind", "minikube", "k3d")
CONTAINER_TOOLS = ("docker", "podman")
CLUSTER_NAME = "modelyard"
SERVER_IMAGE = ("modelyard", "dev")
RUNTIME_IMAGE = ("modelyard-runtime", "dev")
NAMESPACE, MODELS_NAMESPACE = "modelyard", "ml"
INSTALL_HINTS = {
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "minikube": "https://minikube.sigs.k8s.io/docs/start/",
    "k3d": "https://k3d.io/#installation",
    "docker": "https://docs.docker.com/engine/install/",
    "podman": "https://podman.io/docs/installation",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
}


class MissingTool(RuntimeError):
    """A tool the steps need is not installed; the message names it and where to get it."""


@dataclass(frozen=True)
class Tools:
    container: str
    """docker or podman: builds the images."""
    cluster: str
    """kind, minikube or k3d."""
    name: str
    """The cluster's name (kind, k3d) or profile (minikube)."""
    create: bool
    """No cluster of the tool is the current context: make one named ``CLUSTER_NAME``."""


def cluster_of_context(context: str | None, profiles: Sequence[str] = ()) -> tuple[str, str] | None:
    """(tool, name) of a kubectl context each tool names its own way: ``kind-NAME``, ``k3d-NAME``, and a
    minikube profile's own name (``profiles``: minikube's profiles, when it is installed)."""
    if not context:
        return None
    for tool in ("kind", "k3d"):
        if context.startswith(f"{tool}-") and len(context) > len(tool) + 1:
            return tool, context[len(tool) + 1:]
    if context in profiles or context == "minikube":
        return "minikube", context
    return None


def detect(which: Callable[[str], str | None], context: str | None, *, profiles: Sequence[str] = (),
           container: str | None = None) -> Tools:
    """The tools to use: the cluster of kubectl's current context when it is a kind, minikube or k3d one,
    else a new cluster with the first of them installed; docker, else podman (``container`` picks).
    ``MissingTool`` names what is missing and where to get it."""
    if which("kubectl") is None:
        raise MissingTool(f"kubectl is not installed: {INSTALL_HINTS['kubectl']}")
    if container is not None:
        if container not in CONTAINER_TOOLS:
            raise MissingTool(f"{Env.CONTAINER_TOOL}={container!r}: use docker or podman")
        if which(container) is None:
            raise MissingTool(f"{Env.CONTAINER_TOOL}={container} is not installed: {INSTALL_HINTS[container]}")
        builder = container
    else:
        found = [tool for tool in CONTAINER_TOOLS if which(tool) is not None]
        if not found:
            raise MissingTool("neither docker nor podman is installed; the images are built with one of them: "
                              f"{INSTALL_HINTS['docker']} or {INSTALL_HINTS['podman']}")
        builder = found[0]
    current = cluster_of_context(context, profiles)
    if current is not None and which(current[0]) is not None:
        tool, name = current
        create = False
    else:
        installed = [tool for tool in CLUSTER_TOOLS if which(tool) is not None]
        if not installed:
            hints = ", ".join(f"{tool} ({INSTALL_HINTS[tool]})" for tool in CLUSTER_TOOLS)
            raise MissingTool(f"no local cluster tool is installed: install one of {hints}; or point kubectl at a "
                              "cluster one of them made")
        tool, name, create = installed[0], CLUSTER_NAME, True
    if tool == "k3d" and builder != "docker":
        raise MissingTool(f"k3d runs its clusters in docker: install docker ({INSTALL_HINTS['docker']})")
    return Tools(builder, tool, name, create)


def create_command(tools: Tools) -> list[str]:
    return {"kind": ["kind", "create", "cluster", "--name", tools.name],
            "minikube": ["minikube", "start", "-p", tools.name],
            "k3d": ["k3d", "cluster", "create", tools.name]}[tools.cluster]


def image_ref(image: tuple[str, str]) -> str:
    return f"{image[0]}:{image[1]}"


def build_commands(container: str) -> list[list[str]]:
    """Both images, from this repository (see docker/README.md)."""
    return [[container, "build", "-f", "docker/modelyard.Dockerfile", "-t", image_ref(SERVER_IMAGE), "."],
            [container, "build", "-f", "docker/runtime.Dockerfile", "-t", image_ref(RUNTIME_IMAGE), "."]]


def load_commands(tools: Tools, workdir: Path) -> list[list[str]]:
    """Put both images on the cluster's node(s): straight from docker, or from an archive podman saves."""
    commands: list[list[str]] = []
    for image in (SERVER_IMAGE, RUNTIME_IMAGE):
        ref = image_ref(image)
        if tools.container == "docker":
            source = ref
        else:
            source = str(workdir / f"{image[0]}.tar")
            commands.append(["podman", "save", "-o", source, ref])
        commands.append({
            "kind": ["kind", "load", "docker-image" if tools.container == "docker" else "image-archive", source,
                     "--name", tools.name],
            "minikube": ["minikube", "-p", tools.name, "image", "load", source],
            "k3d": ["k3d", "image", "import", source, "-c", tools.name],
        }[tools.cluster])
    return commands


def chart_values(server: tuple[str, str], runtime: tuple[str, str], *, pull_policy: str = "IfNotPresent",
                 **more: Any) -> dict[str, Any]:
    """charts/modelyard's values for images built here (the chart has no default image), merged with
    ``more`` (one level deep)."""
    values: dict[str, Any] = {
        "image": {"repository": server[0], "tag": server[1], "pullPolicy": pull_policy},
        "operator": {"runtimeImage": {"repository": runtime[0], "tag": runtime[1]}},
    }
    for key, value in more.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return values


class LocalCluster:
    """Carries out the steps, printing each; a failed one stops with its command's output."""

    def __init__(self, tools: Tools, *, run: Callable[[list[str]], None] | None = None) -> None:
        self.tools = tools
        self.run = run or self._run

    @staticmethod
    def _run(command: list[str]) -> None:
        console.print(f"[dim]$ {' '.join(command)}[/dim]", highlight=False)
        subprocess.run(command, cwd=ROOT, check=True)

    def prepare(self) -> None:
        if self.tools.create:
            self.run(create_command(self.tools))
        for command in build_commands(self.tools.container):
            self.run(command)
        with tempfile.TemporaryDirectory(prefix="modelyard-images-") as workdir:
            for command in load_commands(self.tools, Path(workdir)):
                self.run(command)

    def install(self) -> None:
        import helm_python as helm

        values = chart_values(SERVER_IMAGE, RUNTIME_IMAGE, pull_policy="IfNotPresent")
        config = helm.Config(kubeconfig_path=os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config"),
                             namespace=NAMESPACE)
        console.print("[dim]helm install modelyard charts/modelyard (in process) with the images built here[/dim]")
        config.install(str(ROOT / "charts" / "modelyard"), "modelyard", values, namespace=NAMESPACE,
                       create_namespace=True)
        for component in ("registry", "operator"):
            self.run(["kubectl", "-n", NAMESPACE, "rollout", "status", f"deploy/modelyard-{component}",
                      "--timeout=600s"])

    def deploy_the_quickstart_model(self, port: int) -> None:
        from modelyard.bentos import quickstart
        from modelyard.bentos.examples import digits
        from modelyard.registry.client import RegistryClient
        from modelyard.registry.kernel.processes.children import stop_process

        token = base64.b64decode(subprocess.run(
            ["kubectl", "-n", NAMESPACE, "get", "secret", "modelyard-tokens", "-o", "jsonpath={.data.admin-token}"],
            check=True, capture_output=True, text=True).stdout).decode()
        forward = subprocess.Popen(["kubectl", "-n", NAMESPACE, "port-forward", "svc/modelyard-registry",
                                    f"{port}:8080"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            trained = digits.train(epochs=15)
            with tempfile.TemporaryDirectory() as workdir, RegistryClient(f"http://127.0.0.1:{port}", token,
                                                                          retries=10) as registry:
                program = Path(workdir) / "digits-cnn.pt2"
                metadata = digits.export(trained.model, program)
                _wait_for(lambda: _answers(registry), "the registry through the port-forward", 60)
                registry.ensure_model(quickstart.MODEL)
                version = registry.create_version(quickstart.MODEL, format="torch-export", metadata=metadata,
                                                  metrics={"accuracy": round(trained.accuracy, 4)})
                registry.upload_artifact(quickstart.MODEL, version.version, program)
                registry.set_alias(quickstart.MODEL, "production", version.version)
                console.print(f"[green]✓[/green] pushed {quickstart.MODEL}:{version.version} and pointed production "
                              "at it", highlight=False)
        finally:
            stop_process(forward, timeout=10)
        manifest = quickstart.deployment_yaml(version.version).replace('replicas: 2', 'replicas: 1').replace(
            'cpu: "1"', "cpu: 250m")
        subprocess.run(["kubectl", "create", "namespace", MODELS_NAMESPACE], cwd=ROOT, capture_output=True)
        subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True, check=True, cwd=ROOT)
        self.run(["kubectl", "-n", MODELS_NAMESPACE, "wait", "md/digits", "--for=jsonpath={.status.phase}=Ready",
                  "--timeout=900s"])


def _answers(registry: Any) -> bool:
    try:
        registry.list_models(limit=1)
        return True
    except Exception:  # noqa: BLE001 - the port-forward is not up yet
        return False


def _wait_for(probe: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(1)


NEXT_STEPS = """
[green]✓[/green] digits-cnn@production is served on your cluster. Query it:

kubectl -n ml port-forward svc/digits 3000:3000 &
curl -s localhost:3000/v2/models/digits-cnn
curl -s localhost:3000/predict -H 'content-type: application/json' -d '{"inputs": [[[[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0]]]]}'

The registry: kubectl -n modelyard port-forward svc/modelyard-registry 8080:8080, with
MODELYARD_TOKEN=$(kubectl -n modelyard get secret modelyard-tokens -o jsonpath='{.data.admin-token}' | base64 -d)
"""


def minikube_profiles(which: Callable[[str], str | None]) -> list[str]:
    if which("minikube") is None:
        return []
    answer = subprocess.run(["minikube", "profile", "list", "-o", "json"], capture_output=True, text=True)
    try:
        import json

        return [p["Name"] for p in json.loads(answer.stdout).get("valid", [])]
    except (ValueError, KeyError, TypeError):
        return []


def current_context() -> str | None:
    if shutil.which("kubectl") is None:
        return None
    answer = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True)
    return answer.stdout.strip() or None if answer.returncode == 0 else None


def local_cluster(
    registry_port: Annotated[int, typer.Option(help="local port for the registry's port-forward")] = 18080,
) -> None:
    """Build the images, load them into a kind, minikube or k3d cluster (the current one, or a new one named
    "modelyard"), install the chart, push the quickstart's model and serve it; print how to query it."""
    with reported_errors():
        try:
            tools = detect(shutil.which, current_context(), profiles=minikube_profiles(shutil.which),
                           container=os.environ.get(Env.CONTAINER_TOOL) or None)
        except MissingTool as exc:
            raise ValueError(str(exc)) from None
        console.print(f"using {tools.cluster} cluster {tools.name!r}"
                      f"{' (creating it)' if tools.create else ' (kubectl current context)'}, images built with "
                      f"{tools.container}", highlight=False)
        cluster = LocalCluster(tools)
        try:
            cluster.prepare()
            cluster.install()
            cluster.deploy_the_quickstart_model(registry_port)
        except subprocess.CalledProcessError as exc:
            raise ValueError(f"`{' '.join(exc.cmd)}` failed with status {exc.returncode}") from None
        console.print(NEXT_STEPS, highlight=False, soft_wrap=True)
