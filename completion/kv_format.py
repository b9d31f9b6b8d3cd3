"""How idle document caches are stored: as computed (`float`), or quantized to int8 (`int8`).

A document's cache is idle between two completions (the editor is typing); only then is it packed.
`int8` keeps each K/V row (one token, one KV head) as int8 with one scale (absolute maximum / 127),
in the cache's own dtype: a quarter of fp32's bytes (half of bf16's), plus a scale per row (1/64
more for 64-dim heads). The next completion unpacks the cache it reuses; what it encodes anew is
exact, so the rounding error sits only in reused rows, like PIE's drift, and is measured the same
way (`splice bench edits --methods pie+refresh pie+refresh:kv=int8`, next-token KL and line
agreement with full recomputation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from splice.completion.pie import DocumentKV

KVFormat = Literal["float", "int8"]
KV_FORMATS: tuple[KVFormat, ...] = ("float", "int8")


@dataclass(frozen=True)
class QTensor:
    """int8 rows and one scale per row (the last dimension is the row)."""

    q: torch.Tensor  # int8, the shape of the original
    scale: torch.Tensor  # original dtype, shape [..., 1]

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * self.scale.element_size()


def quantize(x: torch.Tensor) -> QTensor:
    """Symmetric per-row int8: round(x / scale) with scale = max|row| / 127 (0 rows stay 0)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float() / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x.float() / safe).clamp_(-127, 127).to(torch.int8)
    return QTensor(q, scale.to(x.dtype))


def dequantize(t: QTensor) -> torch.Tensor:
    return (t.q.float() * t.scale.float()).to(t.scale.dtype)


@dataclass
class PackedKV:
    """A `DocumentKV` with its tensors quantized (ids, offsets and last logits as they were)."""

    ids: list[int]
    keys: list[QTensor]
    values: list[QTensor]
    orig_keys: list[QTensor]
    offset: torch.Tensor
    logits: torch.Tensor | None

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def layer_shapes(self) -> list[tuple[int, int, int]]:
        return [(k.q.shape[0], k.q.shape[1], k.q.shape[2]) for k in self.keys]

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys, *self.values, *self.orig_keys]
        return sum(t.nbytes for t in tensors) + self.offset.numel() * 8


def pack(doc: DocumentKV, fmt: KVFormat) -> DocumentKV | PackedKV:
    """`doc` as stored in `fmt`."""
    if fmt == "float":
        return doc
    return PackedKV(
        doc.ids,
        [quantize(t) for t in doc.keys],
        [quantize(t) for t in doc.values],
        [quantize(t) for t in doc.orig_keys],
        doc.offset,
        doc.logits,
    )


def unpack(stored: DocumentKV | PackedKV) -> DocumentKV:
    """A stored cache as a `DocumentKV` to reuse (a float one is returned as it is)."""
    if isinstance(stored, DocumentKV):
        return stored
    return DocumentKV(
        stored.ids,
        [dequantize(t) for t in stored.keys],
        [dequantize(t) for t in stored.values],
        [dequantize(t) for t in stored.orig_keys],
        stored.offset,
        stored.logits,
    )
