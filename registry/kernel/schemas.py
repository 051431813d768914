"""The REST API's JSON shapes (Pydantic), used by the server for validation and
OpenAPI, and by the client to parse answers: one definition, no drift."""

from __future__ import annotations

import math
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError,
                      model_validator)

from modelyard.registry.kernel.errors import Invalid
from modelyard.registry.kernel.names import NAME_PATTERN, RESOURCE_NAME_PATTERN, check_tag_key

ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]
MAX_VERSION = 2_147_483_647
"""Version numbers are 32-bit integers in the schema."""
VersionNumber = Annotated[int, Field(ge=1, le=MAX_VERSION)]


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > 64:
        raise ValueError("at most 64 tags")
    for key in tags:
        check_tag_key(key)
    return tags


def _check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    if len(metrics) > 256:
        raise ValueError("at most 256 metrics")
    for key, value in metrics.items():
        check_tag_key(key)
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} must be a finite number")
    return metrics


def _check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    import orjson

    try:
        encoded = orjson.dumps(metadata)
    except TypeError as exc:  # e.g. an integer beyond 64 bits: not portable JSON
        raise ValueError(f"metadata is not portable JSON: {exc}") from None
    if len(encoded) > 64 * 1024:
        raise ValueError("metadata must serialize to at most 64 KiB of JSON")
    return metadata


Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
Tags = Annotated[dict[str, Annotated[str, StringConstraints(max_length=256)]], AfterValidator(_check_tags)]
Metrics = Annotated[dict[str, float], AfterValidator(_check_metrics)]
Description = Annotated[str, StringConstraints(max_length=4096)]


class VersionStatus(str, Enum):
    pending = "pending"
    ready = "ready"
    failed = "failed"


class ArtifactFormat(str, Enum):
    torch_export = "torch-export"
    torchscript = "torchscript"
    bento = "bento"
    hf = "hf"


def reject_nul(value: Any) -> Any:
    """Refuse NUL characters anywhere in a request's text (keys and values, nested too):
    PostgreSQL cannot store them, and accepting them on SQLite only would split the backends."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("text must not contain NUL characters (\\u0000)")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


class _Strict(BaseModel):
    """A request body: unknown fields and NUL characters are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return reject_nul(data)


class ModelCreate(_Strict):
    name: ModelName
    description: Description = ""
    tags: Tags = {}


class ModelUpdate(_Strict):
    description: Description | None = None
    tags: Tags | None = None


class Model(BaseModel):
    name: str
    description: str
    tags: dict[str, str]
    latest_version: int | None = Field(description="highest version number handed out, or null")
    aliases: dict[str, int] = Field(description="alias → version")
    created_at: datetime
    updated_at: datetime


class VersionCreate(_Strict):
    format: ArtifactFormat | None = None
    description: Description = ""
    metadata: Metadata = {}
    metrics: Metrics = {}
    tags: Tags = {}
    source: Annotated[str, StringConstraints(max_length=4096)] | None = None


class VersionUpdate(_Strict):
    description: Description | None = None
    metrics: Metrics | None = None
    tags: Tags | None = None


BENTO_TAG_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(:[A-Za-z0-9._-]{1,63})?$"
BentoTag = Annotated[str, StringConstraints(pattern=BENTO_TAG_PATTERN, max_length=128)]


class Bento(BaseModel):
    """The version packaged as a BentoML service: an exported ``.bento`` in the artifact store."""

    tag: str
    digest: str
    size: int


class DeploymentRef(BaseModel):
    """Where a version runs, as its operator last reported it."""

    cluster: str
    namespace: str
    name: str
    phase: str
    ready_replicas: int
    desired_replicas: int
    stale: bool = Field(description="the operator has not reported for longer than the registry's stale time")


class EvaluationRef(BaseModel):
    """An evaluation as a version's answer lists it (``GET …/evaluations/{id}``-free: the list has the rest)."""

    id: int
    kind: str
    source: str
    verdict: str
    metrics: dict[str, float]
    requests: int | None
    time: datetime


class SignatureRef(BaseModel):
    """A verified signature of a version, as its answer lists it (the bundle: ``…/signatures/{signer}``)."""

    signer: str = Field(description="the trust store entry that verified it")
    method: str = Field(description='"key" or "certificate"')
    identity: str | None = Field(default=None, description="the certificate identity the signer is pinned to")
    verified_at: datetime
    bundle_digest: str = Field(description='"sha256:<hex>" of the bundle')
    trusted: bool = Field(description="the signer is still in the trust store with the same key or CA; false once "
                          "it is removed or replaced")


