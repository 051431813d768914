"""Read a pickle's opcodes without running them, and admit only tensor data.

A pickle is a program: its ``GLOBAL`` opcodes import any callable and ``REDUCE``
calls it, which is how a model file runs code.  ``torch.export`` archives carry
one pickle torch reads at load time (the sample inputs, a ``torch.save`` zip) and
torch falls back to an unrestricted unpickler when its restricted one fails.  So
the pickle is admitted only if every callable it could reach is one that rebuilds
tensors, storages and plain containers: then no unpickler, restricted or not, can
do more than build data.  Nothing here unpickles; ``pickletools`` only parses.
"""

from __future__ import annotations

import pickletools

_TORCH_DTYPES = frozenset({
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32", "chalf", "complex64",
    "cfloat", "complex128", "cdouble", "uint8", "int8", "int16", "short", "int32", "int", "int64", "long", "bool",
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
})
_TORCH_STORAGES = frozenset({
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "ComplexFloatStorage",
    "ComplexDoubleStorage", "ByteStorage", "CharStorage", "ShortStorage", "IntStorage", "LongStorage",
    "BoolStorage", "UntypedStorage",
})
SAFE_GLOBALS = frozenset(
    {("torch._utils", name) for name in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")}
    | {("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device")}
    | {("torch", name) for name in _TORCH_DTYPES | _TORCH_STORAGES}
)
"""(module, name) pairs a data pickle written by ``torch.save`` of tensors and containers uses."""

# Opcodes that import or look up a callable by a name not written beside them.
_INDIRECT = {"STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}


class UnsafePickle(ValueError):
    """The pickle could call something other than tensor-rebuilding code."""


def check_data_pickle(data: bytes, what: str) -> None:
    """Raise UnsafePickle unless every global ``data`` refers to is in :data:`SAFE_GLOBALS`.

    ``STACK_GLOBAL`` (a name assembled on the stack) and the extension registry are
    refused outright: ``torch.save`` writes protocol 2, which names globals inline.
    """
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in _INDIRECT:
                raise UnsafePickle(f"{what} looks up a callable indirectly ({opcode.name}): refused")
            if opcode.name in ("GLOBAL", "INST"):
                module, _, name = str(argument).partition(" ")
                if (module, name) not in SAFE_GLOBALS:
                    raise UnsafePickle(f"{what} refers to {module}.{name}, which is not tensor data: "
                                       "it could run code when loaded, so it is refused")
    except UnsafePickle:
        raise
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError and friends on garbage
        raise UnsafePickle(f"{what} is not a readable pickle ({exc})") from None
