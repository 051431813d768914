"""A version's input/output contract in its metadata: ``metadata["input"] = {"shape", "dtype"}`` and
``metadata["output"] = {"kind": "logits", "labels"}``.

Written on push (the CLI's ``--input-shape``/``--input-dtype``/``--label``, the quickstart's export)
and read by the serving runtime to check requests without user code; this module is the one place
that knows the keys, so writer and reader cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
INPUT_KEY = "input"
OUTPUT_KEY = "output"


def parse_shape(text: str) -> list[int]:
    """``-1,1,8,8`` → ``[-1, 1, 8, 8]``; the first dimension is the batch and must be -1."""
    try:
        shape = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"invalid input shape {text!r}: expected integers such as -1,1,8,8") from None
    if len(shape) < 2 or shape[0] != -1 or any(d < 1 for d in shape[1:]):
        raise ValueError(f"invalid input shape {text!r}: the first dimension is the batch (-1), "
                         "the others positive, e.g. -1,1,8,8")
    return shape


@dataclass(frozen=True)
class InputSignature:
    shape: tuple[int, ...]
    """The first dimension is the batch (-1)."""
    dtype: str = "float32"

    def to_metadata(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self | None:
        """The version's declared input, or None when it declares none."""
        spec = metadata.get(INPUT_KEY)
        if not spec:
            return None
        return cls(shape=tuple(int(d) for d in spec["shape"]), dtype=str(spec.get("dtype", "float32")))


def signature_metadata(input_shape: str | None, input_dtype: str | None,
                       labels: Sequence[str] | None) -> dict[str, object]:
    """The metadata a generic serving runtime needs to validate requests without user code."""
    metadata: dict[str, object] = {}
    if input_shape or input_dtype:
        if not input_shape:
            raise ValueError("--input-dtype needs --input-shape too")
        dtype = input_dtype or "float32"
        if dtype not in DTYPES:
            raise ValueError(f"unknown input dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        metadata[INPUT_KEY] = InputSignature(tuple(parse_shape(input_shape)), dtype).to_metadata()
    if labels:
        metadata[OUTPUT_KEY] = logits_output(labels)
    return metadata


def logits_output(labels: Sequence[str]) -> dict[str, Any]:
    """``metadata["output"]`` for a classifier: one logit per label, in order."""
    return {"kind": "logits", "labels": list(labels)}
