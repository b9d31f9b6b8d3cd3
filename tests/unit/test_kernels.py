"""Triton kernels against their torch references.

On CPU the kernels run in Triton's interpreter (the tests set TRITON_INTERPRET=1); the same tests
run compiled on CUDA under the `gpu` marker. Inputs are random and non-zero, across shapes,
dtypes and layouts.
"""

from __future__ import annotations

import pytest
import torch

from splice.kernels import triton_util
from splice.kernels.decode_attention import DecodeStats, decode_attention, decode_attention_reference
from splice.kernels.pie_rotate import rerotate_keys_, rerotate_keys_reference_
from splice.kernels.rope import RopeSpec, _default_inv_freq, apply_rope

pytestmark = pytest.mark.skipif(not triton_util.available(), reason="triton is not installed")

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not triton_util.interpreting(), reason="Triton's interpreter is off (TRITON_INTERPRET=1)"
        ),
    ),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
# Largest error allowed against the fp32 reference, per storage dtype: a rounding of the output
# (the interpreter rounds bf16 towards zero, so one ulp).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


interpreted = pytest.mark.skipif(not triton_util.interpreting(), reason="needs TRITON_INTERPRET=1")


def _spec(head_dim: int, rotary_dim: int, interleaved: bool) -> RopeSpec:
    return RopeSpec(_default_inv_freq(10000.0, rotary_dim), rotary_dim, head_dim, interleaved, "default")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(("head_dim", "rotary_dim"), [(64, 64), (32, 16), (80, 40)])
