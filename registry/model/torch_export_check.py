"""What a ``torch.export`` archive (``.pt2``) may hold before anything loads it.

``torch.export.load`` is not built for hostile files.  Reading its loader (torch
2.13) shows every way an archive can make it run code, and each is refused here,
from the zip listing and a few small JSON and pickle entries, without torch:

- weights or constants stored with ``use_pickle: true`` (``torch.load`` with
  ``weights_only=False``), constants that are custom or opaque objects (unpickled
  whatever their flag says), and the legacy ``data/weights/<model>.pt`` and
  ``data/constants/<model>.pt`` pickles;
- compiled AOTInductor code under ``data/aotinductor/`` (a native library);
- sample inputs whose pickle reaches anything but tensor-rebuilding code (torch
  unpickles them, and retries without restrictions when its safe unpickler fails);
- graph nodes whose target is not an operator (the loader resolves a target by
  walking attributes from ``torch``, so a name can reach any callable);
- symbolic shape expressions that are not plain sympy terms (the loader passes
  them to ``sympy.sympify``, which evaluates Python).

The registry runs this on upload and the model server again before loading.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from modelyard.registry.model.pickle_scan import UnsafePickle, check_data_pickle

MAX_JSON_ENTRY_BYTES = 64 << 20
"""Largest graph or payload config read (a graph of a few hundred thousand nodes)."""
MAX_SAMPLE_PICKLE_BYTES = 16 << 20

_TENSOR_CONSTANT_PREFIX = "tensor_"
_OPERATOR_TARGET = re.compile(
    r"^(torch\.ops\.[A-Za-z][A-Za-z0-9_]*\.[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)?"
    r"|math\.[a-z][a-z0-9_]*)$")
_PYTHON_OPERATORS = frozenset({
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "getitem", "eq", "ne", "lt",
    "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "matmul", "truth",
})
_SYMPY_CALLS = frozenset({
    # sympy's own terms, as ``srepr`` writes them
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality", "And",
    "Or", "Not", "Xor", "floor", "ceiling", "sqrt", "Piecewise", "ExprCondPair", "Tuple",
    # torch.utils._sympy.functions
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
    *(f"OpaqueUnaryFn_{fn}" for fn in ("acos", "asin", "asinh", "atan", "cos", "cosh", "exp", "log", "log2", "sin",
                                        "sinh", "sqrt", "tan", "tanh")),
})
_SYMPY_KEYWORDS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "nonzero", "integer", "real",
                             "finite", "rational", "even", "odd", "commutative", "precision", "evaluate"})
_SYMPY_CONSTANTS = frozenset({"True", "False", "oo", "zoo", "nan"})
_SYMPY_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z][A-Za-z0-9_]*)|(?P<number>[0-9]+)|(?P<string>'[A-Za-z0-9_.+\-]*')"
                          r"|(?P<punct>[(),=+\-*/]))")


class UnsafeArchive(ValueError):
    """The archive could run code when loaded; the message says which entry and why."""


def check_torch_export(archive: zipfile.ZipFile, label: str) -> None:
    """Raise UnsafeArchive unless ``archive`` holds only data torch loads without running it."""
    for info in archive.infolist():
        inner = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
        where = f"{label}: {inner}"
        if inner.startswith("data/aotinductor/"):
            raise UnsafeArchive(f"{where} is AOTInductor-compiled native code, which runs when loaded: export "
                                "without compiling (torch.export.save of the exported program)")
        if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
            raise UnsafeArchive(f"{where} is a pickle (the legacy weights layout): save the program again with "
                                "torch.export.save from a current torch")
        if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith("_config.json"):
            _check_payload_config(_json_entry(archive, info, where), where,
                                  constants=inner.startswith("data/constants/"))
        elif inner.startswith("data/sample_inputs/") and info.file_size:
            _check_sample_inputs(archive, info, where)
        elif inner.startswith("models/") and inner.endswith(".json"):
            _check_graph(_json_entry(archive, info, where), where)


def _json_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> Any:
    if info.file_size > MAX_JSON_ENTRY_BYTES:
        raise UnsafeArchive(f"{where} is {info.file_size} bytes, more than the {MAX_JSON_ENTRY_BYTES} checked")
    try:
        with archive.open(info) as entry:
            return json.loads(entry.read(MAX_JSON_ENTRY_BYTES + 1))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchive(f"{where} is not readable JSON ({exc})") from None


def _check_payload_config(config: Any, where: str, *, constants: bool) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UnsafeArchive(f"{where} is not a torch.export payload config")
    for name, meta in entries.items():
        if not isinstance(meta, dict):
            raise UnsafeArchive(f"{where}: entry {name!r} is not a payload description")
        if meta.get("use_pickle"):
            raise UnsafeArchive(f"{where}: {name!r} is stored as a pickle (use_pickle), which runs code when "
                                "loaded; plain tensors are stored as raw bytes, so export the model without "
                                "tensor subclasses or custom objects")
        if constants and not str(meta.get("path_name", "")).startswith(_TENSOR_CONSTANT_PREFIX):
            raise UnsafeArchive(f"{where}: constant {name!r} is a custom or opaque object, which is unpickled "
                                "when loaded; only tensor constants are accepted")


def _check_sample_inputs(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> None:
    try:
        with archive.open(info) as entry, zipfile.ZipFile(entry) as saved:
            pickles = [item for item in saved.infolist() if item.filename.rsplit("/", 1)[-1].endswith(".pkl")]
            if not pickles:
                raise UnsafeArchive(f"{where} holds no torch.save data")
            for item in pickles:
                if item.file_size > MAX_SAMPLE_PICKLE_BYTES:
                    raise UnsafeArchive(f"{where}: {item.filename} is larger than the {MAX_SAMPLE_PICKLE_BYTES} "
                                        "bytes checked")
                check_data_pickle(saved.read(item), f"{where} ({item.filename})")
    except UnsafePickle as exc:
        raise UnsafeArchive(str(exc)) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UnsafeArchive(f"{where} is not a torch.save zip archive ({exc})") from None


def _strings_under(document: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a JSON document (iteratively: graphs are deep)."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name, value in node.items():
                if name == key:
                    yield value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _check_graph(graph: Any, where: str) -> None:
    for target in _strings_under(graph, "target"):
        if not _is_operator(target):
            raise UnsafeArchive(f"{where}: a node calls {str(target)[:200]!r}, which is not an operator: refused")
    for expression in _strings_under(graph, "expr_str"):
        _check_sympy_term(expression, where)


def _is_operator(target: Any) -> bool:
    if not isinstance(target, str) or "__" in target:
        return False
    if target.startswith("_operator."):
        return target.removeprefix("_operator.") in _PYTHON_OPERATORS
    return bool(_OPERATOR_TARGET.match(target))


def _check_sympy_term(expression: Any, where: str) -> None:
    """Admit what ``sympy.srepr`` writes for shape arithmetic: calls of known terms, integers,
    keyword flags and quoted symbol names.  No attribute access, indexing or other names."""
    if not isinstance(expression, str) or len(expression) > 100_000:
        raise UnsafeArchive(f"{where}: a symbolic shape is not a short string")
    position, previous = 0, ""
    tokens = []
    while position < len(expression.rstrip()):
        match = _SYMPY_TOKEN.match(expression, position)
        if not match:
            raise UnsafeArchive(f"{where}: symbolic shape {expression[:200]!r} is not a plain sympy term")
        tokens.append((match.lastgroup, match.group(match.lastgroup or "")))
        position = match.end()
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind != "name":
            previous = text
            continue
        allowed = (_SYMPY_CALLS if following == "(" else _SYMPY_KEYWORDS if following == "=" and previous in ("(", ",")
                   else _SYMPY_CONSTANTS)
        if text not in allowed:
            raise UnsafeArchive(f"{where}: symbolic shape {expression[:200]!r} uses {text!r}, which is not a "
                                "known sympy term")
        previous = text
