"""Document KV caches and the execution of a `ReusePlan` (Positional Integrity Encoding).

A `DocumentKV` is a plain structure of per-layer buffers for one token sequence at positions
0..n-1: the keys as attention uses them (after RoPE, at the current positions), the values,
the keys as they were first encoded (`orig_keys`) and, per token, how far it has moved since
(`offset`). Current keys are always recomputed as R(offset) . orig_keys, a single rotation from
the original, so hundreds of edits never compound rounding error.

`apply_plan` builds the new sequence's cache: reused tokens are gathered (and re-rotated to
their new positions) into buffers allocated once in new-sequence order, then every token to
encode is run through the model in ONE pass that writes its K/V into those buffers in place,
each attending to everything at or before its new position (reused tokens and encoded ones)
through a custom 4D attention mask. A `draft` given to `apply_plan` rides on the same
pass after the sequence (`DraftRows`: the suggestion being typed through, verified without a
decode pass of its own); it is not part of the document.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from splice.completion.pie_plan import ReusePlan
from splice.completion.runner import ModelRunner
from splice.kernels.pie_rotate import rerotate_keys_
from splice.kernels.rope import RopeSpec, rotate_keys


@dataclass
class DocumentKV:
    """The KV cache of one token sequence. Tensors are per layer, shaped [H_kv, S, D]."""

    ids: list[int]
    keys: list[torch.Tensor]  # at current positions (what attention reads)
    values: list[torch.Tensor]
    orig_keys: list[torch.Tensor]  # as first encoded
    offset: torch.Tensor  # [S] long: current position - position at encoding
    logits: torch.Tensor | None  # [V] fp32 after the last token, None if stale

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(KV heads, tokens, head dim) per layer: models such as OpenELM differ by layer."""
        return [(k.shape[0], k.shape[1], k.shape[2]) for k in self.keys]

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys, *self.values, *self.orig_keys]
        return sum(t.numel() * t.element_size() for t in tensors) + self.offset.numel() * 8

    def to_cache(self, config: PretrainedConfig) -> DynamicCache:
        """A DynamicCache to decode from; decoding appends to copies, this document is untouched."""
        return _cache_of(config, self.keys, self.values)


@dataclass(frozen=True)
class DraftRows:
    """A draft fed right after a sequence in the pass that encoded its last token: the drafted
    tokens, the logits [1 + k, V] after the sequence's last token and after each drafted one,
    and each layer's K/V of the sequence followed by the draft ([H_kv, n + k, D])."""

    tokens: list[int]
    logits: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def cache(self, config: PretrainedConfig, accepted: int) -> DynamicCache:
        """A cache to decode from: the sequence and its first `accepted` drafted tokens (views of
        the pass's buffers, no copy; decoding appends to copies)."""
        end = self.keys[0].shape[1] - len(self.tokens) + accepted
        return _cache_of(config, [k[:, :end] for k in self.keys], [v[:, :end] for v in self.values])


@dataclass(frozen=True)
class ApplyStats:
    reused: int
    encoded: int
    rotated: int
    seconds: float
    draft: DraftRows | None = field(default=None, compare=False, repr=False)  # the draft's pass, if run


def _cache_of(config: PretrainedConfig, keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    """A DynamicCache that references `keys`/`values` ([H_kv, S, D] per layer) without copying.

    Safe because DynamicLayer only ever grows by concatenation into new tensors, never in place.
    """
    cache = DynamicCache(config=config)
    for index, (layer, k, v) in enumerate(zip(cache.layers, keys, values, strict=True)):
        k4, v4 = k.unsqueeze(0), v.unsqueeze(0)  # [1, H_kv, S, D]
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(k4, v4)
            layer.keys, layer.values = k4, v4
        else:  # another layer kind: let it copy
            cache.update(k4, v4, index)
    return cache


def _layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"document caches need full-attention KV layers, got {type(layer).__name__}")
        out.append((keys[0], values[0]))  # [H_kv, S, D] each
    return out