class Version(BaseModel):
    model: str
    version: int
    status: VersionStatus
    digest: str | None = Field(description='"sha256:<hex>" once the artifact is uploaded')
    size: int | None
    format: ArtifactFormat | None
    description: str = ""
    metadata: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    aliases: list[str]
    source: str | None
    bento: Bento | None = Field(default=None, description="set once the version is packaged")
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    deployments: list[DeploymentRef] = Field(default=[], description="where it runs, as operators report it "
                                             "(the first 20 by cluster, namespace and name)")
    deployments_total: int = Field(default=0, description="how many deployments serve it in all")
    deployments_link: str | None = Field(default=None, description="where to page through all of them, when "
                                         "more than are listed here")
    evaluations: list[EvaluationRef] = Field(default=[], description="evidence measured on it: the newest "
                                             "evaluation of each kind and source (at most 10, newest first); "
                                             "all of them under …/evaluations")
    signatures: list[SignatureRef] = Field(default=[], description="verified OpenSSF model signatures, one per "
                                           "signer")
    _json: bytes | None = PrivateAttr(default=None)

    def json_bytes(self) -> bytes:
        """Its JSON, made once: a registry's read cache hands the same answer to many requests."""
        if self._json is None:
            self._json = self.model_dump_json().encode()
        return self._json


EVALUATION_KINDS = ("canary", "offline")
VERDICTS = ("pass", "fail")
CANARY_SOURCE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$"
"""A canary's source: the cluster, namespace and name of the ModelDeployment that measured it."""


class EvaluationWindow(_Strict):
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> EvaluationWindow:
        if self.end < self.start:
            raise ValueError("window.end is before window.start")
        return self


class EvaluationCreate(_Strict):
    """Evidence measured on a version (``POST …/versions/{v}/evaluations``): immutable once recorded.

    ``canary``: measured live by an operator (``source`` is CLUSTER/NAMESPACE/NAME, and only that
    cluster's report token may record it); ``offline``: measured by an evaluator (``source`` is its
    name; an ``evaluate`` token records it)."""

    kind: Annotated[str, StringConstraints(pattern=r"^(canary|offline)$")]
    source: Annotated[str, StringConstraints(min_length=1, max_length=381)]
    metrics: Annotated[Metrics, Field(description="at most 256 finite numbers")] = {}
    verdict: Annotated[str, StringConstraints(pattern=r"^(pass|fail)$")]
    window: EvaluationWindow | None = None
    requests: Annotated[int, Field(ge=0, le=2**53)] | None = None
    details: Annotated[Metadata, Field(description="free-form JSON, at most 64 KiB")] = {}

    @model_validator(mode="after")
    def _source_fits_the_kind(self) -> EvaluationCreate:
        import re

        if self.kind == "canary" and not re.match(CANARY_SOURCE_PATTERN, self.source):
            raise ValueError("a canary's source is CLUSTER/NAMESPACE/NAME (the ModelDeployment that measured it)")
        if self.kind == "offline" and not re.match(NAME_PATTERN, self.source):
            raise ValueError("an offline evaluation's source is the evaluator's name (letters, digits, . _ -)")
        return self

    @property
    def cluster(self) -> str | None:
        return self.source.split("/", 1)[0] if self.kind == "canary" else None


class Evaluation(BaseModel):
    id: int
    model: str
    version: int
    kind: str
    source: str
    metrics: dict[str, float]
    verdict: str
    window: EvaluationWindow | None
    requests: int | None
    details: dict[str, Any]
    recorded_by: str = Field(description='the token that recorded it: "token:NAME"')
    time: datetime


class TrustRootCreate(_Strict):
    """A signer to trust (``PUT /trust/{name}``): an elliptic-curve public key (``method: key``) or the CA
    certificates that issue its signing certificates (``method: certificate``, optionally pinned to one
    ``identity``: an email, URI or DNS name, or common name, its certificates must carry)."""

    method: Annotated[str, StringConstraints(pattern=r"^(key|certificate)$")]
    pem: Annotated[str, StringConstraints(min_length=1, max_length=65536)]
    identity: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class TrustRoot(BaseModel):
    name: str
    method: str
    pem: str = Field(description="the public key or CA certificates (public material)")
    fingerprint: str = Field(description="sha256 of the key's PEM (model_signing's key hint) or of the CA "
                             "certificates' DER")
    identity: str | None
    created_by: str
    created_at: datetime


class AliasSet(_Strict):
    version: VersionNumber


RULE_PATTERN = r"^\s*([A-Za-z0-9_.:/@-]{1,140})\s*(>=|<=|==|>|<)\s*(-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)\s*$"
SIGNED_BY_PATTERN = r"^\s*signed-by:([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\s*$"
"""``signed-by:NAME``: the version carries a signature that the trust store's NAME still vouches for."""
Rule = Annotated[str, StringConstraints(pattern=f"(?:{SIGNED_BY_PATTERN})|(?:{RULE_PATTERN})", max_length=128)]


