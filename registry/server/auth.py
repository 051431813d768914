"""Bearer-token authentication with scopes read < evaluate < report < write < admin.

Policy: a registry that never had a token is open (the embedded single-user
default); creating the first token turns authentication on, and it stays on,
whatever is revoked later, until an administrator opens the registry explicitly
(``modelyard registry auth open``).  While it is on, anonymous clients get
nothing, or read access when ``anonymous_read`` is set.

Lookups are cached for a few seconds because every request, including the
operator's alias hot path, passes through here; a revoked token therefore stops
working within ``token_cache_seconds`` (``defaults.TOKEN_CACHE_SECONDS``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Awaitable, Callable

from fastapi import Request

from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.errors import Forbidden, Unauthorized
from modelyard.registry.store import RegistryStore, TokenIdentity, scope_allows
from modelyard.registry.server.calls import run_read

_CACHE_LIMIT = 10_000


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
    def __init__(self, store: RegistryStore, anonymous_read: bool | None,
                 token_cache_seconds: float = defaults.TOKEN_CACHE_SECONDS,
                 open_mode_cache_seconds: float = defaults.OPEN_MODE_CACHE_SECONDS) -> None:
        self.store = store
        self.anonymous_read = anonymous_read
        self.token_cache_seconds = token_cache_seconds
        self.open_mode_cache_seconds = open_mode_cache_seconds
        self._open_until = 0.0
        self._open = True
        self._tokens: dict[str, tuple[float, TokenIdentity | None]] = {}

    async def _is_open(self) -> bool:
        now = time.monotonic()
        if now >= self._open_until:
            self._open = not await run_read(self.store, self.store.auth_enabled)
            self._open_until = now + self.open_mode_cache_seconds
        return self._open

    async def _token(self, token: str) -> TokenIdentity | None:
        now = time.monotonic()
        cached = self._tokens.get(token)
        if cached and cached[0] > now:
            return cached[1]
        found = await run_read(self.store, self.store.token_identity, token)
        if len(self._tokens) >= _CACHE_LIMIT:
            self._tokens.clear()
        self._tokens[token] = (now + self.token_cache_seconds, found)
        return found

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
