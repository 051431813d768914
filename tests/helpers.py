"""Small helpers shared by tests."""

from __future__ import annotations

import base64
import hashlib


def content_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
