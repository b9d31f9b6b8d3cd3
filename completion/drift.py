"""How far a reused document cache is from a fresh encoding of the same tokens (PIE's drift).

PIE fixes the positions of reused keys, not their content: a token after an edit keeps the
K/V it got with the old text before it. These functions measure the result against a full
re-encode of the same ids: the next-token distribution (KL to the full one, top-1 agreement)
and, per layer and token, the relative deviation of keys and values. `splice bench edits`
reports them next to exact match, and the service's audit option (`debug.compare_full`) uses
`next_token_drift` for one completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from splice.completion.pie import DocumentKV
from splice.completion.token_edits import TokenRun


@dataclass(frozen=True)
class NextTokenDrift:
    kl: float  # KL(full || reused) of the next-token distributions, in nats
    top1_agree: bool  # both distributions' most likely token is the same


def next_token_drift(full_logits: torch.Tensor, logits: torch.Tensor) -> NextTokenDrift:
    """Compare the next-token distribution after a reused cache with the full encoding's."""
    if full_logits.shape != logits.shape:
        raise ValueError(f"logits differ in shape: {tuple(full_logits.shape)} vs {tuple(logits.shape)}")
    p = torch.log_softmax(full_logits.float(), dim=-1)
    q = torch.log_softmax(logits.float(), dim=-1)
    kl = float((p.exp() * (p - q)).sum().clamp_min(0.0))
    return NextTokenDrift(kl, int(full_logits.argmax()) == int(logits.argmax()))


@torch.inference_mode()
def kv_deviation(full: DocumentKV, reused: DocumentKV) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative L2 deviation of keys and values from the full encoding's, each [layers, tokens]
    (norms over heads and head dims). The two caches must hold the same ids."""
    if full.ids != reused.ids:
        raise ValueError("the caches hold different token sequences")
    keys = [_relative(f, r) for f, r in zip(full.keys, reused.keys, strict=True)]
    values = [_relative(f, r) for f, r in zip(full.values, reused.values, strict=True)]
    return torch.stack(keys), torch.stack(values)


def _relative(ref: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    ref, got = ref.float(), got.float()  # [H_kv, S, D]
    return (got - ref).norm(dim=(0, 2)) / ref.norm(dim=(0, 2)).clamp_min(1e-12)


def distance_after_edit(script: Sequence[TokenRun], length: int) -> list[int | None]:
    """For each new position, how many tokens after the end of the nearest edit before it it
    lies (0: the first token after an edit; an inserted token counts from its run's start);
    None for tokens before the first edit."""
    out: list[int | None] = [None] * length
    last_edit: int | None = None  # new index where the text after the latest edit starts
    for run in script:
        if run.op == "keep":
            for i in range(run.new_start, run.new_end):
                out[i] = None if last_edit is None else i - last_edit
        elif run.op == "insert":
            for i in range(run.new_start, run.new_end):
                out[i] = i - run.new_start
            last_edit = run.new_end
        else:  # delete: the tokens after it follow an edit
            last_edit = run.new_start
    return out