class AliasProtection(_Strict):
    """``require``: every rule (``[SOURCE.]METRIC OP NUMBER``, or ``signed-by:NAME``) must hold for a version before a non-admin
    caller may point the alias at it; an empty list: admin only.  SOURCE says where the number comes
    from: none (or ``metrics.``) the version's own metrics, frozen once ready (``accuracy>=0.95``);
    ``offline.`` the latest passing offline evaluation's (``offline.accuracy>=0.95``); ``canary.`` the
    latest passing canary evaluation's, from any cluster or ``canary@CLUSTER.`` from one
    (``canary@staging.error_rate<=0.01``, ``canary.requests>=500``).  ``signed-by:team-cv``: the version
    carries a signature verified by the trust store's ``team-cv``, which still vouches for it."""

    require: Annotated[list[Rule], Field(max_length=16)] = []


class AliasMove(BaseModel):
    from_version: int | None
    to_version: int | None = Field(description="null: the alias was deleted")
    actor: str = Field(description='who: "token:NAME" (unique among live tokens), or "anonymous" on an open registry')
    time: datetime
    judged: dict[str, Any] | None = Field(
        default=None, description="what the move was judged on: a protected alias's rules (require), the "
        "metric values read (metrics) and the evidence read (evidence: each source's evaluation id and numbers); "
        "an operator's revert (revert: the failed version and its failing evidence) or promotion (promoted_by: "
        "its cluster); null when nothing was judged (not protected, or an admin's move)")
    deleted_model: bool = Field(default=False, description="the move belongs to a deleted model of this name")


class Alias(BaseModel):
    model: str
    alias: str
    version: int
    digest: str | None


ClusterName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]
NamespaceName = ClusterName
ResourceName = Annotated[str, StringConstraints(pattern=RESOURCE_NAME_PATTERN, max_length=253)]
PHASE_PATTERN = r"^[A-Za-z]{1,16}$"
Phase = Annotated[str, StringConstraints(pattern=PHASE_PATTERN)]
Replicas = Annotated[int, Field(ge=0, le=100_000)]


class DeploymentReport(_Strict):
    """What an operator reports about one ModelDeployment (``PUT /deployments/{cluster}/{ns}/{name}``)."""

    model: ModelName
    version: VersionNumber | None = None
    digest: Annotated[str, StringConstraints(max_length=71)] | None = None
    phase: Phase
    ready_replicas: Replicas = 0
    desired_replicas: Replicas = 0
    helm_revision: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    url: Annotated[str, StringConstraints(max_length=512)] | None = None
    last_transition_time: datetime | None = None
    rollout_result: Annotated[str, StringConstraints(max_length=64)] | None = None
    rollout_reason: Annotated[str, StringConstraints(max_length=1024)] | None = None


class Deployment(DeploymentReport):
    model_config = ConfigDict(extra="ignore")

    cluster: str
    namespace: str
    name: str
    reporter: str = Field(description="the token that reported it")
    reported_at: datetime = Field(description="the registry's clock when the last report arrived")
    stale: bool = Field(description="no report for longer than the registry's stale time: not known healthy")


EVENT_TYPES = (
    "model.created", "model.deleted", "version.created", "version.ready", "version.packaged",
    "version.unpackaged", "version.evaluated", "version.signed", "version.deleted", "alias.set", "alias.deleted",
    "auth.enabled", "auth.opened", "trust.added", "trust.removed", "deployment.updated", "deployment.removed",
)


class Event(BaseModel):
    id: int
    # A plain string, not an enum: a client must keep following a newer registry's feed.
    type: str = Field(description="one of: " + ", ".join(EVENT_TYPES))
    model: str = Field(description="empty for registry-wide events (auth.*)")
    version: int | None = None
    alias: str | None = None
    time: datetime


class EventPage(BaseModel):
    events: list[Event]
    next: int = Field(description="pass as ?after= to continue")
    truncated: bool = Field(default=False, description="events after ?after= were dropped by the feed's "
                            "retention: the caller fell behind and must re-list what it follows")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


_Body = TypeVar("_Body", bound=BaseModel)


def validated(body: type[_Body], **fields: Any) -> _Body:
    """The request body the HTTP API would accept, or ``Invalid`` (422) saying what is wrong: the
    store and the client hold their callers to the same limits as the server's routes."""
    try:
        return body.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                             for e in error.errors(include_url=False))
        raise Invalid(problems) from None


# Parametrized once: pydantic builds a class for ``Page[X]`` on every subscription (about 0.8 ms),
# which a list answer would otherwise pay each time.
ModelPage = Page[Model]
VersionPage = Page[Version]
DeploymentPage = Page[Deployment]
AliasMovePage = Page[AliasMove]
