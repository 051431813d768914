"""The ``modelyard`` command line against a real registry server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import sha256
from tests.support.servers import ThreadedRegistry


def run(*args: str, registry: ThreadedRegistry | None = None, env: dict[str, str] | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if registry is not None:
        full_env["MODELYARD_REGISTRY_URL"] = registry.url
    answer = subprocess.run([sys.executable, "-m", "modelyard.cli", *args], capture_output=True,
                            text=True, env=full_env, timeout=120)
    if ok:
        assert answer.returncode == 0, answer.stderr + answer.stdout
    return answer


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """The container layout of a torch.export archive around random bytes (the registry never loads it)."""
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/weights/weight_0", os.urandom(300_000))
    return path


def test_push_list_alias_pull(sqlite_registry: ThreadedRegistry, artifact: Path, tmp_path: Path) -> None:
    pushed = run("push", str(artifact), "--model", "digits", "--alias", "production", "--tag", "team=cv",
                 "--metric", "accuracy=0.97", "--input-shape", "-1,1,8,8", "--labels", "a,b", registry=sqlite_registry)
    assert "digits:1" in pushed.stdout and sha256(artifact.read_bytes()) in pushed.stdout
    assert "digits@production" in pushed.stdout
    version = sqlite_registry.store.get_version("digits", 1)
    assert (version.format.value, version.metrics, version.tags) == ("torch-export", {"accuracy": 0.97},
                                                                      {"team": "cv"})
    assert version.metadata["input"] == {"shape": [-1, 1, 8, 8], "dtype": "float32"}
    assert version.metadata["output"] == {"kind": "logits", "labels": ["a", "b"]}
    run("push", str(artifact), "--model", "digits", registry=sqlite_registry)
    listed = json.loads(run("versions", "ls", "digits", "--json", registry=sqlite_registry).stdout)
    assert [v["version"] for v in listed] == [2, 1] and listed[1]["aliases"] == ["production"]
    table = run("versions", "ls", "digits", registry=sqlite_registry).stdout
    assert "VERSION" in table and "production" in table
    assert "digits" in run("models", "ls", registry=sqlite_registry).stdout
    run("alias", "set", "digits", "production", "2", registry=sqlite_registry)
    assert "→ 2" in run("alias", "get", "digits", "production", registry=sqlite_registry).stdout
    out = tmp_path / "pulled" / "model.pt2"
    run("pull", "digits@production", "-o", str(out), registry=sqlite_registry)
    assert out.read_bytes() == artifact.read_bytes()
    run("pull", "digits:1", "-o", str(out), registry=sqlite_registry)
    assert out.read_bytes() == artifact.read_bytes()


def test_errors_are_one_line_and_exit_non_zero(sqlite_registry: ThreadedRegistry, artifact: Path,
                                               tmp_path: Path) -> None:
    missing = run("pull", "nothing@production", "-o", str(tmp_path / "x"), registry=sqlite_registry, ok=False)
    assert missing.returncode == 1 and "error:" in missing.stderr and "nothing" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_ref = run("pull", "digits", "-o", str(tmp_path / "x"), registry=sqlite_registry, ok=False)
    assert bad_ref.returncode == 1 and "NAME@ALIAS" in bad_ref.stderr
    bad_name = run("push", str(artifact), "--model", "Bad_Name", registry=sqlite_registry, ok=False)
    assert bad_name.returncode == 1 and "invalid model name" in bad_name.stderr
    bad_metric = run("push", str(artifact), "--model", "m", "--metric", "acc=high", registry=sqlite_registry,
                     ok=False)
    assert bad_metric.returncode == 2 and "acc" in bad_metric.stderr
    pickle = tmp_path / "model.pt"
    with zipfile.ZipFile(pickle, "w") as archive:
        archive.writestr("model/data.pkl", b"\x80\x04N.")
    refused = run("push", str(pickle), "--model", "m", registry=sqlite_registry, ok=False)
    assert refused.returncode == 1 and "torch.export" in refused.stderr and "pickle" in refused.stderr
    mislabelled = run("push", str(artifact), "--model", "m", "--format", "torchscript", registry=sqlite_registry,
                      ok=False)
    assert mislabelled.returncode == 1 and "is a torch-export artifact" in mislabelled.stderr
    bad_shape = run("push", str(artifact), "--model", "m", "--input-shape", "1,8", registry=sqlite_registry, ok=False)
    assert bad_shape.returncode == 1 and "batch" in bad_shape.stderr
    assert not _model_exists(sqlite_registry, "m")  # nothing was created by refused pushes
    down = run("models", "ls", "--registry", "http://127.0.0.1:9", ok=False)
    assert down.returncode == 1 and "cannot reach the registry" in down.stderr
    assert not (tmp_path / "x").exists()


def test_tokens_from_the_cli_turn_auth_on(sqlite_registry: ThreadedRegistry, artifact: Path) -> None:
    db = sqlite_registry.settings.db_url
    created = run("registry", "token", "create", "--scope", "read", "--name", "ci", "--db", db)
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("my_")
    assert "ci" in run("registry", "token", "ls", "--db", db).stdout
    denied = run("push", str(artifact), "--model", "m", "--token", token, registry=sqlite_registry, ok=False)
    assert denied.returncode == 1 and "scope 'read'" in denied.stderr
    assert not _model_exists(sqlite_registry, "m")  # refused before anything was created
    run("models", "ls", registry=sqlite_registry, env={"MODELYARD_TOKEN": token})


def test_revoking_every_token_keeps_auth_on_until_an_explicit_open(sqlite_registry: ThreadedRegistry) -> None:
    db = sqlite_registry.settings.db_url
    run("registry", "token", "create", "--scope", "admin", "--name", "root", "--db", db)
    refused = run("registry", "token", "revoke", "1", "--db", db, ok=False)
    assert refused.returncode == 1 and "last live admin token" in refused.stderr
    run("registry", "token", "revoke", "1", "--last-admin", "--db", db)
    listed = run("registry", "token", "ls", "--db", db).stdout
    assert "yes" in listed and "authentication: on" in listed
    assert run("models", "ls", registry=sqlite_registry, ok=False).returncode == 1  # still closed: 401
    unconfirmed = run("registry", "auth", "open", "--db", db, ok=False)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    run("registry", "auth", "open", "--yes", "--db", db)
    assert "authentication: off" in run("registry", "auth", "status", "--db", db).stdout
    run("models", "ls", registry=sqlite_registry)
    assert sqlite_registry.store.events_after(0)[-1].type == "auth.opened"


def _model_exists(server: ThreadedRegistry, name: str) -> bool:
    return any(m.name == name for m in server.store.list_models().items)


def test_migrate_command(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = run("registry", "migrate", "--db", db).stdout
    assert "was empty" in first
    assert "was" not in run("registry", "migrate", "--db", db).stdout


def test_serve_refuses_an_unmigrated_postgres_with_a_clear_message(pg_cluster) -> None:  # noqa: ANN001
    db = pg_cluster.create_database()
    refused = run("registry", "serve", "--db", db, "--port", "1", ok=False)
    assert refused.returncode == 1 and "registry migrate" in refused.stderr and "Traceback" not in refused.stderr
    down = run("registry", "migrate", "--db", "postgresql+psycopg://postgres@127.0.0.1:9/none", ok=False)
    assert down.returncode == 1 and "database" in down.stderr and "Traceback" not in down.stderr


def test_environment_settings_reach_the_server(pg_cluster, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.support.servers import ProcessRegistry

    db = pg_cluster.create_database()
    with ProcessRegistry(db, tmp_path / "artifacts", {"MODELYARD_MIGRATE_ON_START": "true"}) as server:
        import httpx

        assert httpx.get(f"{server.url}/api/v1/models").json() == {"items": [], "next_cursor": None}
