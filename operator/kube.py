"""The operator's Kubernetes I/O beside kopf's own: reading and patching ModelDeployments,
listing a release's Deployments, trigger annotations, Events and the pull-token Secret.

Synchronous (the official client); the reconciler calls it on threads.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from modelyard.operator.rollout import PodFailure, pod_failure
from modelyard.operator.status import to_time

GROUP, VERSION, PLURAL, KIND = "modelyard.io", "v1alpha1", "modeldeployments", "ModelDeployment"
TRIGGER_ANNOTATION = "modelyard.io/registry-event"
"""Written by the event follower; the change is what wakes the resource's update handler."""
RELEASE_SELECTOR = "app.kubernetes.io/part-of=modelyard,app.kubernetes.io/component=model-server"
TRACK_LABEL = "modelyard.io/track"


@dataclass(frozen=True)
class PodTarget:
    """A model pod the canary analysis reads."""

    name: str
    track: str
    ip: str
    port: int

    @property
    def metrics_url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}/metrics"


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client of our own: from a kubeconfig file, or the pod's service account."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def without_empty(value: Any, in_list: bool = False) -> Any:
    """Drop "" everywhere, and None inside lists (conditions, history).

    The client sends an empty string as null.  The API server keeps such a null when it
    creates the enclosing object from the patch, and inside a list a null is never "delete
    this field": either way the CRD schema refuses it.  A None outside lists stays: in a
    merge patch it deletes the field.
    """
    if isinstance(value, dict):
        return {k: without_empty(v, in_list) for k, v in value.items()
                if not (v == "" or (in_list and v is None))}
    if isinstance(value, list):
        return [without_empty(v, True) for v in value]
    return value


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch ``status`` (lists are replaced whole; a None value deletes a field)."""
        try:
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                              {"status": without_empty(status)})
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def trigger(self, namespace: str, name: str, token: str) -> None:
        try:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                       {"metadata": {"annotations": {TRIGGER_ANNOTATION: token}}})
        except ApiException as error:
            if error.status != 404:
                raise

    def release_deployments(self, namespace: str, release: str) -> list[dict[str, Any]]:
        answer = self.apps.list_namespaced_deployment(
            namespace, label_selector=f"{RELEASE_SELECTOR},app.kubernetes.io/instance={release}")
        return [self.api.sanitize_for_serialization(d) for d in answer.items]

    def release_pods(self, namespace: str, release: str) -> list[PodTarget]:
        """The release's running pods with an address: where the canary analysis reads ``/metrics``."""
        answer = self.core.list_namespaced_pod(
            namespace, label_selector=f"{RELEASE_SELECTOR},app.kubernetes.io/instance={release}")
        found = []
        for pod in answer.items:
            if pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            ports = [port for container in pod.spec.containers for port in container.ports or []]
            port = next((p.container_port for p in ports if p.name == "http"), ports[0].container_port if ports else None)
            if port is not None:
                found.append(PodTarget(pod.metadata.name, (pod.metadata.labels or {}).get(TRACK_LABEL, "stable"),
                                       pod.status.pod_ip, int(port)))
        return found

    def release_pod_failures(self, namespace: str, release: str) -> list[PodFailure]:
        """The release's pods whose model server (or its init container) said it cannot serve (the container's
        termination message, now or from its last run: a crash-looping pod is waiting to restart)."""
        answer = self.core.list_namespaced_pod(
            namespace, label_selector=f"{RELEASE_SELECTOR},app.kubernetes.io/instance={release}")
        found = []
        for pod in answer.items:
            # The init container too: it fetches and verifies the version (a refused signature ends there).
            for container in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
                for state in (container.state, container.last_state):
                    terminated = state.terminated if state is not None else None
                    failure = pod_failure(pod.metadata.name, pod.metadata.labels or {},
                                          terminated.message if terminated is not None else None)
                    if failure is not None:
                        found.append(failure)
                        break
        return found

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw else None

    def ensure_secret(self, namespace: str, name: str, key: str, value: str) -> bool:
        """Create the pull-token Secret if missing (an existing one is the user's: left alone)."""
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name, labels={
            "app.kubernetes.io/managed-by": "modelyard-operator"}), string_data={key: value})
        try:
            self.core.create_namespaced_secret(namespace, body)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    def event(self, md: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the resource, so `kubectl describe md` tells the rollout's story."""
        meta = md["metadata"]
        now = to_time(time.time())
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion")),
            reason=reason, message=message[:1024], type=type_, count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="modelyard-operator"), reporting_component="modelyard-operator")
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException:
            pass  # an Event is best effort: never fail a rollout over it
