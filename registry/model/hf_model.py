"""Hugging Face-style model directories (format ``hf``): what is safe to accept, and the facts
recorded on the version.

A model directory holds ``config.json``, ``safetensors`` weights and tokenizer files.  It
is refused when it carries pickles (``pytorch_model.bin``, ``*.pt`` … load by unpickling,
which runs code) or when loading it would run the model's own Python code (``*.py`` files
or an ``auto_map``: transformers' ``trust_remote_code``) unless the push allowed code.
The facts (architecture, parameters, dtype, context length, chat template, memory to load
the weights) come from ``config.json`` and the ``safetensors`` headers alone, so the registry
reads them from the stored bytes itself, without torch or transformers, and the operator
can compare them with a deployment's resources.  The same checks run on a directory
(the client, before pushing; the server, before loading) and on the pushed archive (the
registry, before accepting it).
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from modelyard.registry.model.chat_templates import unbounded_reason

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
MAX_JSON_BYTES = 16 << 20
"""config.json, tokenizer_config.json and friends are small; larger ones are refused unread."""
MAX_HEADER_BYTES = 16 << 20
"""A header is JSON parsed whole; real ones are kilobytes (a few hundred KB for the largest
mixtures of experts), the safetensors library allows 100 MB."""
MAX_HEADERS_BYTES = 64 << 20
"""All of a directory's headers together."""
CONFIG = "config.json"
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8",
                "U8": "uint8", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
CONVERT_HINT = ("convert it to safetensors first: load it once where you trust it, then "
                "model.save_pretrained(directory, safe_serialization=True)")


class UnsafeModelDirectory(ValueError):
    """The directory or archive cannot be accepted as format ``hf``; the message says why and what to do."""


