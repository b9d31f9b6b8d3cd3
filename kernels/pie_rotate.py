"""PIE's re-rotation of every layer's cached keys in one launch (Triton), with its torch reference.

After an edit, each reused token that moved gets its keys re-rotated from the keys it was first
encoded with (`orig`) by its accumulated offset (see `rope.py` and `completion/pie.py`):

    keys[l][h, t, :r] = R(offset_t · ω) · orig[l][h, t, :r]     for every layer l, KV head h

for the listed tokens t only; the dims past the rotary ones (`r < head_dim`, partial rotary) are
equal in `keys` and `orig` already and are not touched. The work is a pure stream over those rows:
read 2·r elements, write 2·r, so its floor is the memory bandwidth.

The kernel does it for all layers in one launch. Layers are separate tensors (a model may have a
different number of KV heads per layer, as OpenELM does), so it reads their base addresses and
head counts from small tables; program (layer·max_heads + head, token block) rotates one head's
rows of a block of tokens. Math is fp32 on any storage dtype. cos/sin are computed once on the
host with the same expression as the reference (`offset.float() · inv_freq`), so both paths
rotate by bit-identical angles; large offsets would lose accuracy in a GPU's fast `cos.approx`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from splice.kernels import triton_util
from splice.kernels.rope import RopeSpec, rotate_keys

__all__ = ["rerotate_keys_", "rerotate_keys_reference_"]

if triton_util.available():
    import triton.language as tl
else:  # the kernel body below is only ever jitted when Triton is installed
    tl = None

BLOCK_TOKENS = 32


def rerotate_keys_(
    keys: Sequence[torch.Tensor],
    orig: Sequence[torch.Tensor],
    index: torch.Tensor,
    offset: torch.Tensor,
    spec: RopeSpec,
    *,
    backend: triton_util.Backend = "auto",
) -> None:
    """Re-rotate, in place, the tokens `index` [M] of every layer's `keys` ([H_l, S, D] each,
    contiguous) from `orig` (same shapes) by `offset` [M] (positions moved since encoding)."""
    _check(keys, orig, index, offset, spec)
    if index.numel() == 0:
        return
    if not triton_util.use_triton(backend, keys[0].device):
        rerotate_keys_reference_(keys, orig, index, offset, spec)
        return
    device = keys[0].device
    (kernel,) = triton_util.build((_rerotate_kernel,), device)
    half = spec.rotary_dim // 2
    angle = offset.to(device=device, dtype=torch.float32)[:, None] * spec.inv_freq.to(device)[None, :]
    cos, sin = angle.cos().contiguous(), angle.sin().contiguous()  # [M, r/2]
    heads = [k.shape[0] for k in keys]
    keys_table = torch.tensor([k.data_ptr() for k in keys], dtype=torch.int64, device=device)
    orig_table = torch.tensor([o.data_ptr() for o in orig], dtype=torch.int64, device=device)
    heads_table = torch.tensor(heads, dtype=torch.int32, device=device)
    grid = (len(keys) * max(heads), triton_util.cdiv(index.numel(), BLOCK_TOKENS))
    kernel[grid](
        keys_table,
        orig_table,
        heads_table,
        keys[0],
        index.to(device=device, dtype=torch.int64).contiguous(),
        cos,
        sin,
        index.numel(),
        keys[0].shape[1],
        max(heads),
        HEAD_DIM=spec.head_dim,
        HALF=half,
        BLOCK_HALF=triton_util.next_power_of_2(half),
        BLOCK_M=BLOCK_TOKENS,
        INTERLEAVED=spec.interleaved,
    )


def rerotate_keys_reference_(
    keys: Sequence[torch.Tensor],
    orig: Sequence[torch.Tensor],
    index: torch.Tensor,
    offset: torch.Tensor,
    spec: RopeSpec,
) -> None:
    """The torch reference (and CPU path) of :func:`rerotate_keys_`: one layer at a time."""
    for k, o in zip(keys, orig, strict=True):
        k.index_copy_(1, index, rotate_keys(o.index_select(1, index), offset, spec))


def _check(
    keys: Sequence[torch.Tensor],
    orig: Sequence[torch.Tensor],
    index: torch.Tensor,
    offset: torch.Tensor,
    spec: RopeSpec,
) -> None:
    if len(keys) != len(orig) or not keys:
        raise ValueError(
            f"keys and orig need the same number (> 0) of layers, got {len(keys)} and {len(orig)}"
        )
    seq_len, dtype = keys[0].shape[1], keys[0].dtype
    for layer, (k, o) in enumerate(zip(keys, orig, strict=True)):
        if k.dim() != 3 or k.shape != o.shape or k.shape[1] != seq_len or k.shape[2] != spec.head_dim:
            raise ValueError(
                f"layer {layer}: keys {tuple(k.shape)} and orig {tuple(o.shape)} must both be "
                f"[H, {seq_len}, {spec.head_dim}]"
            )
        if k.dtype != dtype or o.dtype != dtype or k.device != o.device:
            raise ValueError(f"layer {layer}: every tensor must share one dtype and device")
        if not (k.is_contiguous() and o.is_contiguous()):
            raise ValueError(f"layer {layer}: keys and orig must be contiguous")
    if index.dim() != 1 or offset.shape != index.shape:
        raise ValueError(
            f"index and offset must be 1-D of one length, got {tuple(index.shape)}, {tuple(offset.shape)}"
        )
    if index.is_floating_point():
        raise ValueError("index must hold integer token positions")


def _rerotate_kernel(  # type: ignore[no-untyped-def]
    keys_table,
    orig_table,
    heads_table,
    sample,
    index_ptr,
    cos_ptr,
    sin_ptr,
    num_tokens,
    seq_len,
    max_heads,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    INTERLEAVED: tl.constexpr,
):
    layer = tl.program_id(0) // max_heads
    head = tl.program_id(0) % max_heads
    heads = tl.load(heads_table + layer)
    kbase = tl.load(keys_table + layer).to(sample.dtype, bitcast=True)
    obase = tl.load(orig_table + layer).to(sample.dtype, bitcast=True)

    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # which of the M listed tokens
    row_ok = (rows < num_tokens) & (rows * 0 + head < heads)  # a layer with fewer heads: none
    pair = tl.arange(0, BLOCK_HALF)
    pair_ok = pair < HALF
    ok = row_ok[:, None] & pair_ok[None, :]
    tok = tl.load(index_ptr + rows, mask=row_ok, other=0)
    cos = tl.load(cos_ptr + rows[:, None] * HALF + pair[None, :], mask=ok, other=1.0)
    sin = tl.load(sin_ptr + rows[:, None] * HALF + pair[None, :], mask=ok, other=0.0)
    if INTERLEAVED:  # GPT-J pairs (2i, 2i + 1)
        first, second = 2 * pair, 2 * pair + 1
    else:  # NeoX pairs (i, i + r/2)
        first, second = pair, pair + HALF
    row = (head.to(tl.int64) * seq_len + tok.to(tl.int64)) * HEAD_DIM  # [BLOCK_M] element offsets
    x1 = tl.load(obase + row[:, None] + first[None, :], mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(obase + row[:, None] + second[None, :], mask=ok, other=0.0).to(tl.float32)
    out_type = sample.dtype.element_ty
    tl.store(kbase + row[:, None] + first[None, :], (x1 * cos - x2 * sin).to(out_type), mask=ok)
    tl.store(kbase + row[:, None] + second[None, :], (x2 * cos + x1 * sin).to(out_type), mask=ok)
