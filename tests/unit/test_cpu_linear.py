"""Packed oneDNN weights for CPU decoding (`kernels/cpu_linear.py`): the same numbers as
`F.linear` up to rounding, rows independent of the row count, in-place weight updates followed,
autograd and other dtypes left to `F.linear`, and a tiny model whose runner and lookup drafting
behave as before."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from splice.completion.runner import ModelRunner
from splice.kernels.cpu_linear import (
    pack_linears,
    packed_bytes,
    plain_linears,
    resolve_mode,
    supported,
    unpack_linears,
)
from splice_testkit.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.skipif(not supported(), reason="this PyTorch build has no oneDNN packed linear")


def packed_layer(out_features: int, in_features: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    assert pack_linears(layer, "packed", min_params=0) == 1
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 17])
def test_packed_equals_linear(bias: bool, rows: int) -> None:
    layer = packed_layer(96, 80, bias)
    x = torch.randn(1, rows, 80)
    with torch.inference_mode():
        got = layer(x)
    want = F.linear(x, layer.weight, layer.bias)
    assert got.shape == want.shape == (1, rows, 96)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, torch.zeros_like(got))


def test_rows_do_not_depend_on_the_row_count() -> None:
    """What makes a verification pass see the numbers a one-token step sees: each row of a
    9-row product is bit-identical to the same row computed alone (MKL's matrix-vector and
    matrix-matrix paths are not)."""
    layer = packed_layer(1536, 576)
    x = torch.randn(9, 576)
    with torch.inference_mode():
        together = layer(x)
        for i in range(9):
            assert torch.equal(layer(x[i : i + 1])[0], together[i])
        assert torch.equal(layer(x[:4]), together[:4])


def test_plain_linears_blocks_nest() -> None:
    """`plain_linears()` (the bench's MKL baseline) runs `F.linear` until its outermost block ends."""
    layer = packed_layer(1536, 576)
    x = torch.randn(9, 576)
    with torch.inference_mode():
        packed = layer(x)
        plain = F.linear(x, layer.weight, layer.bias)
        assert not torch.equal(packed, plain)  # the two libraries round differently: tells them apart
        with plain_linears():
            with plain_linears():
                assert torch.equal(layer(x), plain)
            assert torch.equal(layer(x), plain)  # the inner block's end keeps the outer one's setting
        assert torch.equal(layer(x), packed)


def test_an_in_place_weight_update_repacks() -> None:
    layer = packed_layer(64, 1024)
    x = torch.randn(3, 1024)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # e.g. an adapter merged into the base weight
    with torch.inference_mode():
        after = layer(x)
    torch.testing.assert_close(after, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
    with torch.no_grad():
        layer.weight = nn.Parameter(torch.randn(64, 1024))  # a new tensor altogether
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_autograd_and_other_dtypes_use_f_linear() -> None:
    layer = packed_layer(32, 64)
    x = torch.randn(2, 64, requires_grad=True)
    out = layer(x)  # autograd on: the packed op has no backward, F.linear runs
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.inference_mode(), pytest.raises(RuntimeError):
        layer(x.detach().double())  # F.linear's own dtype error, not a silent cast


def test_modes_idempotence_and_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 8))  # 131k and 2k weights
    assert pack_linears(model, "auto") == 1  # the small layer stays plain
    assert pack_linears(model, "auto") == 1  # packing twice packs nothing more
    assert packed_bytes(model) == 512 * 256 * 4
    assert pack_linears(model, "plain") == 0 and packed_bytes(model) == 0
    assert "forward" not in vars(model[0])  # nn.Linear.forward again
    assert pack_linears(model, "packed", min_params=0) == 2
    assert unpack_linears(model) == 2
    monkeypatch.setenv("SPLICE_CPU_LINEAR", "fast")
    with pytest.raises(ValueError, match="SPLICE_CPU_LINEAR must be one of"):
        resolve_mode()
    monkeypatch.setenv("SPLICE_CPU_LINEAR", "plain")
    assert resolve_mode() == "plain" and pack_linears(model) == 0
    bf16 = nn.Linear(512, 256).to(torch.bfloat16)
    assert pack_linears(bf16, "auto") == 0  # auto packs fp32 only


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_runner_equals_the_plain_model(arch: str) -> None:
    """A tiny model with every linear layer packed: the runner's logits equal the unpacked
    model's (up to rounding) for a prompt and for a 5-token pass after it."""
    tokenizer = build_tokenizer("plain" if arch == "llama" else "qwen")
    plain, packed = build_model(tokenizer, arch), build_model(tokenizer, arch)  # same seed, same weights
    for model in (plain, packed):
        model.eval()
    unpack_linears(plain)
    assert pack_linears(packed, "packed", min_params=0) > 0
    ids = torch.randint(5, len(tokenizer), (1, 40))
    outs = []
    for model in (plain, packed):
        runner = ModelRunner(model)
        if model is plain:
            unpack_linears(plain)  # the runner packs in auto mode; keep this one plain
        cache = DynamicCache(config=model.config)
        first = runner.run(ids[:, :35], cache).logits
        rest = runner.run(ids[:, 35:], cache, logits="all").logits
        outs.append((first, rest))
    for want, got in zip(outs[0], outs[1], strict=True):
        assert want is not None and got is not None
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "openelm"])
def test_masked_grouped_query_passes_equal_sdpa(arch: str) -> None:
    """On a CPU the runner switches a model to `"splice-cpu"` attention: masked passes of several
    tokens (draft verification, PIE's custom masks) let SDPA take the query groups itself instead
    of copying K/V per group. The logits equal plain `"sdpa"`'s exactly."""
    from splice.completion.attention import CPU_NAME

    tokenizer = build_tokenizer("plain")
    reference, model = build_model(tokenizer, arch), build_model(tokenizer, arch)
    runner = ModelRunner(model)
    assert model.config._attn_implementation == CPU_NAME
    ref_runner = ModelRunner(reference)
    reference.set_attn_implementation("sdpa")
    assert reference.config._attn_implementation == "sdpa"
    ids = torch.randint(5, len(tokenizer), (1, 48))
    outs = []
    for r in (ref_runner, runner):
        cache = DynamicCache(config=r.model.config)
        r.run(ids[:, :30], cache)
        verify = r.run(ids[:, 30:39], cache, logits="all").logits  # 9 tokens after a cache: masked
        # PIE-style: 4 tokens at chosen positions under a custom mask
        n = cache.get_seq_length()
        mask = torch.ones(4, n + 4, dtype=torch.bool).tril(n)
        mask[:, 5:9] = False
        pie = r.run(
            ids[:, 39:43], cache, positions=torch.arange(n, n + 4)[None], attention_mask=mask[None, None]
        )
        outs.append((verify, pie.logits))
    for want, got in zip(outs[0], outs[1], strict=True):
        assert want is not None and got is not None
        assert torch.equal(got, want)
