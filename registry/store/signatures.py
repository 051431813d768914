"""Signed versions: the trust store (who may vouch for a version) and each version's verified signatures.

The server verifies a bundle against the trust store and the stored bytes before it calls
``record_signature``; the store records it only if, in the same transaction, every signer still
holds the material that verified it and the version still has those bytes.  A signature is
trusted while its signer's entry holds the same fingerprint: removing (or replacing) a signer
leaves its signatures listed, untrusted, and ``signed-by`` rules stop counting them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, and_, bindparam, delete, func, select
from sqlalchemy.orm import Session

from modelyard.registry.db import models as db
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.errors import Conflict, Invalid, NotFound
from modelyard.registry.signing.bundles import TrustRoot
from modelyard.registry.signing.trust import read_material
from modelyard.registry.store.base import StoreBase, version_from_row

_SELECT_SIGNATURES = (
    select(db.Signature.version_id, db.Signature.signer, db.Signature.method, db.Signature.identity,
           db.Signature.verified_at, db.Signature.bundle_digest, db.TrustRoot.id.label("trusted_by"))
    .outerjoin(db.TrustRoot, and_(db.TrustRoot.name == db.Signature.signer,
                                  db.TrustRoot.fingerprint == db.Signature.fingerprint))
    .where(db.Signature.version_id.in_(bindparam("versions", expanding=True)))
    .order_by(db.Signature.version_id, db.Signature.signer)
)
_ANY_SIGNATURE = select(db.Signature.id).where(db.Signature.version_id == bindparam("version_id"))


def _trust_root(row: db.TrustRoot) -> schemas.TrustRoot:
    return schemas.TrustRoot(name=row.name, method=row.method, pem=row.material, fingerprint=row.fingerprint,
                             identity=row.identity, created_by=row.created_by, created_at=row.created_at)


class SignatureRecords(StoreBase):
    """See the module's docstring; its contract is ``contracts.SignatureKeeping``."""

    # -- the trust store ------------------------------------------------------------------

    def add_trust_root(self, name: str, body: schemas.TrustRootCreate, *, created_by: str) -> schemas.TrustRoot:
        """Trust ``name`` (``trust.added``).  ``Invalid`` for material that cannot verify a model signature,
        ``Conflict`` when the name is taken (remove it first: what it signed stops counting) or the store
        is full."""
        try:
            material = read_material(body.method, body.pem)
        except ValueError as exc:
            raise Invalid(f"cannot trust {name!r}: {exc}") from None
        if body.identity is not None and material.method != "certificate":
            raise Invalid("an identity pins a certificate authority's signers; a key is its own identity")
        with self._write() as session:
            if session.scalar(select(db.TrustRoot.id).where(db.TrustRoot.name == name)) is not None:
                raise Conflict(f"{name!r} is already trusted: remove it first (`modelyard registry trust rm {name}`)")
            if (session.scalar(select(func.count()).select_from(db.TrustRoot)) or 0) >= defaults.TRUST_ROOTS_MAX:
                raise Conflict(f"the trust store holds {defaults.TRUST_ROOTS_MAX} signers, its most: remove one first")
            row = db.TrustRoot(name=name, method=material.method, material=material.pem,
                               fingerprint=material.fingerprint, identity=body.identity, created_by=created_by,
                               created_at=db.utcnow())
            session.add(row)
            session.flush()
            self._emit(session, "trust.added", "")
            return _trust_root(row)

    def remove_trust_root(self, name: str) -> None:
        """Stop trusting ``name`` (``trust.removed``): its signatures stay listed, untrusted."""
        with self._write() as session:
            removed = cast("CursorResult[Any]", session.execute(delete(db.TrustRoot).where(db.TrustRoot.name == name)))
            if not removed.rowcount:
                raise NotFound(f"{name!r} is not in the trust store")
            self._emit(session, "trust.removed", "")

    def list_trust_roots(self) -> list[schemas.TrustRoot]:
        with self._read() as session:
            return [_trust_root(row) for row in session.scalars(select(db.TrustRoot).order_by(db.TrustRoot.name))]

    def trust_roots(self) -> list[TrustRoot]:
        """The trust store as the verifier takes it."""
        return [TrustRoot(t.name, t.method, t.pem, t.fingerprint, t.identity) for t in self.list_trust_roots()]

    # -- signatures -----------------------------------------------------------------------

    def record_signature(self, name: str, version: int, *, digest: str, signers: Sequence[TrustRoot], bundle: bytes,
                         bundle_digest: str, uploaded_by: str) -> schemas.Version:
        """Record a bundle verified against ``digest`` (the version's bytes) by ``signers``, replacing each
        signer's earlier signature (``version.signed``).  ``Conflict`` when a signer's entry changed or the
        version's bytes are not ``digest`` any more."""
        with self._write() as session:
            model = self._model_row(session, name, lock=True)
            row = self._version_row(session, model, version)
            if row.digest != digest:
                raise Conflict(f"version {version} of model {name!r} is not {digest} any more: nothing was recorded")
            for signer in signers:
                held = session.scalar(select(db.TrustRoot.fingerprint).where(db.TrustRoot.name == signer.name))
                if held != signer.fingerprint:
                    raise Conflict(f"signer {signer.name!r} changed in the trust store while the signature was being "
                                   "verified: upload it again")
                session.execute(delete(db.Signature).where(db.Signature.version_id == row.id,
                                                           db.Signature.signer == signer.name))
                session.add(db.Signature(version_id=row.id, signer=signer.name, method=signer.method,
                                         fingerprint=signer.fingerprint, identity=signer.identity, bundle=bundle,
                                         bundle_digest=bundle_digest, uploaded_by=uploaded_by, verified_at=db.utcnow()))
            session.flush()
            self._emit(session, "version.signed", name, version)
            aliases = self._aliases_by_version(session, [row.id])[row.id]
            signatures = self._signatures_of(session, [row.id], fast=False)[row.id]
            return version_from_row(name, row, aliases, signatures=signatures)

    def signature_bundle(self, name: str, version: int, signer: str) -> bytes:
        """The bundle ``signer`` verified on the version, as uploaded; ``NotFound`` when it has none."""
        with self._read() as session:
            row = self._version_row(session, self._model_row(session, name), version)
            bundle = session.scalar(select(db.Signature.bundle).where(db.Signature.version_id == row.id,
                                                                      db.Signature.signer == signer))
        if bundle is None:
            raise NotFound(f"{name}:{version} carries no signature by {signer!r}")
        return bundle

    def _signatures_of(self, connection: Connection | Session, version_ids: Sequence[int], *,
                       fast: bool = True) -> dict[int, list[dict[str, Any]]]:
        """For a version's answer: each version's signatures, with whether their signer still vouches.
        ``fast``: may ask SQLite's committed state first (not inside a write transaction)."""
        found: dict[int, list[dict[str, Any]]] = {vid: [] for vid in version_ids}
        if not found:
            return found
        if fast and len(found) == 1 and self._fast is not None:  # hot: most versions are unsigned
            if self._fast.one(_ANY_SIGNATURE, {"version_id": version_ids[0]}) is None:
                return found
        for row in connection.execute(_SELECT_SIGNATURES, {"versions": list(found)}):
            found[row.version_id].append({"signer": row.signer, "method": row.method, "identity": row.identity,
                                          "verified_at": row.verified_at, "bundle_digest": row.bundle_digest,
                                          "trusted": row.trusted_by is not None})
        return found

    def _trusted_signers(self, session: Session, version_id: int) -> dict[str, dict[str, Any]]:
        """The signers that still vouch for a version: name → what a rule judged (for the audit trail)."""
        signatures = self._signatures_of(session, [version_id], fast=False)[version_id]
        return {s["signer"]: {"bundle_digest": s["bundle_digest"], "method": s["method"]}
                for s in signatures if s["trusted"]}
