"""PIE key re-rotation (`splice.kernels.rope`): pure-function checks against an independent complex-number
reference, and exactness against tiny random transformers models of every RoPE variant we support.

Errors are relative to the largest reference magnitude: max|actual − expected| / max|expected|.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma3TextConfig,
    GlmConfig,
    GlmForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
)

from splice.kernels.rope import RopeSpec, UnsupportedRope, apply_rope, rope_spec_from_config, rotate_keys

TOL = 1e-5
SEQ = 12
VOCAB = 128
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    diff = (actual.double() - expected.double()).abs().max()
    return float(diff / expected.double().abs().max())


def toy_spec(head_dim: int = 32, rotary_dim: int = 32, interleaved: bool = False) -> RopeSpec:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    return RopeSpec(inv_freq, rotary_dim, head_dim, interleaved, "default")


def random_keys(*shape: int, seed: int = 0) -> torch.Tensor:
    """Gaussian keys pushed away from zero, so every element contributes to the error."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x + 0.1 * torch.where(x >= 0, 1.0, -1.0)


def random_delta(n: int, low: int = -64, high: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(low, high + 1, (n,), generator=torch.Generator().manual_seed(seed))


def complex_reference(keys: torch.Tensor, delta: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """fp64 rotation written as complex multiplication: pair (a, b) is a + ib, times exp(iΔω)."""
    k = keys.double()  # [..., S, D]
    r = spec.rotary_dim
    angle = delta.double()[:, None] * spec.inv_freq.double()[None, :]  # [S, r/2]
    phase = torch.polar(torch.ones_like(angle), angle)
    if spec.interleaved:
        z = torch.view_as_complex(k[..., :r].reshape(*k.shape[:-1], r // 2, 2).contiguous())
        rotated = torch.view_as_real(z * phase).flatten(-2)
    else:
        w = torch.complex(k[..., : r // 2], k[..., r // 2 : r]) * phase
        rotated = torch.cat((w.real, w.imag), dim=-1)
    return torch.cat((rotated, k[..., r:]), dim=-1)


# ---------------------------------------------------------------- pure-function properties


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [32, 8])
def test_rotations_compose_and_invert(interleaved: bool, rotary_dim: int) -> None:
    spec = toy_spec(rotary_dim=rotary_dim, interleaved=interleaved)
    keys = random_keys(2, 3, SEQ, 32)  # [B, H, S, D]
    d1, d2 = random_delta(SEQ, seed=1), random_delta(SEQ, seed=2)
    twice = rotate_keys(rotate_keys(keys, d1, spec), d2, spec)
    assert rel_err(twice, rotate_keys(keys, d1 + d2, spec)) < TOL
    assert rel_err(rotate_keys(rotate_keys(keys, d1, spec), -d1, spec), keys) < TOL
    assert torch.equal(rotate_keys(keys, torch.zeros(SEQ, dtype=torch.long), spec), keys)
    assert rel_err(rotate_keys(keys, d1, spec), keys) > 0.1  # a non-zero shift does move the keys


@pytest.mark.parametrize("interleaved", [False, True])
def test_matches_complex_reference(interleaved: bool) -> None:
    spec = toy_spec(interleaved=interleaved)
    keys = random_keys(2, 3, SEQ, 32)
    delta = random_delta(SEQ).float() + 0.25  # float shifts work too
    expected = complex_reference(keys, delta, spec)
    assert rel_err(rotate_keys(keys, delta, spec), expected) < TOL
    # The two pairings are genuinely different rotations: the reference tells them apart.
    other = toy_spec(interleaved=not interleaved)
    assert rel_err(rotate_keys(keys, delta, other), expected) > 0.1


def test_partial_rotary_leaves_pass_through_dims_bit_identical() -> None:
    for interleaved in (False, True):
        spec = toy_spec(head_dim=32, rotary_dim=8, interleaved=interleaved)
        keys = random_keys(SEQ, 32)  # [S, D]: no leading dims
        out = rotate_keys(keys, random_delta(SEQ), spec)
        assert torch.equal(out[..., 8:], keys[..., 8:])
        assert rel_err(out[..., :8], keys[..., :8]) > 0.1


def test_bf16_in_bf16_out_computed_in_fp32() -> None:
    spec = toy_spec(head_dim=32, rotary_dim=16)
    keys = random_keys(2, SEQ, 32).to(torch.bfloat16)
    delta = random_delta(SEQ)
    out = rotate_keys(keys, delta, spec)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, rotate_keys(keys.float(), delta, spec).to(torch.bfloat16))
    assert torch.equal(out[..., 16:], keys[..., 16:])
    # Doing the arithmetic in bf16 would give a different answer, so the equality above is a real check.
    angle = (delta[:, None].float() * spec.inv_freq).to(torch.bfloat16)
    x1, x2 = keys[..., :8], keys[..., 8:16]
    naive = torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), dim=-1)
    assert not torch.equal(out[..., :16], naive)


def test_apply_rope_is_rotation_from_position_zero_and_shapes_are_checked() -> None:
    spec = toy_spec()
    x = random_keys(SEQ, 32)
    pos = torch.arange(SEQ)
    assert torch.equal(apply_rope(x, pos, spec), rotate_keys(x, pos, spec))
    assert torch.equal(rotate_keys(x, torch.tensor(5), spec), rotate_keys(x, torch.full((SEQ,), 5), spec))
    with pytest.raises(ValueError, match="delta"):
        rotate_keys(x, torch.zeros(SEQ + 1), spec)
    with pytest.raises(ValueError, match="head_dim"):
        rotate_keys(random_keys(SEQ, 16), pos, spec)


def test_500_edits_original_plus_offset_stays_at_rounding_level() -> None:
    """Why the cache keeps original keys + an accumulated offset instead of rotating in place."""
    spec = toy_spec(head_dim=64, rotary_dim=64)
    original = random_keys(2, SEQ, 64)  # [H, S, D]
    steps = torch.randint(-6, 7, (500, SEQ), generator=torch.Generator().manual_seed(3))
    compounded, total = original, torch.zeros(SEQ, dtype=torch.long)
    for step in steps:
        compounded = rotate_keys(compounded, step, spec)
        total = total + step
    exact = complex_reference(original, total, spec)
    compounding_err = rel_err(compounded, exact)
    offset_err = rel_err(rotate_keys(original, total, spec), exact)
    print(f"500 edits: compounded rel err {compounding_err:.2e}, original+offset rel err {offset_err:.2e}")
    assert offset_err < TOL
    assert offset_err < compounding_err < 1e-3


# ---------------------------------------------------------------- configs


def test_position_dependent_rope_types_are_refused() -> None:
    dynamic = LlamaConfig(**TINY, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(UnsupportedRope, match="dynamic"):
        rope_spec_from_config(dynamic)
    longrope = LlamaConfig(
        **TINY,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 1e4,
            "short_factor": [1.0] * 8,
            "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 64,
        },
    )
    with pytest.raises(UnsupportedRope, match="longrope") as info:
        rope_spec_from_config(longrope)
    assert "longrope" in info.value.reason


def test_unknown_pairing_and_per_layer_rope_are_refused() -> None:
    config = LlamaConfig(**TINY)
    config.model_type = "some_new_model"
    with pytest.raises(UnsupportedRope, match="interleaved"):
        rope_spec_from_config(config)
    assert rope_spec_from_config(config, interleaved=True).interleaved
    with pytest.raises(UnsupportedRope, match="per-layer"):
        rope_spec_from_config(Gemma3TextConfig(**TINY, head_dim=16))


def test_partial_rotary_under_legacy_names() -> None:
    neox = rope_spec_from_config(GPTNeoXConfig(hidden_size=64, num_attention_heads=4, rotary_pct=0.5))
    assert (neox.head_dim, neox.rotary_dim, neox.interleaved) == (16, 8, False)
    gptj = rope_spec_from_config(GPTJConfig(n_embd=64, n_head=4, rotary_dim=4))
    assert (gptj.head_dim, gptj.rotary_dim, gptj.interleaved) == (16, 4, True)


# ---------------------------------------------------------------- model-level exactness


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable[[], PreTrainedModel]
    rotary_dim: int
    interleaved: bool
    attention_factor: bool = False  # True where transformers scales cos/sin (YaRN)


def llama(rope_parameters: dict[str, Any] | None = None) -> Callable[[], PreTrainedModel]:
    return lambda: LlamaForCausalLM(LlamaConfig(**TINY, rope_parameters=rope_parameters))


VARIANTS = [
    Variant("llama-default", llama(), 16, False),
    Variant("llama-linear", llama({"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}), 16, False),
    Variant(
        "llama-llama3",
        llama(
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 10000.0,
            }
        ),
        16,
        False,
    ),
    Variant("llama-yarn", llama(YARN), 16, False, attention_factor=True),
    Variant(
        "qwen2-yarn", lambda: Qwen2ForCausalLM(Qwen2Config(**TINY, rope_parameters=YARN)), 16, False, True
    ),
    Variant(
        "stablelm-partial",
        lambda: StableLmForCausalLM(StableLmConfig(**TINY, partial_rotary_factor=0.5)),
        8,
        False,
    ),
    Variant("phi-partial", lambda: PhiForCausalLM(PhiConfig(**TINY, partial_rotary_factor=0.5)), 8, False),
    Variant("cohere-interleaved", lambda: CohereForCausalLM(CohereConfig(**TINY)), 16, True),
    Variant(
        "glm-interleaved-partial",
        lambda: GlmForCausalLM(GlmConfig(**TINY, head_dim=16, partial_rotary_factor=0.5)),
        8,
        True,
    ),
]
GPTJ = Variant(
    "gptj-interleaved-partial",
    lambda: GPTJForCausalLM(
        GPTJConfig(
            n_embd=64,
            n_inner=128,
            n_layer=2,
            n_head=4,
            rotary_dim=8,
            vocab_size=VOCAB,
            n_positions=256,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    8,
    True,
)


def build(variant: Variant) -> tuple[PreTrainedModel, RopeSpec]:
    torch.manual_seed(0)
    model = variant.make().eval()
    config: PreTrainedConfig = model.config
    spec = rope_spec_from_config(config)
    assert (spec.rotary_dim, spec.interleaved) == (variant.rotary_dim, variant.interleaved)
    return model, spec


def token_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(4))  # [B, S]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_attention_path_keys_shift_exactly(variant: Variant) -> None:
    """rotate_keys(RoPE_p(k), Δ) == RoPE_{p+Δ}(k), with RoPE_p the model's own rotary module and apply fn."""
    model, spec = build(variant)
    rotary = model.model.rotary_emb
    assert torch.equal(spec.inv_freq, rotary.inv_freq.float())
    assert (rotary.attention_scaling != 1.0) == variant.attention_factor
    modeling = importlib.import_module(type(model).__module__)

    def model_rope(k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The attention layer's RoPE step: k [B, H, S, D] at positions [S]."""
        cos, sin = rotary(k, positions[None])  # [1, S, r]
        r = cos.shape[-1]
        _, k_rot = modeling.apply_rotary_pos_emb(k[..., :r], k[..., :r], cos, sin)
        return torch.cat((k_rot, k[..., r:]), dim=-1)

    captured: list[torch.Tensor] = []
    attention = model.model.layers[0].self_attn
    hook = attention.k_proj.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        cache = model(token_ids(), use_cache=True).cache
    hook.remove()
    pre_rope = captured[0].view(1, SEQ, -1, spec.head_dim).transpose(1, 2)  # [B, H_kv, S, D]
    positions = torch.arange(SEQ)
    with torch.no_grad():
        at_p = model_rope(pre_rope, positions)
        # The capture is right: it reproduces what the real forward pass cached for layer 0.
        assert rel_err(at_p, cache.layers[0].keys) < 1e-6
        delta = torch.maximum(random_delta(SEQ, -5, 40), -positions)  # per-token shifts, p + Δ >= 0
        target = model_rope(pre_rope, positions + delta)
        err = rel_err(rotate_keys(at_p, delta, spec), target)
        print(f"{variant.name}: attention-path max rel err {err:.2e}")
        assert err < TOL
        if variant.attention_factor:
            # R(Δ) from the model's cos/sin applies the attention factor a second time: clearly wrong.
            assert rel_err(model_rope(at_p, delta), target) > 1e-2


@pytest.mark.parametrize("variant", [*VARIANTS, GPTJ], ids=lambda v: v.name)
def test_cached_keys_shift_exactly_in_a_real_forward(variant: Variant) -> None:
    """Cache of tokens at 0..S-1 rotated by Δ == cache of the same tokens run at Δ..S-1+Δ."""
    model, spec = build(variant)
    shift = 37
    ids = token_ids()
    with torch.no_grad():
        at_zero = model(ids, use_cache=True).cache
        shifted = model(ids, position_ids=torch.arange(SEQ)[None] + shift, use_cache=True).cache
    errors = []
    for layer_zero, layer_shifted in zip(at_zero.layers, shifted.layers, strict=True):
        keys, expected = layer_zero.keys, layer_shifted.keys  # [B, H_kv, S, D]
        assert rel_err(keys, expected) > 1e-2  # the shift does change the cached keys
        errors.append(rel_err(rotate_keys(keys, torch.tensor(shift), spec), expected))
        assert rel_err(layer_zero.values, layer_shifted.values) < TOL  # values carry no position
    print(f"{variant.name}: cached-keys max rel err {max(errors):.2e}")
    assert max(errors) < TOL
