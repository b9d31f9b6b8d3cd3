"""Triton kernels against their torch references.

On CPU the kernels run in Triton's interpreter (the tests set TRITON_INTERPRET=1); the same tests
run compiled on CUDA under the `gpu` marker. Inputs are random and non-zero, across shapes,
dtypes and layouts.
"""

from __future__ import annotations

import pytest
import torch

from splice.kernels import triton_util
from splice.kernels.pie_rotate import rerotate_keys_, rerotate_keys_reference_
from splice.kernels.rope import RopeSpec, _default_inv_freq, apply_rope

pytestmark = pytest.mark.skipif(not triton_util.available(), reason="triton is not installed")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# Largest error allowed against the fp32 reference, per storage dtype: a rounding of the output
# (the interpreter rounds bf16 towards zero, so one ulp).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


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
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        rerotate_keys_(keys, [keys[0].clone()], index, offset, spec, backend="triton")
    before = keys[0].clone()
    rerotate_keys_(keys, [keys[0].clone()], index[:0], offset[:0], spec, backend="triton")  # no rows
    assert torch.equal(keys[0], before)
