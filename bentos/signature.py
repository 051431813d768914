"""The model's input contract, from the version's metadata, checked per request.

BentoML's own ``Shape`` validator reshapes whatever arrives into the declared
shape, so 64 flat numbers would pass for one 8×8 image.  Here the shape must
match exactly (any batch size), with a message that says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # first dimension -1: the batch
    dtype: str

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> InputSpec | None:
        spec = metadata.get("input")
        if not spec:
            return None
        return cls(shape=tuple(int(d) for d in spec["shape"]), dtype=str(spec.get("dtype", "float32")))

    def check(self, array: np.ndarray) -> np.ndarray:
        if array.ndim != len(self.shape) or tuple(array.shape[1:]) != self.shape[1:]:
            raise ValueError(f"expected an array of shape {list(self.shape)} (the first dimension is the batch), "
                             f"got shape {list(array.shape)}")
        if array.shape[0] == 0:
            raise ValueError("the batch is empty")
        return array

    def example(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, *self.shape[1:]), dtype=self.dtype)
