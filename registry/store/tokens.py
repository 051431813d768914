"""Tokens and the authentication mode: tokens are stored as hashes; a ``report`` token is bound to
its cluster; once a token has existed, authentication stays on until an admin opens the registry.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.registry.db import models as db
from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import BadRequest, Conflict, NotFound
from modelyard.registry.store.base import StoreBase
from modelyard.registry.store.read_cache import AUTH

SCOPES = ("read", "evaluate", "report", "write", "admin")
"""Each scope includes the ones before it for what the API guards by scope; ``evaluate`` is an evaluator's
(read, and record offline evaluations), ``report`` an operator's (read, report deployments, record its
cluster's canary evaluations).  Evidence is guarded by the exact scope: no other token records it."""
AUTH_KEY = "auth"
AUTH_ON, AUTH_OPEN = "on", "open"


def scope_allows(granted: str, needed: str) -> bool:
    return SCOPES.index(granted) >= SCOPES.index(needed)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_SELECT_TOKEN = select(db.ApiToken.name, db.ApiToken.scope, db.ApiToken.cluster).where(
    db.ApiToken.token_hash == bindparam("token_hash"), db.ApiToken.revoked_at.is_(None))
_SELECT_AUTH_STATE = select(db.RegistryState.value).where(db.RegistryState.key == AUTH_KEY)
_AUTH_ENABLED = ("auth-enabled",)  # a read-cache key no token hash (a hex string) can equal


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    created_at: datetime
    revoked: bool
    cluster: str | None = None


@dataclass(frozen=True)
class TokenIdentity:
    """What a valid token is: its name (unique among live tokens), scope, and for a ``report``
    token the cluster it may report for."""

    name: str
    scope: str
    cluster: str | None = None