def test_rerotation_matches_reference(
    device: str, dtype: torch.dtype, interleaved: bool, head_dim: int, rotary_dim: int
) -> None:
    gen = torch.Generator().manual_seed(head_dim + rotary_dim + int(interleaved))
    spec = _spec(head_dim, rotary_dim, interleaved)
    heads, seq = [2, 5, 1, 3], 70  # per-layer KV heads differ, as in OpenELM
    orig = [torch.randn(h, seq, head_dim, generator=gen).to(device, dtype) for h in heads]
    keys = [torch.randn(h, seq, head_dim, generator=gen).to(device, dtype) for h in heads]
    for k, o in zip(keys, orig, strict=True):  # the non-rotary dims agree, as in a cache
        k[..., rotary_dim:] = o[..., rotary_dim:]
    index = torch.randperm(seq, generator=gen)[:45].to(device)  # 2 token blocks, unordered
    offset = torch.randint(-3000, 9000, (45,), generator=gen).to(device)
    got, want = [k.clone() for k in keys], [k.clone() for k in keys]

    rerotate_keys_(got, orig, index, offset, spec, backend="triton")
    rerotate_keys_reference_(want, orig, index, offset, spec)

    untouched = torch.ones(seq, dtype=torch.bool, device=device)
    untouched[index] = False
    for g, w, k in zip(got, want, keys, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g.float(), w.float(), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        assert torch.equal(g[:, untouched], k[:, untouched])  # rows not listed are not written
        assert torch.equal(g[..., rotary_dim:], k[..., rotary_dim:])


@interpreted
def test_rerotation_equals_rope_at_the_new_position() -> None:
    """fp32: rotating RoPE_p(x) by Δ gives RoPE_{p+Δ}(x), the key a fresh encode would hold."""
    spec = _spec(32, 32, False)
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(3, 50, 32, generator=gen)
    before = torch.arange(50)
    delta = torch.randint(-20, 500, (50,), generator=gen)
    orig = apply_rope(raw, before, spec).contiguous()
    keys = orig.clone()
    rerotate_keys_([keys], [orig], torch.arange(50), delta, spec, backend="triton")
    torch.testing.assert_close(keys, apply_rope(raw, before + delta, spec), rtol=1e-4, atol=1e-4)


def test_rerotation_input_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(16, 16, False)
    keys = [torch.randn(2, 8, 16)]
    index, offset = torch.tensor([1, 2]), torch.tensor([3, 4])
    with pytest.raises(ValueError, match="same number"):
        rerotate_keys_(keys, [], index, offset, spec)
    with pytest.raises(ValueError, match=r"\[H, 8, 16\]"):
        rerotate_keys_(keys, [torch.randn(2, 8, 8)], index, offset, spec)
    with pytest.raises(ValueError, match="one length"):
        rerotate_keys_(keys, [keys[0].clone()], index, torch.tensor([1]), spec)
    with pytest.raises(ValueError, match="contiguous"):
        rerotate_keys_([keys[0].transpose(0, 1).contiguous().transpose(0, 1)], keys, index, offset, spec)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        rerotate_keys_(keys, [keys[0].clone()], index, offset, spec, backend="cuda")  # type: ignore[arg-type]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        rerotate_keys_(keys, [keys[0].clone()], index, offset, spec, backend="triton")
    before = keys[0].clone()
    rerotate_keys_(keys, [keys[0].clone()], index[:0], offset[:0], spec, backend="triton")  # no rows
    assert torch.equal(keys[0], before)


# Decode attention: fp32 math; bf16/fp16 multiply probabilities and values in the storage dtype.
ATTENTION_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _cache(
    batch: int, q_heads: int, kv_heads: int, seq: int, dim: int, dtype: torch.dtype, device: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, dim, generator=gen)
    k = torch.randn(batch, kv_heads, seq, dim, generator=gen)
    v = torch.randn(batch, kv_heads, seq, dim, generator=gen)
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), lengths.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["unified", "split"])
@pytest.mark.parametrize(
    ("batch", "q_heads", "kv_heads", "seq", "dim", "splits"),
    [(1, 4, 2, 130, 64, None), (3, 6, 2, 300, 32, 4), (2, 8, 8, 70, 80, 2), (2, 14, 2, 97, 64, 1)],
)
def test_decode_attention_matches_sdpa(
    device: str,
    dtype: torch.dtype,
    method: str,
    batch: int,
    q_heads: int,
    kv_heads: int,
    seq: int,
    dim: int,
    splits: int | None,
) -> None:
    q, k, v, lengths = _cache(batch, q_heads, kv_heads, seq, dim, dtype, device, seed=seq + dim)
    recomputed = DecodeStats.recomputed
    got = decode_attention(q, k, v, lengths=lengths, method=method, splits=splits, backend="triton")  # type: ignore[arg-type]
    want = decode_attention_reference(q, k, v, lengths=lengths)
    assert got.shape == q.shape and got.dtype == dtype
    tol = ATTENTION_TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    assert DecodeStats.recomputed == recomputed  # random scores stay inside the unified window
    # The padding past a sequence's length is never read: changing it changes nothing.
    k2 = k.clone()
    k2[1:, :, -1] = 1e4
    again = decode_attention(q, k2, v, lengths=lengths, method=method, splits=splits, backend="triton")  # type: ignore[arg-type]
    short = lengths[1:] < seq
    torch.testing.assert_close(again[1:][short].float(), got[1:][short].float())


@interpreted
@pytest.mark.parametrize("phi", [None, 0.0])
def test_unified_max_recomputes_when_a_score_leaves_the_window(phi: float | None) -> None:
    q, k, v, lengths = _cache(1, 4, 2, 200, 32, torch.float16, "cpu", seed=3)
    k[0, :, 150] = q[0, ::2] * 4  # one key far above the sink's (and above 0): exp(s - φ) overflows
    recomputed = DecodeStats.recomputed
    got = decode_attention(q, k, v, lengths=lengths, method="unified", phi=phi, splits=3, backend="triton")
    assert DecodeStats.recomputed == recomputed + 1
    want = decode_attention_reference(q, k, v, lengths=lengths)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


@interpreted
def test_unified_max_with_a_constant_phi() -> None:
    q, k, v, lengths = _cache(2, 4, 1, 90, 16, torch.float32, "cpu", seed=5)
    got = decode_attention(q, k, v, lengths=lengths, phi=1.5, splits=3, backend="triton")
    torch.testing.assert_close(got, decode_attention_reference(q, k, v, lengths=lengths))


