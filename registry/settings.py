"""Where the registry keeps its data, from flags or the environment.

Defaults are the embedded single-machine set-up: SQLite and a local artifact
directory under ``MODELYARD_HOME`` (``~/.modelyard``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env


def modelyard_home() -> Path:
    return Path(os.environ.get(Env.HOME, defaults.HOME)).expanduser()


def default_db_url() -> str:
    return os.environ.get(Env.DB_URL) or f"sqlite:///{modelyard_home() / 'registry.db'}"


def default_artifacts_url() -> str:
    return os.environ.get(Env.ARTIFACTS) or str(modelyard_home() / "artifacts")


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() in ("1", "true", "yes", "on")


# Environment variables that seed a token of a scope at start-up (values from Secrets).  The
# operator resolves versions and reports deployments (report); model pods get a separate
# read-only pull token.
SEED_TOKEN_ENV = {Env.ADMIN_TOKEN: ("admin", "admin"), Env.OPERATOR_TOKEN: ("operator", "report"),
                  Env.PULL_TOKEN: ("pull", "read")}


def seed_tokens_from_env() -> dict[str, tuple[str, str]]:
    return {name: (scope, os.environ[env]) for env, (name, scope) in SEED_TOKEN_ENV.items() if os.environ.get(env)}


def seed_cluster_from_env() -> str:
    return os.environ.get(Env.OPERATOR_CLUSTER) or defaults.CLUSTER_NAME


@dataclass
class RegistrySettings:
    db_url: str = field(default_factory=default_db_url)
    artifacts_url: str = field(default_factory=default_artifacts_url)
    # None: anonymous clients may read only while no token exists at all.
    anonymous_read: bool | None = field(default_factory=lambda: _env_flag(Env.ANONYMOUS_READ))
    # SQLite migrates itself; a shared PostgreSQL is migrated by `modelyard registry migrate`
    # (one job, not every replica racing), unless this is set.
    migrate_on_start: bool | None = field(default_factory=lambda: _env_flag(Env.MIGRATE_ON_START))

    # Tokens handed in by the deployment (the Helm chart's generated Secrets): name → (scope, token).
    seed_tokens: dict[str, tuple[str, str]] = field(default_factory=seed_tokens_from_env)
    # The cluster a seeded report token is bound to (the chart passes the operator's clusterName).
    seed_cluster: str = field(default_factory=seed_cluster_from_env)

    # The server's process count; with one process on SQLite, writes run in place.
    workers: int = field(default_factory=lambda: int(os.environ.get(Env.WORKERS) or 1))

    # How often the server sweeps the artifact store for blobs nothing refers to (crash
    # leftovers; deletes and refused uploads collect their own at once); 0 turns it off.
    gc_interval_seconds: float = field(
        default_factory=lambda: float(os.environ.get(Env.GC_INTERVAL_SECONDS) or defaults.GC_INTERVAL_SECONDS))

    # The event feed's retention, applied by the same periodic sweep.
    event_retention_days: float = field(default_factory=lambda: float(
        os.environ.get(Env.EVENT_RETENTION_DAYS) or defaults.EVENT_RETENTION_DAYS))
    event_retention_count: int = field(default_factory=lambda: int(
        os.environ.get(Env.EVENT_RETENTION_COUNT) or defaults.EVENT_RETENTION_COUNT))

    # A deployment its operator stopped reporting for this long is shown as stale.
    deployment_stale_seconds: float = field(default_factory=lambda: float(
        os.environ.get(Env.DEPLOYMENT_STALE_SECONDS) or defaults.DEPLOYMENT_STALE_SECONDS))

    # Whether X-Forwarded-Proto (from a TLS-terminating proxy) says the UI is served over https:
    # only when the registry is reached through such a proxy alone (anyone can send the header).
    trust_forwarded_proto: bool = field(default_factory=lambda: _env_flag(Env.TRUST_FORWARDED_PROTO) or False)

    def to_env(self) -> dict[str, str]:
        """The same settings as environment variables, for worker processes."""
        env = {Env.DB_URL: self.db_url, Env.ARTIFACTS: self.artifacts_url,
               Env.WORKERS: str(self.workers), Env.GC_INTERVAL_SECONDS: str(self.gc_interval_seconds),
               Env.DEPLOYMENT_STALE_SECONDS: str(self.deployment_stale_seconds),
               Env.EVENT_RETENTION_DAYS: str(self.event_retention_days),
               Env.EVENT_RETENTION_COUNT: str(self.event_retention_count), Env.OPERATOR_CLUSTER: self.seed_cluster}
        if self.trust_forwarded_proto:
            env[Env.TRUST_FORWARDED_PROTO] = "true"
        if self.anonymous_read is not None:
            env[Env.ANONYMOUS_READ] = "true" if self.anonymous_read else "false"
        if self.migrate_on_start is not None:
            env[Env.MIGRATE_ON_START] = "true" if self.migrate_on_start else "false"
        return env


def proxy_options(settings: RegistrySettings) -> dict[str, object]:
    """uvicorn's handling of X-Forwarded-* headers: off unless the registry is told to trust its proxy
    (uvicorn's own default believes any client on 127.0.0.1)."""
    if settings.trust_forwarded_proto:
        return {"proxy_headers": True, "forwarded_allow_ips": "*"}
    return {"proxy_headers": False}