def _check_binding(scope: str, cluster: str | None) -> str | None:
    """A ``report`` token must name the one cluster it reports for; no other scope takes one."""
    if scope not in SCOPES:
        raise BadRequest(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
    if scope == "report":
        if not cluster:
            raise BadRequest("a report token is bound to the cluster it reports for: pass its cluster name "
                             "(the operator's clusterName)")
        return schemas.validated(_Cluster, cluster=cluster).cluster
    if cluster:
        raise BadRequest(f"only a report token is bound to a cluster, not a {scope} token")
    return None


class _Cluster(schemas._Strict):
    cluster: schemas.ClusterName


class TokenRecords(StoreBase):
    """See the module's docstring; its contract is ``contracts.TokenKeeping``."""

    def create_token(self, name: str, scope: str, *, cluster: str | None = None) -> tuple[str, TokenInfo]:
        """Create a token; the plain text is returned once and never stored.  ``name`` must not be
        held by another live token (the audit trail records actors by name); a ``report`` token
        names the ``cluster`` it may report for.

        Turns authentication on (for good: see :meth:`open_registry`)."""
        cluster = _check_binding(scope, cluster)
        if not name or len(name) > 128:
            raise BadRequest("a token's name is 1 to 128 characters")
        token = "my_" + secrets.token_urlsafe(32)
        with self._write() as session:
            self._refuse_live_name(session, name)
            row = db.ApiToken(name=name, token_hash=hash_token(token), scope=scope, cluster=cluster)
            session.add(row)
            self._set_auth(session, AUTH_ON)
            session.flush()
            return token, TokenInfo(row.id, row.name, row.scope, row.created_at, False, row.cluster)

    @staticmethod
    def _refuse_live_name(session: Session, name: str) -> None:
        held = session.scalar(select(db.ApiToken.id).where(db.ApiToken.name == name,
                                                           db.ApiToken.revoked_at.is_(None)).limit(1))
        if held is not None:
            raise Conflict(f"token {held} is already named {name!r}: names of live tokens are unique, so that the "
                           "audit trail can tell their holders apart (revoke it, or choose another name)")

    def ensure_token(self, name: str, scope: str, token: str, *, cluster: str | None = None) -> bool:
        """Register a token chosen outside the registry (a Helm-generated Secret); True if added.

        Idempotent, also when several replicas start at once: the hash is unique.  The
        deployment's scope wins over a stored one (an upgrade may narrow it); a token that
        was revoked stays revoked.  Turns authentication on.
        """
        cluster = _check_binding(scope, cluster)
        if len(token) < 16:
            raise BadRequest(f"the {name} token is too short: use at least 16 random characters")
        try:
            with self._write() as session:
                self._set_auth(session, AUTH_ON)
                row = session.scalars(select(db.ApiToken).where(db.ApiToken.token_hash == hash_token(token))).first()
                if row is None:
                    self._refuse_live_name(session, name)
                    session.add(db.ApiToken(name=name, token_hash=hash_token(token), scope=scope, cluster=cluster))
                    return True
                if row.revoked_at is None and (row.scope, row.cluster) != (scope, cluster):
                    row.scope, row.cluster = scope, cluster
                return False
        except IntegrityError:
            return False  # another replica added it first

    def cached_token_identity(self, token: str) -> tuple[TokenIdentity | None] | None:
        """``(token_identity(token),)`` if the read cache holds it, else None (no I/O)."""
        return self.cache.get(AUTH, hash_token(token))

    def token_identity(self, token: str) -> TokenIdentity | None:
        """What a valid, unrevoked token is, else None."""
        token_hash = hash_token(token)
        if (cached := self.cache.get(AUTH, token_hash)) is not None:
            return cached[0]
        ticket = self.cache.ticket(AUTH, token_hash)
        with self.engine.connect() as connection:
            found = connection.execute(_SELECT_TOKEN, {"token_hash": token_hash}).first()
        identity = None if found is None else TokenIdentity(found.name, found.scope, found.cluster)
        return self.cache.put(ticket, (identity,))[0]

    # -- authentication mode ---------------------------------------------------------------

    def cached_auth_enabled(self) -> bool | None:
        """``auth_enabled()`` if the read cache holds it, else None (no I/O)."""
        return self.cache.get(AUTH, _AUTH_ENABLED)

    def auth_enabled(self) -> bool:
        """Whether clients need a token.  Off only on a registry that never had a token, or
        that an administrator opened explicitly: revoking tokens never turns it off."""
        if (cached := self.cache.get(AUTH, _AUTH_ENABLED)) is not None:
            return bool(cached)
        ticket = self.cache.ticket(AUTH, _AUTH_ENABLED)
        with self.engine.connect() as connection:
            return self.cache.put(ticket, connection.scalar(_SELECT_AUTH_STATE) == AUTH_ON)

    def _set_auth(self, session: Session, value: str) -> None:
        row = session.get(db.RegistryState, AUTH_KEY)
        if row is not None and row.value == value:
            return
        if row is None:
            session.add(db.RegistryState(key=AUTH_KEY, value=value, updated_at=db.utcnow()))
        else:
            row.value, row.updated_at = value, db.utcnow()
        self._emit(session, "auth.enabled" if value == AUTH_ON else "auth.opened", "")

    def open_registry(self) -> bool:
        """Turn authentication off (emits ``auth.opened``): anonymous clients get every scope
        until a token is created again.  Live tokens keep working.  True if it was on."""
        with self._write() as session:
            was_on = session.scalar(_SELECT_AUTH_STATE) == AUTH_ON
            self._set_auth(session, AUTH_OPEN)
            return was_on

    def list_tokens(self) -> list[TokenInfo]:
        with self._reader() as session:
            return [TokenInfo(r.id, r.name, r.scope, r.created_at, r.revoked_at is not None, r.cluster)
                    for r in session.scalars(select(db.ApiToken).order_by(db.ApiToken.id))]

    def revoke_token(self, token_id: int, *, last_admin: bool = False) -> None:
        """Revoke a token.  Revoking the last live admin token of a registry with
        authentication on leaves nobody able to administer it over the API: that needs
        ``last_admin=True`` (authentication stays on either way)."""
        with self._write() as session:
            row = session.get(db.ApiToken, token_id)
            if row is None:
                raise NotFound(f"token {token_id} does not exist")
            if row.revoked_at is not None:
                return
            if row.scope == "admin" and not last_admin and session.scalar(_SELECT_AUTH_STATE) == AUTH_ON:
                others = session.scalar(select(func.count()).select_from(db.ApiToken).where(
                    db.ApiToken.scope == "admin", db.ApiToken.revoked_at.is_(None), db.ApiToken.id != token_id))
                if not others:
                    raise Conflict(f"token {token_id} ({row.name}) is the last live admin token: without it nobody "
                                   "can administer the registry over the API (authentication stays on). Create "
                                   "another admin token first, or confirm that this is intended")
            row.revoked_at = datetime.now(timezone.utc)
