"""Fixtures: a real PostgreSQL cluster (session), fresh databases, real registry servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.registry.db.engine import create_db_engine
from modelyard.registry.db.migrate import upgrade
from modelyard.registry.settings import RegistrySettings
from modelyard.registry.store import RegistryStore
from tests.support.charts import MODELYARD, with_images
from tests.helpers import eventually
from tests.support.kube import KubeApiServer, cached_binary_exists, crd_established, unique_namespace
from tests.support.node import Image, Node, build_images
from tests.support.postgres import PostgresCluster, find_pg_bin
from tests.support.servers import ThreadedRegistry


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """Start PostgreSQL once for the session.  Missing PostgreSQL fails the suite
    (it never silently skips): run the README's test command, which installs it."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail("PostgreSQL server binaries not found: install Debian's 'postgresql' package "
                    "(`make test` does) or set MODELYARD_PG_BIN")
    cluster = PostgresCluster(bin_dir)
    cluster.init()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_cluster").create_database()


@pytest.fixture
def store(db_url: str) -> Iterator[RegistryStore]:
    engine = create_db_engine(db_url, pool_size=70)
    upgrade(engine)
    yield RegistryStore(engine)
    engine.dispose()


@pytest.fixture
def registry_settings(db_url: str, tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(db_url=db_url, artifacts_url=str(tmp_path / "artifacts"), migrate_on_start=True)


@pytest.fixture
def registry(registry_settings: RegistrySettings) -> Iterator[ThreadedRegistry]:
    """A real registry over HTTP on 127.0.0.1, on each database backend."""
    with ThreadedRegistry(registry_settings) as server:
        yield server


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[ThreadedRegistry]:
    """A real registry on the embedded defaults only (tests of HTTP behaviour, not of the database)."""
    settings = RegistrySettings(db_url=f"sqlite:///{tmp_path / 'registry.db'}",
                                artifacts_url=str(tmp_path / "artifacts"), migrate_on_start=True)
    with ThreadedRegistry(settings) as server:
        yield server


def _kube_apiserver(tmp_path_factory: pytest.TempPathFactory, *, rbac: bool) -> Iterator[KubeApiServer]:
    if not cached_binary_exists():
        pytest.fail("no kube-apiserver built: run `bash tests/cluster/kube-apiserver.sh build` "
                    "(`make test` does; about 5 minutes once per machine)")
    server = KubeApiServer(tmp_path_factory.mktemp("rbac-apiserver" if rbac else "apiserver"), rbac=rbac)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    """A real kube-apiserver + etcd (authorization AlwaysAllow) for the session.  It fails,
    never skips, when the server cannot be started: the README's test command builds it."""
    yield from _kube_apiserver(tmp_path_factory, rbac=False)


@pytest.fixture(scope="session")
def kube_rbac(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    """A second real API server with ``--authorization-mode RBAC``."""
    yield from _kube_apiserver(tmp_path_factory, rbac=True)


@pytest.fixture(scope="session")
def modelyard_release(kube: KubeApiServer) -> dict:
    """charts/modelyard installed once (release "modelyard" in namespace "modelyard"): the CRDs."""
    release = kube.helm("modelyard").install(MODELYARD, "modelyard", with_images(), namespace="modelyard",
                                             create_namespace=True)
    with kube.api() as api:
        eventually(lambda: crd_established(api), what="CRD Established")
    return release


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A real one-node cluster (control plane, kubelet on containerd, kube-proxy, DNS) for the
    session.  It fails, never skips, when it cannot start: the README's test command builds it."""
    if not cached_binary_exists():  # one build makes the apiserver and the node's binaries
        pytest.fail("no node binaries built: run `bash tests/cluster/node.sh build` (`make test` does)")
    cluster = Node(tmp_path_factory.mktemp("node"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def node_images(node: Node) -> dict[str, Image]:
    """Both product images, built (or taken from the cache by input hash) and loaded into the node."""
    images = build_images()
    node.load(*images.values())
    return images


@pytest.fixture
def namespace(kube: KubeApiServer) -> str:
    """A fresh namespace on the session's API server."""
    with kube.api() as api:
        return unique_namespace(api)


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ.setdefault("MODELYARD_HOME", str(Path(session.config.rootpath) / ".pytest_cache" / "modelyard-home"))
