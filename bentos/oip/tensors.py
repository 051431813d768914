"""The Open Inference Protocol's tensors, pure: datatypes, metadata, and requests' tensors read
into checked arrays (REST's JSON ``data`` or binary extension, gRPC's typed ``contents`` or raw bytes).

One reader for both transports, with the rules every route of the model server applies
(``pod.signature``): values converted only when nothing is lost, the exact shape, and sizes
checked against what arrives before anything is allocated.  Every refusal is an
``InferenceError`` carrying the status to answer with (400, 404 or 503) and a message that says
what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.bentos.pod.signature import coerce

DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
"""The protocol's datatypes numpy holds (BYTES and BF16 have no numpy dtype: refused)."""
NUMPY_DATATYPES = {dtype: name for name, dtype in DATATYPES.items()}
MAX_DIMENSIONS = 32


class InferenceError(Exception):
    """A request the protocol answers with ``status`` (400 unless said) and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The protocol's name for a numpy dtype (``float32`` → ``FP32``)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name == "bfloat16":
        return "BF16"
    try:
        return NUMPY_DATATYPES[name]
    except KeyError:
        raise InferenceError(f"dtype {name} has no Open Inference Protocol datatype", 500) from None


@dataclass(frozen=True)
class TensorMeta:
    """A tensor as model metadata shows it: ``-1`` for a dimension of any size (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelMeta:
    """What ``GET /v2/models/{name}`` answers; ``name`` and ``version`` are the registry's."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": [tensor.to_json() for tensor in self.inputs],
                "outputs": [tensor.to_json() for tensor in self.outputs]}

    def check_target(self, name: str, version: str | None) -> None:
        """404 unless the request names this model (and, if it names one, this version)."""
        if name != self.name:
            raise InferenceError(f"model {name!r} is not served here; this server serves {self.name!r}", 404)
        if version not in (None, "", self.version):
            raise InferenceError(f"{self.name} version {version!r} is not served here; this server serves version "
                                 f"{self.version}", 404)


def check_shape(shape: Any) -> tuple[int, ...]:
    """A request's ``shape``: a list of at most MAX_DIMENSIONS non-negative integers."""
    if (not isinstance(shape, Sequence) or isinstance(shape, str | bytes) or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InferenceError(f"shape must be a list of at most {MAX_DIMENSIONS} non-negative integers, got "
                             f"{str(shape)[:100]}")
    return tuple(shape)


def read_input(expected: TensorMeta, *, name: Any, datatype: Any, shape: Any,
               check: Callable[[np.ndarray], np.ndarray] | None, data: Any = None,
               raw: bytes | memoryview | None = None) -> np.ndarray:
    """One input tensor as a checked array of the model's dtype, from ``data`` (JSON values, flat or
    nested, or typed gRPC contents) or ``raw`` (little-endian bytes, row-major)."""
    if name != expected.name:
        raise InferenceError(f"unknown input {str(name)[:100]!r}: this model takes one input, {expected.name!r}")
    if datatype != expected.datatype:
        raise InferenceError(f"input {expected.name!r} must be {expected.datatype}, got {str(datatype)[:20]}")
    dims = check_shape(shape)
    dtype = np.dtype(DATATYPES[expected.datatype])
    count = math.prod(dims)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InferenceError(f"input {expected.name!r} of shape {list(dims)} and datatype {expected.datatype} "
                                 f"takes {count * dtype.itemsize} bytes, got {len(raw)}")
        data = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).astype(dtype, copy=False)
    elif data is None:
        raise InferenceError(f"input {expected.name!r} carries no data")
    try:
        array = coerce(data, dtype.name)
    except ValueError as exc:
        raise InferenceError(f"input {expected.name!r}: {exc}") from None
    if array.size != count:
        raise InferenceError(f"input {expected.name!r} declares shape {list(dims)} ({count} values) but "
                             f"carries {array.size}")
    array = array.reshape(dims)
    if check is not None:
        try:
            array = check(array)
        except ValueError as exc:
            raise InferenceError(f"input {expected.name!r}: {exc}") from None
    return array


def check_outputs(expected: TensorMeta, names: Sequence[Any]) -> None:
    """The outputs a request asks for must be ones the model has."""
    for name in names:
        if name != expected.name:
            raise InferenceError(f"unknown output {str(name)[:100]!r}: this model has one output, "
                                 f"{expected.name!r}")


def little_endian_bytes(array: np.ndarray) -> bytes:
    """The binary form both transports send: row-major, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