@torch.inference_mode()
def encode_full(model: PreTrainedModel, ids: list[int]) -> DocumentKV:
    """Plain causal prefill of the whole sequence (also the `full` method)."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    out = ModelRunner(model).run(torch.tensor([ids], device=device), cache)
    assert out.logits is not None
    layers = _layer_tensors(cache)
    keys = [k for k, _ in layers]
    return DocumentKV(
        ids=list(ids),
        keys=keys,
        values=[v for _, v in layers],
        orig_keys=keys,  # the same tensors until a token moves (never written in place)
        offset=torch.zeros(len(ids), dtype=torch.long, device=device),
        logits=out.logits[-1],
    )


@torch.inference_mode()
def apply_plan(
    model: PreTrainedModel,
    old: DocumentKV,
    new_ids: list[int],
    plan: ReusePlan,
    spec: RopeSpec | None,
    *,
    draft: Sequence[int] = (),
) -> tuple[DocumentKV, ApplyStats]:
    """Execute `plan` against `old` for the sequence `new_ids`; returns the new cache. A `draft`
    is fed after the sequence in the same pass when the plan re-encodes the last token
    (`ApplyStats.draft`; otherwise it is not run)."""
    start = time.perf_counter()
    if plan.new_length != len(new_ids):
        raise ValueError("plan and new_ids disagree on the sequence length")
    if plan.reused == 0:
        doc = encode_full(model, new_ids)
        return doc, ApplyStats(0, len(new_ids), 0, time.perf_counter() - start)
    if plan.rotate and spec is None:
        raise ValueError("re-rotation needs a RopeSpec")
    n = plan.new_length
    if not plan.encoded and plan.reuse_src == plan.reuse_dst:  # nothing changed: the same tensors
        doc = DocumentKV(list(new_ids), old.keys, old.values, old.orig_keys, old.offset, old.logits)
        return doc, ApplyStats(plan.reused, 0, 0, time.perf_counter() - start)
    device = old.offset.device
    src = torch.tensor(plan.reuse_src, dtype=torch.long, device=device)
    dst = torch.tensor(plan.reuse_dst, dtype=torch.long, device=device)
    moved = (dst - src) != 0
    offset = old.offset.index_select(0, src) + (dst - src) if plan.rotate else old.offset.index_select(0, src)
    ends = plan.encoded > 0 and plan.encode[-1] == n - 1  # the last token is encoded: fresh logits
    fed = list(draft) if ends else []
    rows = n + len(fed)

    # 1. Every layer's buffers in new order: the reused tokens are copied in, run by run (an edit
    # leaves a few contiguous runs), and the moved ones re-rotated from their originals.
    runs = _runs(src, dst)
    keys, values, orig = [], [], []
    for k, v, ko in zip(old.keys, old.values, old.orig_keys, strict=True):
        shape = (k.shape[0], rows, k.shape[2])
        bufs = [torch.empty(shape, dtype=t.dtype, device=device) for t in (k, v, ko)]
        for (o, d, length), (buf, t) in itertools.product(runs, zip(bufs, (k, v, ko), strict=True)):
            buf[:, d : d + length].copy_(t[:, o : o + length])
        keys.append(bufs[0])
        values.append(bufs[1])
        orig.append(bufs[2])
    moved_at = dst[moved]  # new indices of the reused tokens that moved
    if plan.rotate and moved_at.numel() > 0:  # every layer in one kernel launch on a GPU
        assert spec is not None
        rerotate_keys_(keys, orig, moved_at, offset[moved], spec)

    # 2. Encode the new tokens (and a draft after them) in one pass, straight into the buffers:
    # each attends to every position up to its own, reused or encoded in this pass.
    drafted: DraftRows | None = None
    logits = old.logits if not plan.encoded else None
    if plan.encoded:
        query = torch.tensor([*plan.encode, *range(n, rows)], dtype=torch.long, device=device)
        cache = _placed_cache(model.config, keys, values, query)
        mask = torch.arange(rows, device=device).unsqueeze(0) <= query.unsqueeze(1)  # [Q, rows]
        ids = torch.tensor([[*(new_ids[i] for i in plan.encode), *fed]], dtype=torch.long, device=device)
        out = ModelRunner(model).run(
            ids, cache, positions=query.unsqueeze(0), attention_mask=mask[None, None], logits=1 + len(fed)
        )
        assert out.logits is not None
        enc = query[: plan.encoded]
        for k, ko in zip(keys, orig, strict=True):
            ko.index_copy_(1, enc, k.index_select(1, enc))  # encoded now: original = current
        if fed:
            drafted = DraftRows(fed, out.logits, keys, values)
        logits = out.logits[0] if ends else None
    if fed:  # the document is the first n rows
        keys, values, orig = ([t[:, :n] for t in ts] for ts in (keys, values, orig))
    new_offset = torch.zeros(n, dtype=torch.long, device=device)
    new_offset[dst] = offset
    doc = DocumentKV(list(new_ids), keys, values, orig, new_offset, logits)
    stats = ApplyStats(plan.reused, plan.encoded, int(moved.sum()), time.perf_counter() - start, drafted)
    return doc, stats


def _runs(src: torch.Tensor, dst: torch.Tensor) -> list[tuple[int, int, int]]:
    """(old start, new start, length) of each run of reused tokens contiguous on both sides
    (vectorized: it runs on every completion, over every reused token)."""
    breaks = ((src[1:] - src[:-1]) != 1) | ((dst[1:] - dst[:-1]) != 1)
    starts = [0, *(torch.nonzero(breaks).squeeze(1) + 1).tolist()]
    ends = [*starts[1:], src.numel()]
    olds, news = src[starts].tolist(), dst[starts].tolist()
    return [(o, d, e - s) for o, d, s, e in zip(olds, news, starts, ends, strict=True)]


class _PlacedLayer(DynamicLayer):
    """A layer whose buffers ([1, H_kv, S, D]) already span the whole sequence: a pass writes its
    K/V at the positions `at` in place and attends to the whole buffer (its mask says what each
    query sees), so encoding after an edit copies no cache."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.at = keys, values, at
        self._buffers = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._buffers
        keys.index_copy_(2, self.at, key_states)
        values.index_copy_(2, self.at, value_states)
        return keys, values


