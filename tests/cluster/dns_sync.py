"""Keep the test node's DNS in step with its Services (Debian packages no CoreDNS).

Watches every Service and writes ``<cluster IP> <name>.<namespace>.svc.cluster.local``
lines to a hosts file that dnsmasq reads from its ``--hostsdir`` (it notices the
rename at once).  Pods resolve ``modelyard-registry.modelyard`` through their search
path, as on any cluster.

    python dns_sync.py KUBECONFIG HOSTS_FILE
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kubernetes import client, config, watch


def write(hosts: Path, services: dict[tuple[str, str], str]) -> None:
    lines = sorted(f"{ip} {name}.{namespace}.svc.cluster.local" for (namespace, name), ip in services.items())
    staging = hosts.with_suffix(".tmp")
    staging.write_text("\n".join(lines) + "\n")
    os.replace(staging, hosts)


def main(kubeconfig: str, hosts_file: str) -> None:
    config.load_kube_config(kubeconfig)
    api = client.CoreV1Api()
    hosts = Path(hosts_file)
    hosts.parent.mkdir(parents=True, exist_ok=True)
    while True:  # ends when node.sh stops it by PID
        services: dict[tuple[str, str], str] = {}
        try:
            listing = api.list_service_for_all_namespaces()
            for item in listing.items:
                if item.spec.cluster_ip and item.spec.cluster_ip != "None":
                    services[(item.metadata.namespace, item.metadata.name)] = item.spec.cluster_ip
            write(hosts, services)
            for event in watch.Watch().stream(api.list_service_for_all_namespaces, timeout_seconds=300,
                                              resource_version=listing.metadata.resource_version):
                item, key = event["object"], (event["object"].metadata.namespace, event["object"].metadata.name)
                if event["type"] == "DELETED" or not item.spec.cluster_ip or item.spec.cluster_ip == "None":
                    services.pop(key, None)
                else:
                    services[key] = item.spec.cluster_ip
                write(hosts, services)
        except Exception as exc:  # noqa: BLE001 - the apiserver restarting must not end the DNS
            print(f"dns_sync: {exc}; listing again", file=sys.stderr, flush=True)
            time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
