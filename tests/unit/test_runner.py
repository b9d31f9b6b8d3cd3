"""The model runner against transformers' own forward, on tiny random-weight models built from
configs: Llama, Qwen2, a partial-rotary StableLM (real transformers classes) and an OpenELM-shaped
model (Qwen3 layers with a different number of heads and FFN width per layer)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
)

from splice.completion.openelm import OpenELMConfig, OpenELMForCausalLM, layer_wise_scaling
from splice.completion.runner import ModelRunner

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _models() -> dict[str, PreTrainedModel]:
    torch.manual_seed(0)
    return {
        "llama": LlamaForCausalLM(LlamaConfig(**TINY)),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**TINY)),
        "stablelm-partial": StableLmForCausalLM(StableLmConfig(**TINY, partial_rotary_factor=0.5)),
        "openelm": OpenELMForCausalLM(
            OpenELMConfig(
                **{**TINY, "head_dim": 16},
                **layer_wise_scaling(64, 4, 16, num_gqa_groups=2, ffn_dim_divisor=32),
            )
        ),
    }


MODELS = _models()


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return MODELS[request.param].eval()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def test_supported_families(model: PreTrainedModel) -> None:
    assert ModelRunner(model).supported


def test_hidden_state_after_layer_l_equals_transformers(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    ids = _ids(12)
    with torch.inference_mode():
        reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(1, runner.num_layers):  # the last entry of `hidden_states` is after the norm
        out = runner.run(ids, DynamicCache(config=model.config), layers=layer, logits="none")
        assert out.logits is None and out.layers == layer
        torch.testing.assert_close(out.hidden, reference[layer], rtol=1e-5, atol=1e-5)


def test_full_depth_logits_equal_transformers(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    ids = _ids(10)
    with torch.inference_mode():
        reference = model(input_ids=ids).logits[0].float()
    out = runner.run(ids, DynamicCache(config=model.config), logits="all")
    assert out.logits is not None
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)
    last = runner.run(ids, DynamicCache(config=model.config)).logits
    assert last is not None
    torch.testing.assert_close(last, reference[-1:], rtol=1e-5, atol=1e-5)
    tail = runner.run(ids, DynamicCache(config=model.config), logits=3).logits  # a prompt + 2 drafted
    assert tail is not None
    torch.testing.assert_close(tail, reference[-3:], rtol=1e-5, atol=1e-5)


def test_prefill_then_decode_with_the_cache_equals_a_full_forward(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    ids = _ids(9)
    cache = DynamicCache(config=model.config)
    runner.run(ids[:, :6], cache)
    for i in range(6, 9):
        step = runner.run(ids[:, i : i + 1], cache).logits
        with torch.inference_mode():
            reference = model(input_ids=ids[:, : i + 1]).logits[0, -1:].float()
        assert step is not None
        torch.testing.assert_close(step, reference, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 9


def test_positions_and_mask_are_passed_as_transformers_takes_them(model: PreTrainedModel) -> None:
    """PIE's call: tokens at chosen positions, with a custom 4D boolean mask."""
    runner = ModelRunner(model)
    ids = _ids(6)
    positions = torch.tensor([[3, 4, 5, 9, 10, 11]])
    mask = (positions[0].unsqueeze(0) <= positions[0].unsqueeze(1))[None, None]  # [1, 1, 6, 6]
    with torch.inference_mode():
        reference = model(input_ids=ids, position_ids=positions, attention_mask=mask).logits[0].float()
    out = runner.run(
        ids, DynamicCache(config=model.config), positions=positions, attention_mask=mask, logits="all"
    )
    assert out.logits is not None
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)


def test_stopping_early_fills_only_the_layers_run(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    cache = DynamicCache(config=model.config)
    runner.run(_ids(5), cache, layers=2, logits="none")
    filled = [layer.keys is not None and layer.keys.numel() > 0 for layer in cache.layers]
    assert filled == [True, True, False, False]
    assert model.config.num_hidden_layers == 4  # the shared config is never touched


def test_bad_arguments_are_refused(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    for layers in (0, 5):
        with pytest.raises(ValueError, match="layers must be in"):
            runner.run(_ids(3), DynamicCache(config=model.config), layers=layers)
    with pytest.raises(ValueError, match="logits must be"):
        runner.run(_ids(3), DynamicCache(config=model.config), logits="some")
    for count in (0, 4):
        with pytest.raises(ValueError, match="logits must be in"):
            runner.run(_ids(3), DynamicCache(config=model.config), logits=count)


def test_other_families_run_whole_and_cannot_stop_early() -> None:
    torch.manual_seed(0)
    config = PhiConfig(**{**TINY, "num_key_value_heads": 4}, partial_rotary_factor=0.5)
    model = PhiForCausalLM(config).eval()
    runner = ModelRunner(model)
    assert not runner.supported
    ids = _ids(7)
    with torch.inference_mode():
        reference = model(input_ids=ids).logits[0, -1:].float()
    out = runner.run(ids, DynamicCache(config=model.config))
    assert out.logits is not None
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)
    tail = runner.run(ids, DynamicCache(config=model.config), logits=2).logits
    with torch.inference_mode():
        whole = model(input_ids=ids).logits[0, -2:].float()
    assert tail is not None
    torch.testing.assert_close(tail, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot stop before its last layer"):
        runner.run(ids, DynamicCache(config=model.config), layers=2)
