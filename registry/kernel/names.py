"""Validation of names and model references.

Model and alias names end up as Kubernetes object names, Helm release names and
label values, so they follow RFC 1123 DNS labels.  Validating them here, once,
also guarantees that no user-supplied string ever becomes a path on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""RFC 1123 label: lower-case alphanumerics and '-', 1-63 chars, alphanumeric at both ends."""

ALIAS_PATTERN = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
"""An alias starts with a letter, so ``NAME@3`` can never be mistaken for a version."""

RESOURCE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
"""RFC 1123 subdomain (at most 253): a Kubernetes object name, such as a ModelDeployment's."""

TAG_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$"

_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_TAG_KEY = re.compile(TAG_KEY_PATTERN)


class InvalidName(ValueError):
    """A name, alias or model reference that does not follow the rules."""


def check_model_name(name: str) -> str:
    if not _NAME.fullmatch(name):  # not match: `$` also matches before a trailing newline
        raise InvalidName(
            f"invalid model name {name!r}: use 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use 1-63 lower-case letters, digits or '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return alias


def check_tag_key(key: str) -> str:
    if not _TAG_KEY.fullmatch(key):
        raise InvalidName(f"invalid tag key {key!r}: use letters, digits, '.', '_', '/', '-' (at most 128)")
    return key


@dataclass(frozen=True)
class ModelRef:
    """``NAME@ALIAS`` or ``NAME:VERSION``, the way users name one model version."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}:{self.version}"


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``NAME@ALIAS`` or ``NAME:VERSION``; raise :class:`InvalidName` with a hint otherwise."""
    if "@" in text:
        name, _, alias = text.partition("@")
        return ModelRef(name=check_model_name(name), alias=check_alias(alias))
    if ":" in text:
        name, _, version = text.partition(":")
        if not version.isdigit() or int(version) < 1:
            raise InvalidName(f"invalid version in {text!r}: expected a positive integer, as in {name}:3")
        return ModelRef(name=check_model_name(name), version=int(version))
    raise InvalidName(f"invalid model reference {text!r}: use NAME@ALIAS (e.g. digits@production) or NAME:VERSION")
