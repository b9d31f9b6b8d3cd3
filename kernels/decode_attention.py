"""Decode attention over a long KV cache: split-KV (flash-decoding) with FlashDecoding++'s unified max.

One decode step attends one query token per sequence to the whole cache. At batch 1–32 and
thousands of cached tokens there are too few (sequence, head) pairs to fill a GPU, so the cache
is split along the sequence: each program reduces one split, and a second step combines the
splits (flash-decoding). The softmax normally forces two kinds of synchronisation: inside a split,
every block that raises the running maximum rescales the accumulator (online softmax), and the
combination rescales each split by exp(m_split − m_global).

FlashDecoding++ (Hong et al., MLSys'24) removes both with a *unified maximum* φ: every split
computes exp(s − φ) with the same φ, so the partial sums add up as they are. It is exact whenever
no exp overflows or underflows (the softmax is shift-invariant), so the kernel flags a split whose
scores leave the safe window (φ − low, φ + high] and the whole step is then recomputed with the
safe online-softmax version, as the paper does. The window depends on the dtype the
probabilities are multiplied with the values in (fp16 overflows past 65504).

φ here is, per query head, the score of the first cached token (the attention sink most models
put their largest score on), or a constant the caller measured for the model; all splits of a
head compute the same φ from the same key, so nothing is exchanged between them.

Grouped-query attention: one program serves all query heads of one KV head (the group is the
rows of a small matrix multiply, padded to 16 for the tensor cores). Both versions, the plain
split-KV one and the unified-max one, are here (`method="split"|"unified"`) with a torch
reference (SDPA over the same cache, `decode_attention_reference`).
"""

from __future__ import annotations

from typing import Literal

import torch

from splice.kernels import triton_util

__all__ = ["DecodeStats", "decode_attention", "decode_attention_reference"]

if triton_util.available():
    import triton.language as tl
else:  # the kernel body below is only ever jitted when Triton is installed
    tl = None

Method = Literal["unified", "split"]
BLOCK_N = 32  # cached tokens per inner step
# Safe window of s − φ for exp(s − φ) in the dtype the probabilities are multiplied in.
_WINDOW = {torch.float16: (9.0, 11.0), torch.bfloat16: (60.0, 60.0), torch.float32: (60.0, 60.0)}


class DecodeStats:
    """How often the unified-max step had to be recomputed (overflow or underflow of exp(s − φ))."""

    calls = 0
    recomputed = 0


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
    method: Method = "unified",
    phi: float | None = None,
    splits: int | None = None,
    backend: triton_util.Backend = "auto",
) -> torch.Tensor:
    """Attention of one query token per sequence to its cache.

    q: [B, Hq, D]; k, v: [B, Hkv, S, D] (Hq a multiple of Hkv); lengths: [B] valid cached tokens
    per sequence (default S; the rest is padding); scale: default 1/√D. method: "unified" (one
    φ for all splits, recomputed safely when a score leaves its window) or "split" (online
    softmax per split, rescaled when combined). phi: a constant unified max; default the score
    of the first cached token, per query head. Returns [B, Hq, D] in q's dtype.
    """
    batch, q_heads, dim = _check(q, k, v, lengths)
    seq = k.shape[2]
    scale = dim**-0.5 if scale is None else scale
    if lengths is None:
        lengths = torch.full((batch,), seq, dtype=torch.int32, device=q.device)
    if not triton_util.use_triton(backend, q.device):
        return decode_attention_reference(q, k, v, lengths=lengths, scale=scale)
    if method not in ("unified", "split"):
        raise ValueError(f"method must be 'unified' or 'split', got {method!r}")
    kv_heads = k.shape[1]
    if splits is None:  # enough programs to fill a GPU, at least 256 tokens per split
        splits = max(1, min(triton_util.cdiv(seq, 256), triton_util.cdiv(264, batch * kv_heads)))
    chunk = triton_util.cdiv(triton_util.cdiv(seq, splits), BLOCK_N) * BLOCK_N
    splits = triton_util.cdiv(seq, chunk)
    group = q_heads // kv_heads
    (kernel,) = triton_util.build((_split_kernel,), q.device)
    acc = torch.empty(batch, q_heads, splits, dim, dtype=torch.float32, device=q.device)
    total = torch.empty(batch, q_heads, splits, dtype=torch.float32, device=q.device)
    top = torch.empty_like(total)
    flags = torch.zeros(batch, kv_heads, splits, dtype=torch.int32, device=q.device)
    low, high = _WINDOW[v.dtype if v.dtype in _WINDOW else torch.float32]

    upcast = q.device.type != "cuda" and q.dtype == torch.bfloat16

    def launch(unified: bool) -> None:
        kernel[(batch * kv_heads, splits)](
            q,
            k,
            v,
            lengths.to(device=q.device, dtype=torch.int32),
            acc,
            total,
            top,
            flags,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            kv_heads,
            seq,
            chunk,
            scale,
            0.0 if phi is None else float(phi),
            low,
            high,
            GROUP=group,
            DIM=dim,
            BLOCK_G=max(16, triton_util.next_power_of_2(group)),
            BLOCK_D=max(16, triton_util.next_power_of_2(dim)),
            BLOCK_N=BLOCK_N,
            UNIFIED=unified,
            SINK_PHI=phi is None,
            # Triton's interpreter multiplies bf16 matrices wrongly (3.9): upcast there only.
            UPCAST=upcast,
            # fp32 operands: exact products (no TF32); 16-bit ones multiply on the tensor cores.
            PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32",
        )

    DecodeStats.calls += 1
    launch(method == "unified")
    if method == "unified":
        if not bool(flags.any()):  # the paper's fallback: recompute the step with the safe softmax
            out = acc.sum(dim=2) / total.sum(dim=2).unsqueeze(-1)  # shares φ: a plain sum
            return out.to(q.dtype)
        DecodeStats.recomputed += 1
        launch(False)
    # Online-softmax splits: rescale each by exp(m_split − m) before adding.
    weight = torch.exp(top - top.amax(dim=2, keepdim=True))  # [B, Hq, splits]; empty splits: 0
    out = (acc * weight.unsqueeze(-1)).sum(dim=2) / (total * weight).sum(dim=2).unsqueeze(-1)
    return out.to(q.dtype)


