"""One contract for the store and the client (``registry/operations.py``), and the store's own by concern
(``registry/store/contracts.py``): mypy proves both satisfy theirs, and the same calls give the same
answers and the same typed errors on both."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import BadRequest, Conflict, Invalid, NotFound
from modelyard.registry.operations import RegistryOperations
from tests.support.servers import ThreadedRegistry

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_proves_the_packages_and_their_contracts(tmp_path: Path) -> None:
    """mypy checks the three packages with the project's configuration (``pyproject.toml``: strict for the
    operator's pure core, the registry's kernel and the pod's contract), and so the assignments at the
    bottom of ``operations.py``, ``store/contracts.py`` and ``llm/engine_client.py``: the store and the
    client satisfy their contracts, the engine its interface.  mypy resolves ``modelyard.*`` through a
    tree of links (it cannot follow the editable install's import hook)."""
    package = tmp_path / "modelyard"
    package.mkdir()
    for folder in ("registry", "bentos", "operator", "cli"):
        (package / folder).symlink_to(ROOT / folder)
    answer = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental",
         "-p", "modelyard.registry", "-p", "modelyard.bentos", "-p", "modelyard.operator"],
        cwd=tmp_path, env={"MYPYPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=300)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "Success: no issues found" in answer.stdout


def test_every_public_store_method_belongs_to_a_documented_contract() -> None:
    """A method added to the store without a place in a contract fails here: its concern says where."""
    import inspect

    from modelyard.registry.store import RegistryStore
    from modelyard.registry.store.contracts import STORE_CONTRACTS

    contracts = (RegistryOperations, *STORE_CONTRACTS)
    covered = {name for contract in contracts for name in vars(contract) if not name.startswith("_")}
    public = {name for name, _ in inspect.getmembers(RegistryStore, inspect.isfunction) if not name.startswith("_")}
    assert public - covered == set(), f"public RegistryStore methods under no contract: {sorted(public - covered)}"
    for contract in contracts:
        for name, member in vars(contract).items():
            if not name.startswith("_") and inspect.isfunction(member):
                assert member.__doc__, f"{contract.__name__}.{name} has no docstring"


@pytest.fixture(params=["store", "client"])
def registry(request: pytest.FixtureRequest, sqlite_registry: ThreadedRegistry) -> Iterator[RegistryOperations]:
    """The same registry, through the store in process or through the client over HTTP."""
    if request.param == "store":
        yield sqlite_registry.store
        return
    with RegistryClient(sqlite_registry.url, "") as client:
        yield client


def test_the_same_calls_give_the_same_answers(registry: RegistryOperations, sqlite_registry: ThreadedRegistry) -> None:
    model = registry.create_model("contract", description="d", tags={"team": "a"})
    assert (model.name, model.description, model.tags, model.latest_version) == ("contract", "d", {"team": "a"}, None)
    with pytest.raises(Conflict):
        registry.create_model("contract")
    with pytest.raises(Invalid):
        registry.create_model("no spaces allowed")
    assert registry.update_model("contract", tags={"team": "b"}).tags == {"team": "b"}
    assert registry.get_model("contract").description == "d"  # only what was given changed

    versions = [registry.create_version("contract", format="torchscript", metrics={"accuracy": 0.5 + i / 10},
                                        tags={"stage": "x" if i else "y"}) for i in range(3)]
    assert [v.version for v in versions] == [1, 2, 3] and {v.status.value for v in versions} == {"pending"}
    with pytest.raises(NotFound):
        registry.create_version("missing")
    with pytest.raises(Invalid):
        registry.create_version("contract", format="pickle")
    updated = registry.update_version("contract", 2, metrics={"accuracy": 0.9})
    assert updated.metrics == {"accuracy": 0.9} and updated.tags == {"stage": "x"}

    first = registry.list_versions("contract", order="desc", limit=2)
    assert [v.version for v in first.items] == [3, 2] and first.next_cursor
    rest = registry.list_versions("contract", order="desc", limit=2, cursor=first.next_cursor)
    assert [v.version for v in rest.items] == [1] and rest.next_cursor is None
    assert [v.version for v in registry.list_versions("contract", tags={"stage": "x"}).items] == [2, 3]
    with pytest.raises(BadRequest):
        registry.list_versions("contract", cursor="not-a-cursor")
    assert [m.name for m in registry.list_models(prefix="contr").items] == ["contract"]
    assert registry.list_models(tags={"team": "a"}).items == []

    with pytest.raises(Conflict):  # pending: nothing uploaded
        registry.set_alias("contract", "production", 1)
    sqlite_registry.store.mark_ready("contract", 1, "sha256:" + hashlib.sha256(b"x").hexdigest(), 1)
    alias = registry.set_alias("contract", "production", 1)
    assert (alias.version, registry.get_alias("contract", "production").version) == (1, 1)
    assert registry.list_models(alias="production").items[0].aliases == {"production": 1}
    with pytest.raises(Conflict):
        registry.delete_version("contract", 1)
    with pytest.raises(Conflict):
        registry.delete_model("contract")
    registry.delete_alias("contract", "production")
    with pytest.raises(NotFound):
        registry.get_alias("contract", "production")
    registry.delete_version("contract", 3)
    with pytest.raises(NotFound):
        registry.get_version("contract", 3)
    registry.delete_model("contract")
    with pytest.raises(NotFound):
        registry.get_model("contract")
