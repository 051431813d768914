"""Bearer-token authentication with scopes read < evaluate < report < write < admin.

Policy: a registry that never had a token is open (the embedded single-user
default); creating the first token turns authentication on, and it stays on,
whatever is revoked later, until an administrator opens the registry explicitly
(``modelyard registry auth open``).  While it is on, anonymous clients get
nothing, or read access when ``anonymous_read`` is set.

Every request, including the operator's alias hot path, passes through here, so
its lookups are answered from the store's read cache (``store.read_cache``), which
every change reaches: a revoked token stops working at once on SQLite (whichever
process revoked it) and, on PostgreSQL, on every replica as soon as the revocation
is heard there (milliseconds: the README gives the measured bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Awaitable, Callable

from fastapi import Request

from modelyard.registry.kernel.errors import Forbidden, Unauthorized
from modelyard.registry.store import RegistryStore, TokenIdentity, scope_allows
from modelyard.registry.server.calls import run_read


@dataclass(frozen=True)
class Caller:
    """Who is asking: ``identity`` is recorded (``created_by``, the alias audit trail)."""

    identity: str
    """"token:NAME" (the name given at ``token create``), or "anonymous"."""
    scope: str
    cluster: str | None = None
    """A report token's cluster: the only one whose deployments it may report."""

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def reporting_cluster(self) -> str:
        """The cluster a report token speaks for; ``Forbidden`` for one bound to none (it predates
        cluster binding), which may speak for no cluster at all."""
        if self.cluster is None:
            raise Forbidden("this report token is bound to no cluster (it predates cluster binding): create one "
                            "with `modelyard registry token create --scope report --cluster NAME`")
        return self.cluster


class Authenticator:
    def __init__(self, store: RegistryStore, anonymous_read: bool | None) -> None:
        self.store = store
        self.anonymous_read = anonymous_read

    async def _is_open(self) -> bool:
        enabled = self.store.cached_auth_enabled()
        if enabled is None:
            enabled = await run_read(self.store, self.store.auth_enabled)
        return not enabled

    async def _token(self, token: str) -> TokenIdentity | None:
        held = self.store.cached_token_identity(token)
        return held[0] if held is not None else await run_read(self.store, self.store.token_identity, token)

    async def authorize(self, authorization: str | None, needed: str) -> Caller:
        """Return the caller, or raise 401/403."""
        if authorization:
            kind, _, token = authorization.partition(" ")
            if kind.lower() != "bearer" or not token:
                raise Unauthorized("use 'Authorization: Bearer <token>'")
            found = await self._token(token.strip())
            if found is None:
                raise Unauthorized("unknown or revoked token")
            if not scope_allows(found.scope, needed):
                raise Forbidden(f"this token has scope {found.scope!r}; this request needs {needed!r}")
            return Caller(f"token:{found.name}", found.scope, found.cluster)
        if await self._is_open():
            return Caller("anonymous", "admin")  # an open registry: anyone may do anything
        if needed == "read" and self.anonymous_read:
            return Caller("anonymous", "read")
        raise Unauthorized("authentication required: pass 'Authorization: Bearer <token>' "
                           "(create one with `modelyard registry token create`)")


def require(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency that admits callers holding ``scope`` (or more)."""

    async def dependency(request: Request) -> Caller:
        auth: Authenticator = request.app.state.auth
        return await auth.authorize(request.headers.get("authorization"), scope)

    dependency.__name__ = f"require_{scope}"
    return dependency
