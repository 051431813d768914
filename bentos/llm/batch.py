"""The running batch of a continuous-batching decoder: rows join and leave between steps.

Prompts are left-padded so that every row's next token sits in the last column; each
row's positions come from its own attention mask, so padding changes nothing a row
computes.  A row that finishes is dropped from the key/value cache at once, and a new
request's prompt is run (prefilled) on its own and then merged into the running batch,
its cache left-padded to the batch's length.  Pure torch on a transformers model: no
threads, no I/O (``engine`` drives it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class Batch:
    """Rows decoding together: their cache, attention mask [rows, length] and last logits."""

    cache: DynamicCache
    mask: torch.Tensor
    logits: torch.Tensor  # [rows, vocab]: the distribution of each row's next token

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])


def _positions(mask: torch.Tensor, new: int) -> torch.Tensor:
    """Each row's positions for its last ``new`` columns, counting only unpadded columns."""
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, -new:]


@torch.inference_mode()
def prefill(model: Any, prompts: list[list[int]], pad_id: int) -> Batch:
    """Run the prompts (left-padded into one forward pass); their caches and next-token logits."""
    device = model.device
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask, length), cache=cache,
                use_cache=True, logits_to_keep=1)
    return Batch(cache, mask, out.logits[:, -1, :].float())


@torch.inference_mode()
def step(model: Any, batch: Batch, tokens: torch.Tensor) -> None:
    """Feed each row its chosen token; the batch's logits become the next token's."""
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.rows, 1))], dim=1)
    out = model(input_ids=tokens.view(-1, 1).to(batch.mask.device), attention_mask=batch.mask,
                position_ids=_positions(batch.mask, 1), cache=batch.cache, use_cache=True)
    batch.logits = out.logits[:, -1, :].float()


def keep(batch: Batch, rows: list[int]) -> None:
    """Drop every row not in ``rows`` (in that order), then the columns no row uses any more."""
    if rows == list(range(batch.rows)):
        return
    index = torch.tensor(rows, dtype=torch.long, device=batch.mask.device)
    batch.cache.batch_select_indices(index)
    batch.mask = batch.mask[index]
    batch.logits = batch.logits[index]
    _trim(batch)


def merge(batch: Batch, joining: Batch) -> None:
    """Append ``joining``'s rows to ``batch``: the shorter side's cache and mask are left-padded."""
    width = max(batch.mask.shape[1], joining.mask.shape[1])
    for target, source in zip(_kv_layers(batch.cache), _kv_layers(joining.cache), strict=True):
        target.keys = torch.cat([_pad_left(target.keys, width), _pad_left(source.keys, width)], dim=0)
        target.values = torch.cat([_pad_left(target.values, width), _pad_left(source.values, width)], dim=0)
    batch.mask = torch.cat([_pad_left(batch.mask, width, dim=1), _pad_left(joining.mask, width, dim=1)], dim=0)
    batch.logits = torch.cat([batch.logits, joining.logits], dim=0)


def _kv_layers(cache: Any) -> list[Any]:
    """A ``DynamicCache``'s layers, each with ``keys`` and ``values`` (transformers types them as a union
    with layer kinds a dynamic cache never holds)."""
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _trim(batch: Batch) -> None:
    """Cut the leading columns that are padding in every row (a long prompt that left)."""
    used = batch.mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else batch.mask.shape[1]
    if first == 0:
        return
    for layer in _kv_layers(batch.cache):
        layer.keys = layer.keys[..., first:, :]
        layer.values = layer.values[..., first:, :]
    batch.mask = batch.mask[:, first:]