def _placed_cache(
    config: PretrainedConfig, keys: list[torch.Tensor], values: list[torch.Tensor], at: torch.Tensor
) -> DynamicCache:
    """A cache over `keys`/`values` ([H_kv, S, D] per layer) that a pass writes into at `at`."""
    cache = DynamicCache(config=config)
    cache.layers = [
        _PlacedLayer(k.unsqueeze(0), v.unsqueeze(0), at) for k, v in zip(keys, values, strict=True)
    ]
    return cache


@dataclass(frozen=True)
class ProbeResult:
    """What the deviation probe chose, and what it cost."""

    plan: ReusePlan  # the plan with the chosen tokens moved from reuse to encode
    probed_tokens: int  # tokens the probe ran over
    probe_layers: int  # layers it ran (0..probe_layer)
    stale_deviation: float  # mean probe deviation of the kept tokens after the first edit left stale

    def token_equivalents(self, layers: int) -> int:
        """The probe's cost in full-depth tokens (token-layers / layers, rounded up)."""
        return -(-self.probed_tokens * self.probe_layers // layers)


@torch.inference_mode()
def select_refresh(
    model: PreTrainedModel,
    old: DocumentKV,
    new_ids: list[int],
    plan: ReusePlan,
    spec: RopeSpec | None,
    *,
    ratio: float = 0.0,
    threshold: float = 0.0,
    probe_layer: int = 1,
) -> ProbeResult:
    """CacheBlend-style selective refresh: also re-encode the `ratio` of reused tokens after the
    first edit whose keys deviate most from fresh ones at an early `probe_layer`, and every one
    whose deviation exceeds `threshold` (0: none by threshold).

    The probe runs only layers 0..probe_layer over the tokens from the first change on (a
    small fraction of a full encode); layer 0 is useless as a probe since PIE keys are exact
    there. Deviation: relative L2 distance between fresh and PIE keys at the probe layer.
    """
    if plan.reused == 0 or not plan.encode:
        return ProbeResult(plan, 0, 0, 0.0)
    first = plan.encode[0]
    candidates = [(s, d) for s, d in zip(plan.reuse_src, plan.reuse_dst, strict=True) if d > first]
    if not candidates:
        return ProbeResult(plan, 0, 0, 0.0)
    layers = len(old.keys)
    probe_layer = min(max(probe_layer, 1), layers - 1)
    device = old.offset.device
    # Positions before the first change are reused unchanged (same position, exact KV): the
    # probe is a plain causal forward of the rest on top of them.
    cache = DynamicCache(config=model.config)
    runner = ModelRunner(model)
    run_layers = probe_layer + 1 if runner.supported else layers  # a family run whole: all layers
    for layer in range(run_layers):
        cache.update(
            old.keys[layer][:, :first].unsqueeze(0), old.values[layer][:, :first].unsqueeze(0), layer
        )
    ids = torch.tensor([new_ids[first:]], dtype=torch.long, device=device)
    positions = torch.arange(first, len(new_ids), device=device).unsqueeze(0)
    runner.run(ids, cache, positions=positions, layers=run_layers, logits="none")
    probe_keys = getattr(cache.layers[probe_layer], "keys", None)
    assert isinstance(probe_keys, torch.Tensor)
    fresh = probe_keys[0][:, first:]  # [H_kv, n - first, D]
    src = torch.tensor([s for s, _ in candidates], dtype=torch.long, device=device)
    dst = torch.tensor([d for _, d in candidates], dtype=torch.long, device=device)
    reused = old.orig_keys[probe_layer][:, src]
    if plan.rotate:
        assert spec is not None
        reused = rotate_keys(reused, old.offset[src] + (dst - src), spec)
    else:
        reused = old.keys[probe_layer][:, src]
    target = fresh[:, dst - first]
    deviation = (target - reused).float().norm(dim=(0, 2)) / target.float().norm(dim=(0, 2)).clamp_min(1e-12)
    picked = torch.zeros(len(candidates), dtype=torch.bool, device=device)
    if ratio > 0:
        count = min(len(candidates), max(1, round(ratio * len(candidates))))
        picked[torch.topk(deviation, count).indices] = True
    if threshold > 0:
        picked |= deviation > threshold
    stale = deviation[~picked]
    stale_deviation = float(stale.mean()) if stale.numel() else 0.0
    chosen = {candidates[i][1] for i in torch.nonzero(picked).squeeze(1).tolist()}
    pairs = [(s, d) for s, d in zip(plan.reuse_src, plan.reuse_dst, strict=True) if d not in chosen]
    new_plan = ReusePlan(
        new_length=plan.new_length,
        reuse_src=tuple(s for s, _ in pairs),
        reuse_dst=tuple(d for _, d in pairs),
        encode=tuple(sorted([*plan.encode, *chosen])),
        rotate=plan.rotate,
        refreshed=plan.refreshed + len(chosen),
    )
    return ProbeResult(new_plan, len(new_ids) - first, run_layers, stale_deviation)