def decode_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """PyTorch SDPA over the same cache (fp32 math), with the padding past `lengths` masked."""
    _, q_heads, _ = _check(q, k, v, lengths)
    seq, group = k.shape[2], q_heads // k.shape[1]
    keys = k.float().repeat_interleave(group, dim=1)  # [B, Hq, S, D]
    values = v.float().repeat_interleave(group, dim=1)
    mask = None
    if lengths is not None:
        valid = torch.arange(seq, device=q.device)[None, :] < lengths.to(q.device)[:, None]  # [B, S]
        mask = valid[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().unsqueeze(2), keys, values, attn_mask=mask, scale=scale
    )
    return out.squeeze(2).to(q.dtype)  # [B, Hq, D]


def _check(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[int, int, int]:
    if q.dim() != 3 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(
            f"q must be [B, Hq, D] and k, v [B, Hkv, S, D] alike; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    batch, q_heads, dim = q.shape
    if k.shape[0] != batch or k.shape[3] != dim or q_heads % k.shape[1]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim, "
            "or Hq is not a multiple of Hkv"
        )
    if k.shape[2] == 0:
        raise ValueError("the cache is empty: a decode step needs at least one cached token")
    if lengths is not None and (
        lengths.shape != (batch,) or int(lengths.min()) < 1 or int(lengths.max()) > k.shape[2]
    ):
        raise ValueError(f"lengths must be [B] in [1, {k.shape[2]}], got {lengths.tolist()}")
    return batch, q_heads, dim


def _split_kernel(  # type: ignore[no-untyped-def]
    q_ptr,
    k_ptr,
    v_ptr,
    lengths_ptr,
    acc_ptr,
    total_ptr,
    top_ptr,
    flags_ptr,
    sqb,
    sqh,
    sqd,
    skb,
    skh,
    sks,
    skd,
    svb,
    svh,
    svs,
    svd,
    kv_heads,
    seq,
    chunk,
    scale,
    phi_const,
    low,
    high,
    GROUP: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UNIFIED: tl.constexpr,
    SINK_PHI: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    batch = pid // kv_heads
    kv_head = pid % kv_heads
    length = tl.load(lengths_ptr + batch)

    g = tl.arange(0, BLOCK_G)  # query heads of this KV head's group
    d = tl.arange(0, BLOCK_D)
    g_ok = g < GROUP
    d_ok = d < DIM
    q_head = kv_head * GROUP + g
    q = tl.load(
        q_ptr + batch * sqb + q_head[:, None] * sqh + d[None, :] * sqd,
        mask=g_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [G, D]
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + batch * skb + kv_head * skh
    v_base = v_ptr + batch * svb + kv_head * svh

    if SINK_PHI:  # φ = the score of cached token 0, the same in every split of this head
        k0 = tl.load(k_base + d * skd, mask=d_ok, other=0.0).to(tl.float32)
        phi = tl.sum(q.to(tl.float32) * k0[None, :], axis=1) * scale  # [G]
    else:
        phi = tl.zeros([BLOCK_G], dtype=tl.float32) + phi_const

    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    total = tl.zeros([BLOCK_G], dtype=tl.float32)
    top = tl.zeros([BLOCK_G], dtype=tl.float32) - float("inf")  # running max (online) / seen max
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        kv_mask = n_ok[:, None] & d_ok[None, :]
        keys = tl.load(k_base + n[:, None] * sks + d[None, :] * skd, mask=kv_mask, other=0.0)
        values = tl.load(v_base + n[:, None] * svs + d[None, :] * svd, mask=kv_mask, other=0.0)
        if UPCAST:
            keys = keys.to(tl.float32)
            values = values.to(tl.float32)
        scores = tl.dot(q, tl.trans(keys), input_precision=PRECISION)
        scores = tl.where(n_ok[None, :], scores * scale, float("-inf"))  # [G, N]
        block_top = tl.max(scores, axis=1)
        if UNIFIED:  # no rescaling: every block and split shares φ
            top = tl.maximum(top, block_top)
            p = tl.exp(scores - phi[:, None])
        else:  # online softmax: rescale what was summed when the maximum grows
            new_top = tl.maximum(top, block_top)
            alpha = tl.exp(top - new_top)
            p = tl.exp(scores - new_top[:, None])
            acc = acc * alpha[:, None]
            total = total * alpha
            top = new_top
        acc += tl.dot(p.to(values.dtype), values, input_precision=PRECISION)
        total += tl.sum(p, axis=1)

    out = (batch * kv_heads * GROUP + q_head) * splits + split  # [G] rows of acc/total/top
    tl.store(acc_ptr + out[:, None] * DIM + d[None, :], acc, mask=g_ok[:, None] & d_ok[None, :])
    tl.store(total_ptr + out, total, mask=g_ok)
    tl.store(top_ptr + out, top, mask=g_ok)
    if UNIFIED:  # a score outside (φ − low, φ + high]: exp over- or underflows; recompute
        has_tokens = end > start
        bad = g_ok & has_tokens & ((top - phi > high) | (top - phi < -low))
        tl.store(flags_ptr + pid * splits + split, tl.max(bad.to(tl.int32), axis=0))