def test_decode_attention_input_errors() -> None:
    q, k, v, _ = _cache(2, 4, 2, 10, 16, torch.float32, "cpu", seed=1)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        decode_attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match=r"k, v \[B, Hkv, S, D\]"):
        decode_attention(q, k, v[:, :1])
    with pytest.raises(ValueError, match="lengths"):
        decode_attention(q, k, v, lengths=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="empty"):
        decode_attention(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(ValueError, match="method"):
        decode_attention(q, k, v, method="online", backend="triton")  # type: ignore[arg-type]
    # The default backend on a CPU is the reference itself.
    assert torch.equal(decode_attention(q, k, v), decode_attention_reference(q, k, v))


@interpreted
def test_pie_through_the_kernel_on_an_openelm_cache_equals_the_torch_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PIE end to end on an OpenELM-shaped model (KV heads 1/2/2/2 by layer): 60 random edits with
    the re-rotation in the Triton kernel (SPLICE_KERNELS=triton) give the caches the torch path
    gives."""
    import random

    from splice.completion.pie import apply_plan, encode_full
    from splice.completion.pie_plan import plan_reuse
    from splice.completion.token_edits import diff_tokens
    from splice.kernels.rope import rope_spec_from_config
    from splice_testkit.tiny import build_model, build_tokenizer

    model = build_model(build_tokenizer("plain"), "openelm")
    spec = rope_spec_from_config(model.config)
    rng = random.Random(2)
    ids = [rng.randrange(20, 500) for _ in range(60)]
    docs = {backend: encode_full(model, ids) for backend in ("triton", "torch")}
    for _ in range(60):
        at, cut = rng.randrange(len(ids)), rng.randrange(3)
        new = ids[:at] + [rng.randrange(20, 500) for _ in range(rng.randrange(3))] + ids[at + cut :]
        if not new or new == ids:
            continue
        plan = plan_reuse(ids, new, diff_tokens(ids, new), "pie", logits_fresh=True)
        for backend in docs:
            monkeypatch.setenv("SPLICE_KERNELS", backend)
            docs[backend], _ = apply_plan(model, docs[backend], new, plan, spec)
        ids = new
    got, want = docs["triton"], docs["torch"]
    assert got.layer_shapes == want.layer_shapes and [s[0] for s in got.layer_shapes] == [1, 2, 2, 2]
    assert int(got.offset.abs().max()) > 0  # tokens really moved
    for a, b in zip(got.keys, want.keys, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@interpreted
@pytest.mark.parametrize("arch", ["llama", "qwen2", "openelm"])
def test_decode_steps_through_the_kernel_attention_equal_sdpa(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the kernels on (SPLICE_KERNELS=triton), the runner switches the model's attention to
    `"splice"`: decode steps, alone and batched over pool slots of different lengths, run the
    decode-attention kernel and give SDPA's logits."""
    from transformers import DynamicCache

    from splice.completion.batch_kv import KVPool, kv_shape
    from splice.completion.runner import ModelRunner
    from splice_testkit.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer("plain")
    monkeypatch.setenv("SPLICE_KERNELS", "torch")
    reference = ModelRunner(build_model(tokenizer, arch))
    monkeypatch.setenv("SPLICE_KERNELS", "triton")
    kernel = ModelRunner(build_model(tokenizer, arch))  # the same seed: the same weights
    assert kernel.kernel_attention and not reference.kernel_attention
    assert kernel.model.config._attn_implementation == "splice"

    config = kernel.model.config
    heads, _ = kv_shape(config)
    pools = {}
    calls = DecodeStats.calls
    for name, runner in (("reference", reference), ("kernel", kernel)):
        pool = KVPool(heads, 16, 2, 64, dtype=torch.float32, device=torch.device("cpu"))
        steps = []
        for slot, n in enumerate((9, 23)):
            cache = DynamicCache(config=runner.model.config)
            ids = torch.arange(30, 30 + n).unsqueeze(0)
            runner.run(ids, cache)
            for token in (5, 6, 7):  # decode steps alone
                steps.append(runner.run(torch.tensor([[token]]), cache).logits)
            pool.admit(slot, cache)
        for tokens in ([[8], [9]], [[10], [11]]):  # batched decode steps, different lengths
            steps.extend(runner.run_batch(pool, [0, 1], tokens))
            pool.advance(0, 1)
            pool.advance(1, 1)
        pools[name] = steps
    assert DecodeStats.calls > calls  # the kernel ran
    for got, want in zip(pools["kernel"], pools["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
