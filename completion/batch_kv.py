"""A static KV layout for batched decoding: several requests' decode steps in one forward pass.

Each running request that decodes in a batch owns one *slot* of a pool allocated once: per layer,
keys and values of shape [slots, H_kv(layer), capacity, D] (per-layer head counts, as OpenELM
has, are kept), plus the number of valid tokens per slot. A request's prompt cache (prefill or
PIE reuse, a transformers `DynamicCache`) is copied into its slot when it is admitted; from then
on every pass writes its new K/V into the slot in place, at the slot's own positions.

One batched pass feeds row b `Q_b` tokens (1 for a plain decode step, 1 + k to verify a lookup
draft), padded to the longest row. Row b's query q sits at position `len_b + q`, writes its K/V
there, and attends to every position ≤ `len_b + q` of its own slot, so rows of different lengths
never see each other's padding or garbage; the padded queries' outputs are dropped and their
K/V lie past the row's new length, to be overwritten. Rejected draft tokens are dropped the
same way: the caller moves the row's length to what it keeps (`advance`).

Running rows are kept in the lowest slots (a finished request's slot is refilled by the last
one: one copy of that request's KV), so a batch of every running row reads the pool through a
view, with no copy. The layout is "static": slots × capacity are reserved up front
(`bytes` says how much); a paged layout would share the memory by blocks instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from transformers import DynamicCache


def kv_shape(config: Any) -> tuple[list[int], int]:
    """(KV heads per layer, head dim) of a transformers config; per-layer counts where the model
    has them (OpenELM's `num_kv_heads`)."""
    layers = int(config.num_hidden_layers)
    heads = (
        getattr(config, "num_kv_heads", None)
        or [config.num_key_value_heads or config.num_attention_heads] * layers
    )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return [int(h) for h in heads], int(head_dim)


class KVPool:
    """Slots of per-layer KV buffers (see the module docstring)."""

    def __init__(
        self,
        heads: Sequence[int],
        head_dim: int,
        slots: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if slots < 1 or capacity < 2:
            raise ValueError(f"a KV pool needs slots >= 1 and capacity >= 2, got {slots} and {capacity}")
        self.capacity = capacity
        self.slots = slots
        # zeros, not empty: a masked position's value is multiplied by a zero weight, and 0 * NaN
        # from uninitialised memory would be NaN
        self.keys = [torch.zeros(slots, h, capacity, head_dim, dtype=dtype, device=device) for h in heads]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.lengths: list[int] = []  # per used slot (slots 0..used-1)
        self.owners: list[Hashable] = []

    @property
    def used(self) -> int:
        return len(self.owners)

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

    def slot_of(self, owner: Hashable) -> int:
        return self.owners.index(owner)

    def fits(self, tokens: int) -> bool:
        """Whether a request that will hold up to `tokens` tokens can take a slot now."""
        return self.used < self.slots and tokens <= self.capacity

    def admit(self, owner: Hashable, cache: DynamicCache) -> int:
        """Copy `cache` ([1, H_kv, S, D] per layer) into a free slot for `owner`; its index."""
        length = cache.get_seq_length()
        if not self.fits(length):
            raise ValueError(
                f"no slot for {length} tokens ({self.used}/{self.slots} used, capacity {self.capacity})"
            )
        slot = self.used
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            ck = getattr(cache.layers[layer], "keys", None)
            cv = getattr(cache.layers[layer], "values", None)
            if not isinstance(ck, torch.Tensor) or not isinstance(cv, torch.Tensor):
                raise TypeError(
                    f"batch slots need full-attention KV layers, got {type(cache.layers[layer]).__name__}"
                )
            if ck.shape[2] != length:
                raise ValueError("every layer of an admitted cache must hold the same number of tokens")
            k[slot, :, :length] = ck[0]
            v[slot, :, :length] = cv[0]
        self.owners.append(owner)
        self.lengths.append(length)
        return slot

    def release(self, owner: Hashable) -> None:
        """Free `owner`'s slot; the last used slot moves into it (the used slots stay 0..n-1)."""
        slot, last = self.slot_of(owner), self.used - 1
        if slot != last:
            length = self.lengths[last]
            for k, v in zip(self.keys, self.values, strict=True):
                k[slot, :, :length] = k[last, :, :length]
                v[slot, :, :length] = v[last, :, :length]
            self.owners[slot], self.lengths[slot] = self.owners[last], length
        self.owners.pop()
        self.lengths.pop()

    def advance(self, slot: int, kept: int) -> None:
        """The slot's last pass keeps `kept` of the tokens it fed (the rest were padding or a
        rejected draft and are overwritten later)."""
        self.lengths[slot] += kept

    def batch(self, slots: Sequence[int], fed: Sequence[int]) -> BatchView:
        """The cache one batched pass over `slots` uses, row b feeding `fed[b]` tokens."""
        if len(slots) != len(fed) or not slots:
            raise ValueError("one fed count per slot, and at least one slot")
        width = max(fed)
        starts = [self.lengths[s] for s in slots]
        if max(starts) + width > self.capacity:
            raise ValueError(f"a pass of {width} tokens does not fit slot capacity {self.capacity}")
        return BatchView(self, list(slots), starts, width)


class BatchView:
    """A batched pass's cache: writes each row's new K/V into its slot at its own positions and
    hands attention the slots' buffers up to the longest row (the mask hides the rest)."""

    def __init__(self, pool: KVPool, slots: list[int], starts: list[int], width: int) -> None:
        self.pool = pool
        device = pool.keys[0].device
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        self.contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        self.first = slots[0]
        self.starts = torch.tensor(starts, dtype=torch.long, device=device)  # [B]
        self.width = width
        self.span = max(starts) + width  # key positions attention reads
        offsets = torch.arange(width, device=device)
        self.positions = self.starts[:, None] + offsets[None, :]  # [B, Q]

    def mask(self) -> torch.Tensor:
        """[B, 1, Q, span] bool: row b's query q sees its slot's positions <= len_b + q."""
        keys = torch.arange(self.span, device=self.positions.device)
        return (keys[None, None, :] <= self.positions[:, :, None]).unsqueeze(1)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """key, value: [B, H, Q, D] of this pass. Returns [B, H, span, D] for attention."""
        pk, pv = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        rows = self.slots[:, None]  # [B, 1] with positions [B, Q]: one (slot, position) per token
        pk[rows, :, self.positions] = key.transpose(1, 2).to(pk.dtype)  # [B, Q, H, D]
        pv[rows, :, self.positions] = value.transpose(1, 2).to(pv.dtype)
        if self.contiguous:
            end = self.first + len(self.slots)
            return pk[self.first : end, :, : self.span], pv[self.first : end, :, : self.span]
        return pk.index_select(0, self.slots)[:, :, : self.span], pv.index_select(0, self.slots)[
            :, :, : self.span
        ]
