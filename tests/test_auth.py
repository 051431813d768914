"""Bearer tokens and scopes, against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelyard.registry.settings import RegistrySettings
from tests.support.servers import ThreadedRegistry


@pytest.fixture
def settings(tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(db_url=f"sqlite:///{tmp_path / 'r.db'}", artifacts_url=str(tmp_path / "a"),
                            migrate_on_start=True)


def test_open_until_the_first_token_then_scoped(settings: RegistrySettings) -> None:
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        assert httpx.post(f"{api}/models", json={"name": "open"}).status_code == 201  # no token yet: open
        read, _ = server.store.create_token("reader", "read")
        write, _ = server.store.create_token("writer", "write")
        admin, _ = server.store.create_token("admin", "admin")
        anonymous = httpx.get(f"{api}/models")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.headers["content-type"] == "application/problem+json"
        as_reader = {"Authorization": f"Bearer {read}"}
        assert httpx.get(f"{api}/models", headers=as_reader).status_code == 200
        refused = httpx.post(f"{api}/models", json={"name": "x"}, headers=as_reader)
        assert refused.status_code == 403 and "write" in refused.json()["detail"]
        as_writer = {"Authorization": f"Bearer {write}"}
        assert httpx.post(f"{api}/models", json={"name": "x"}, headers=as_writer).status_code == 201
        created = httpx.post(f"{api}/models/x/versions", headers=as_writer).json()
        assert created["created_by"] == "token:writer"  # the token's name: who, not what
        assert httpx.delete(f"{api}/models/x", headers=as_writer).status_code == 403  # model deletion is admin
        assert httpx.delete(f"{api}/models/x", headers={"Authorization": f"Bearer {admin}"}).status_code == 204
        assert httpx.get(f"{api}/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{api}/models", headers={"Authorization": "Basic abc"}).status_code == 401
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no token


def test_anonymous_read_setting_and_revocation(settings: RegistrySettings) -> None:
    settings.anonymous_read = True
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        write, info = server.store.create_token("writer", "write")
        assert httpx.get(f"{api}/models").status_code == 200
        assert httpx.post(f"{api}/models", json={"name": "y"}).status_code == 401
        headers = {"Authorization": f"Bearer {write}"}
        assert httpx.post(f"{api}/models", json={"name": "y"}, headers=headers).status_code == 201
        server.store.revoke_token(info.id)
        assert httpx.post(f"{api}/models", json={"name": "z"}, headers=headers).status_code == 401


def test_a_token_revoked_by_the_admin_command_is_refused_at_once(settings: RegistrySettings) -> None:
    """The revocation commits in another process (`modelyard registry token revoke`): the server's
    cached lookup must not outlive it, not even for a few seconds."""
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        token, info = server.store.create_token("leaked", "read")
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(2):  # the second is answered from the cache
            assert httpx.get(f"{api}/models", headers=headers).status_code == 200
        revoked = subprocess.run([sys.executable, "-m", "modelyard.registry.cli", "token", "revoke", str(info.id),
                                  "--db", settings.db_url], capture_output=True, text=True, timeout=120)
        assert revoked.returncode == 0, revoked.stderr
        assert httpx.get(f"{api}/models", headers=headers).status_code == 401


def test_revoking_the_last_live_token_does_not_open_the_registry(settings: RegistrySettings) -> None:
    """Revoking a leaked token is the normal incident response: it must not give anonymous clients admin."""
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        token, info = server.store.create_token("leaked", "write")
        assert httpx.post(f"{api}/models", json={"name": "m"}).status_code == 401
        server.store.revoke_token(info.id)
        assert httpx.post(f"{api}/models", json={"name": "m"}).status_code == 401
        assert httpx.get(f"{api}/models").status_code == 401
        assert httpx.delete(f"{api}/models/m", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_tokens_from_the_environment_are_seeded_once(settings: RegistrySettings, monkeypatch) -> None:
    """The Helm chart generates the admin, operator and pull tokens into a Secret and hands them in by env.
    Only the admin token may write: the operator resolves, model pods pull."""
    admin, operator, pull = "my_" + "a" * 40, "my_" + "o" * 40, "my_" + "p" * 40
    monkeypatch.setenv("MODELYARD_ADMIN_TOKEN", admin)
    monkeypatch.setenv("MODELYARD_OPERATOR_TOKEN", operator)
    monkeypatch.setenv("MODELYARD_PULL_TOKEN", pull)
    seeded = RegistrySettings(db_url=settings.db_url, artifacts_url=settings.artifacts_url, migrate_on_start=True)
    assert seeded.seed_tokens == {"admin": ("admin", admin), "operator": ("report", operator),
                                  "pull": ("read", pull)}
    with ThreadedRegistry(seeded) as server:
        api = server.url + "/api/v1"
        assert httpx.get(f"{api}/models").status_code == 401  # tokens exist: authentication is on
        as_admin = {"Authorization": f"Bearer {admin}"}
        assert httpx.post(f"{api}/models", json={"name": "m"}, headers=as_admin).status_code == 201
        for reader in (operator, pull):
            as_reader = {"Authorization": f"Bearer {reader}"}
            assert httpx.get(f"{api}/models/m", headers=as_reader).status_code == 200
            assert httpx.post(f"{api}/models", json={"name": "x"}, headers=as_reader).status_code == 403
            # An operator may move an alias on its cluster's evidence (tests/test_evidence.py): it is told the
            # version does not exist; a pull token may not ask.
            assert httpx.put(f"{api}/models/m/aliases/production", json={"version": 1},
                             headers=as_reader).status_code == (404 if reader == operator else 403)
        assert httpx.delete(f"{api}/models/m", headers=as_admin).status_code == 204
        assert [t.name for t in server.store.list_tokens()] == ["admin", "operator", "pull"]
    with ThreadedRegistry(seeded) as server:  # a restart (or a second replica) adds nothing
        assert [t.name for t in server.store.list_tokens()] == ["admin", "operator", "pull"]
        assert server.store.ensure_token("admin", "admin", admin) is False
        with pytest.raises(Exception, match="too short"):
            server.store.ensure_token("weak", "read", "short")