@dataclass(frozen=True)
class HfFacts:
    architecture: str
    model_type: str
    task: str | None
    """``generate`` (a causal language model), ``embed`` (an encoder) or None (neither is served)."""
    parameters: int
    dtype: str
    context_length: int | None
    chat_template: bool
    load_bytes: int
    """The weights' bytes: the memory a replica needs for them before any request."""
    needs_code: bool
    allow_code: bool = False

    def metadata(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tree:
    """A model directory seen as files: a real directory, or the members of an archive."""

    files: dict[str, int]  # relative POSIX path → size
    open: Callable[[str], IO[bytes]]


def directory_tree(root: Path) -> Tree:
    """A directory's regular files, leaving out hidden files and folders.

    A symbolic link is refused, never followed: a link to a file outside the directory would
    upload that file's contents to every reader of the registry (a ``README.md`` pointing at a
    secret), and a link inside it would be sent as a copy the pod cannot tell from a file."""
    files: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink():
            target = Path(os.readlink(path))
            where = "outside the directory" if not (path.parent / target).resolve().is_relative_to(
                root.resolve()) else "inside the directory"
            raise UnsafeModelDirectory(
                f"{relative.as_posix()} is a symbolic link (to {str(target)[:200]}, {where}): links are not pushed. "
                "Replace it with the file itself, or remove it")
        if not path.is_file():
            continue
        files[relative.as_posix()] = path.stat().st_size
    return Tree(files, lambda name: open(root / name, "rb"))


def archive_tree(archive: tarfile.TarFile) -> Tree:
    """An archive's regular files; links, devices and paths that leave the directory are refused
    here, on upload, rather than when a pod extracts it."""
    members: dict[str, tarfile.TarInfo] = {}
    seen: set[str] = set()
    for member in archive.getmembers():
        name = unique_member_name(member, seen)
        if member.isdir():
            continue
        if not member.isreg():
            raise UnsafeModelDirectory(f"{member.name[:200]!r} in the archive is a link or a special file")
        members[name] = member

    def opened(name: str) -> IO[bytes]:
        handle = archive.extractfile(members[name])
        assert handle is not None
        return handle

    return Tree({name: member.size for name, member in members.items()}, opened)


def member_name(member: tarfile.TarInfo) -> str:
    """A member's path relative to the archive's root: ``./config.json`` is ``config.json``.

    The one judge of a name, for the registry reading an archive and for the pod extracting it,
    so both see the same files.  Anything but a clean relative path is refused
    (``UnsafeModelDirectory``): an absolute path, an empty, ``.`` or ``..`` part, a NUL or a
    backslash, or a first part starting with a dot beyond the single ``./`` (``..config.json`` must
    not count as ``config.json`` for one reader and as another file for the other)."""
    raw = member.name
    name = raw[2:] if raw.startswith("./") else raw
    if name in ("", "."):
        return "."  # the archive's root directory
    name = name.removesuffix("/") if member.isdir() else name
    parts = name.split("/")
    if (name.startswith(("/", ".")) or "\\" in name or "\0" in name
            or any(part in ("", ".", "..") for part in parts)):
        raise UnsafeModelDirectory(f"{raw[:200]!r} in the archive is not a clean relative path inside the directory")
    return name


def unique_member_name(member: tarfile.TarInfo, seen: set[str]) -> str:
    """``member_name``, refusing a name that an earlier member already had (after normalising):
    a reader would take the first and an extractor the last."""
    name = member_name(member)
    if name in seen and name != ".":
        raise UnsafeModelDirectory(f"{member.name[:200]!r} appears twice in the archive")
    seen.add(name)
    return name


def is_model_directory(names: Iterable[str]) -> bool:
    return CONFIG in set(names)


def inspect(tree: Tree, *, allow_code: bool, label: str) -> HfFacts:
    """The facts of a model directory, or UnsafeModelDirectory saying why it is refused."""
    pickles = sorted(name for name in tree.files if name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeModelDirectory(
            f"{label} holds pickled files ({', '.join(pickles[:5])}): loading them runs arbitrary code, so they "
            f"are refused. Remove them (training leftovers such as training_args.bin), or {CONVERT_HINT}")
    if CONFIG not in tree.files:
        raise UnsafeModelDirectory(f"{label} has no {CONFIG}: it is not a Hugging Face model directory")
    config = _json(tree, CONFIG, label)
    weights = sorted(name for name in tree.files if name.endswith(".safetensors"))
    if not weights:
        raise UnsafeModelDirectory(f"{label} has no .safetensors weights; {CONVERT_HINT}")
    code = sorted(name for name in tree.files if name.endswith(".py"))
    auto_map = "auto_map" in config or "auto_map" in _json(tree, "tokenizer_config.json", label, missing={})
    needs_code = bool(code) or auto_map
    if needs_code and not allow_code:
        what = f"Python files ({', '.join(code[:5])})" if code else "an auto_map in its configuration"
        raise UnsafeModelDirectory(
            f"{label} carries {what}: serving it would run that code (transformers' trust_remote_code). Push it "
            "with --allow-code if you trust it; the version records that it runs code")
    parameters, load_bytes, dtypes, positions = 0, 0, Counter[str](), list[int]()
    budget = [MAX_HEADERS_BYTES]
    for name in weights:
        count, size, kinds = _safetensors(tree, name, label, budget, positions)
        parameters, load_bytes = parameters + count, load_bytes + size
        dtypes.update(kinds)
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else ""
    return HfFacts(
        architecture=architecture,
        model_type=str(config.get("model_type") or ""),
        task=_task(architecture, "modules.json" in tree.files),
        parameters=parameters,
        dtype=TORCH_DTYPES.get(dtypes.most_common(1)[0][0], "mixed") if dtypes else "unknown",
        context_length=_context_length(config, _json(tree, "sentence_bert_config.json", label, missing={}), positions),
        chat_template=_has_chat_template(tree, label),
        load_bytes=load_bytes,
        needs_code=needs_code,
        allow_code=allow_code,
    )


def _task(architecture: str, sentence_transformers: bool) -> str | None:
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "generate"
    if sentence_transformers or architecture.endswith("Model"):
        return "embed"
    return None


def _context_length(config: dict[str, Any], sentence_config: dict[str, Any], positions: list[int]) -> int | None:
    """The longest sequence the model takes: what its configuration claims, bounded by what its
    weights can hold (a learned position table's rows; for rotary positions, a ``rope_scaling``'s
    original length times its factor).  A claim nothing bounds is capped by the server's ceiling."""
    sources: list[dict[str, Any]] = [config, text if isinstance(text := config.get("text_config"), dict) else {}]
    lengths = [value for source in sources for key in CONTEXT_KEYS
               if isinstance(value := source.get(key), int) and not isinstance(value, bool) and value > 0]
    lengths += [rows for rows in positions if rows > 0]
    for source in sources:
        scaling = source.get("rope_scaling")
        if isinstance(scaling, dict):
            original, factor = scaling.get("original_max_position_embeddings"), scaling.get("factor")
            if (isinstance(original, int) and not isinstance(original, bool) and original > 0
                    and isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor <= 1024):
                lengths.append(int(original * factor))
    limit = sentence_config.get("max_seq_length")
    if isinstance(limit, int) and limit > 0:
        lengths.append(limit)
    return min(lengths) if lengths else None


def _has_chat_template(tree: Tree, label: str) -> bool:
    """Whether the directory has a chat template; one that is obviously unbounded is refused."""
    sources = []
    if "chat_template.jinja" in tree.files:
        if tree.files["chat_template.jinja"] > MAX_JSON_BYTES:
            raise UnsafeModelDirectory(f"{label}'s chat_template.jinja is larger than {MAX_JSON_BYTES} bytes")
        with tree.open("chat_template.jinja") as handle:
            sources.append(("chat_template.jinja", handle.read(MAX_JSON_BYTES).decode("utf-8", "replace")))
    for name in ("chat_template.json", "tokenizer_config.json"):
        value = _json(tree, name, label, missing={}).get("chat_template")
        templates = value if isinstance(value, list) else [{"template": value}]
        sources += [(name, t["template"]) for t in templates if isinstance(t, dict) and isinstance(t.get("template"), str)]
    for name, source in sources:
        if (why := unbounded_reason(source)) is not None:
            raise UnsafeModelDirectory(f"{label}'s chat template (in {name}) {why}: a template runs on every chat "
                                       "request, so it is refused")
    return bool(sources)


def _json(tree: Tree, name: str, label: str, missing: dict[str, Any] | None = None) -> dict[str, Any]:
    if name not in tree.files:
        if missing is not None:
            return missing
        raise UnsafeModelDirectory(f"{label} has no {name}")
    if tree.files[name] > MAX_JSON_BYTES:
        raise UnsafeModelDirectory(f"{label}'s {name} is larger than {MAX_JSON_BYTES} bytes")
    with tree.open(name) as handle:
        try:
            value = json.loads(handle.read(MAX_JSON_BYTES + 1))
        except ValueError as exc:
            raise UnsafeModelDirectory(f"{label}'s {name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UnsafeModelDirectory(f"{label}'s {name} is not a JSON object")
    return value


POSITION_TABLES = ("wpe.weight", "position_embeddings.weight", "embed_positions.weight")
"""Learned position embeddings (GPT-2, BERT, OPT …): their rows are the positions the model knows."""


def _safetensors(tree: Tree, name: str, label: str, budget: list[int],
                 positions: list[int]) -> tuple[int, int, Counter[str]]:
    """Parameters, data bytes and bytes per dtype of one safetensors file, from its header
    (``budget``: the header bytes the directory may still have; ``positions`` gets the rows of
    each learned position table)."""
    size = tree.files[name]
    with tree.open(name) as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UnsafeModelDirectory(f"{label}'s {name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise UnsafeModelDirectory(f"{label}'s {name} is not a safetensors file (header of {length} bytes)")
        budget[0] -= length
        if budget[0] < 0:
            raise UnsafeModelDirectory(f"{label}'s safetensors headers add up to more than {MAX_HEADERS_BYTES} bytes")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise UnsafeModelDirectory(f"{label}'s {name} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise UnsafeModelDirectory(f"{label}'s {name} is not a safetensors file")
    parameters, kinds, spans = 0, Counter[str](), []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = 1
            valid = dtype in DTYPE_BYTES and isinstance(shape, list) and _whole(start) and _whole(stop)
            for dim in shape:  # whole, non-negative numbers: no [-2, -2] (a positive count) nor [2.9, 1.5]
                valid = valid and _whole(dim)
                count *= dim if valid else 0
            valid = valid and start <= stop and stop - start == count * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise UnsafeModelDirectory(f"{label}'s {name} has a damaged entry for tensor {str(key)[:100]!r}")
        parameters += count
        kinds[dtype] += stop - start
        spans.append((start, stop, str(key)))
        if str(key).endswith(POSITION_TABLES) and shape:
            positions.append(shape[0])
    end = 0  # as the safetensors library requires: the tensors tile the data, no overlap and no gap
    for start, stop, key in sorted(spans):
        if start != end:
            raise UnsafeModelDirectory(f"{label}'s {name} has tensor {key[:100]!r} at bytes {start}-{stop}, "
                                       f"{'overlapping another' if start < end else 'after a gap'}: a damaged header")
        end = stop
    if 8 + length + end != size:
        raise UnsafeModelDirectory(f"{label}'s {name} is {size} bytes but its header describes {8 + length + end}")
    return parameters, end, kinds


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
