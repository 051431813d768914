"""Choosing each row's next token from its logits: greedy, or temperature and nucleus (top-p)
sampling with the request's own random generator, so a ``seed`` makes a request repeatable
whatever else shares its batch.  Pure torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    """0 is greedy: the most likely token, as ``generate(do_sample=False)`` picks it."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        generator = torch.Generator(device=device)
        if self.seed is not None:
            generator.manual_seed(self.seed)
        else:
            generator.seed()
        return generator


def choose(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of ``logits`` [rows, vocab]."""
    chosen = logits.argmax(dim=-1)
    for row, (param, generator) in enumerate(zip(params, generators, strict=True)):
        if param.temperature == 0:
            continue
        # In float64 and shifted so the likeliest logit is 0: a tiny temperature then sends the
        # rest to -inf (probability 0); unshifted, or in float32 (where 1e-300 is 0), it made NaN.
        shifted = (logits[row] - logits[row].max()).double()
        probs = torch.softmax(shifted / param.temperature, dim=-1)
        if param.top_p < 1.0:
            probs = _nucleus(probs, param.top_p)
        chosen[row] = torch.multinomial(probs, 1, generator=generator)[0]
    return chosen


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (at least one)."""
    ordered, order = probs.sort(descending=True)
    before = ordered.cumsum(-1) - ordered  # the mass of the tokens more likely than each
    ordered[before >= top_p] = 0
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return kept / kept.sum()
