"""Shared request dependencies and path/query parameter types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request, Response
from pydantic import BaseModel

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.kernel.schemas import MAX_VERSION
from modelyard.registry.kernel.errors import Invalid
from modelyard.registry.kernel.names import ALIAS_PATTERN, NAME_PATTERN, check_tag_key
from modelyard.registry.server.auth import Caller, require
from modelyard.registry.server.calls import run_read  # noqa: F401 - re-exported for the routers
from modelyard.registry.store import RegistryStore

ModelPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="model name (DNS label)")]
AliasPath = Annotated[str, Path(pattern=ALIAS_PATTERN, max_length=63, description="alias name")]
VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="version number")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
TagFilter = Annotated[list[str], Query(description="repeatable key=value tag filter", max_length=16)]
Force = Annotated[bool, Query(description="delete even while a deployment serves it (admin)")]

Reader = Annotated[Caller, Depends(require("read"))]
Evaluator = Annotated[Caller, Depends(require("evaluate"))]
"""Read, and whatever evidence the exact scope allows (``evaluations_api.refuse_unless_measurer``)."""
Reporter = Annotated[Caller, Depends(require("report"))]
Writer = Annotated[Caller, Depends(require("write"))]
Admin = Annotated[Caller, Depends(require("admin"))]


# Dependencies are ``async def``: FastAPI runs plain ``def`` dependencies in a worker
# thread, a hop that costs more than the alias lookup itself.
async def get_store(request: Request) -> RegistryStore:
    return request.app.state.store


async def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


Store = Annotated[RegistryStore, Depends(get_store)]
Artifacts = Annotated[ArtifactStore, Depends(get_artifacts)]


def parse_tag_filters(raw: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise Invalid(f"invalid tag filter {item!r}: expected key=value")
        pairs.append((check_tag_key(key), value))
    return pairs


def created(body: BaseModel, location: str) -> Response:
    """201 with ``Location``, serialized once (the body is already a validated model)."""
    return Response(body.model_dump_json(), status_code=201, media_type="application/json",
                    headers={"Location": location})
