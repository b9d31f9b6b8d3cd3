"""Early exit on tiny random-weight models (Llama, Qwen2, Qwen3, partial-rotary StableLM): the
exit step's logits and the propagated K/V against references computed by the model's own layers,
the controller's teacher-forced labels on a hand-made table, and the heads' file checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
)

from splice.completion.document_cache import DocumentKey
from splice.completion.early_exit import (
    CONTINUE,
    EXIT,
    STOP,
    ExitHeads,
    ExitHeadsError,
    ExitThresholds,
    controller_labels,
    load_exit_heads,
    model_identity,
    save_exit_heads,
)
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.models import LoadedModel, parse_spec
from splice.completion.runner import ModelRunner
from splice_testkit.tiny import build_model, build_tokenizer

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=5,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _models() -> dict[str, PreTrainedModel]:
    torch.manual_seed(0)
    return {
        "llama": LlamaForCausalLM(LlamaConfig(**TINY)),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**TINY)),
        "qwen3": Qwen3ForCausalLM(Qwen3Config(**TINY, head_dim=16)),
        "stablelm-partial": StableLmForCausalLM(
            StableLmConfig(**TINY, partial_rotary_factor=0.5, qk_layernorm=True)
        ),
    }


MODELS = _models()


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return MODELS[request.param].eval()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def _heads(model: PreTrainedModel, layers: tuple[int, ...], decision: int | None) -> ExitHeads:
    """Heads with random lenses whose controller always says `decision` (None: random)."""
    torch.manual_seed(3)
    heads = ExitHeads(model.config.hidden_size, layers, controller_hidden=8)
    with torch.no_grad():
        for lens in heads.lenses:
            lens.weight.add_(0.1 * torch.randn_like(lens.weight))
        if decision is not None:
            heads.controller[-1].weight.zero_()
            heads.controller[-1].bias.fill_(-20.0)
            heads.controller[-1].bias[decision] = 20.0
    return heads.eval()


def _prefilled(model: PreTrainedModel, ids: torch.Tensor) -> tuple[ModelRunner, DynamicCache]:
    runner = ModelRunner(model)
    cache = DynamicCache(config=model.config)
    runner.run(ids, cache)
    return runner, cache


def test_exit_emits_the_lens_logits_and_propagates_kv_from_the_exited_state(model: PreTrainedModel) -> None:
    ids = _ids(8)
    runner, cache = _prefilled(model, ids[:, :7])
    reference_cache = copy.deepcopy(cache)
    heads = _heads(model, (2, 4), EXIT)

    step = runner.decode_exit(ids[:, 7:], cache, heads, ExitThresholds(exit=0.5))
    assert step.decision == "exit" and step.layers == 2

    # Reference: the first two layers as usual, then each skipped layer run whole on the exited
    # hidden state (its own attention code computes the K/V a full layer would append).
    with torch.inference_mode():
        hidden, masks, rotary, positions = runner._inputs(ids[:, 7:], reference_cache, None, None)
        for index in range(2):
            hidden = runner._layer(index, hidden, masks, rotary, positions, reference_cache)
        exited = hidden
        for index in range(2, runner.num_layers):
            runner._layer(index, exited, masks, rotary, positions, reference_cache)
        expected = runner.head(heads.lens(runner.decoder.norm(exited[:, -1]), 0))[0].float()
    assert step.logits is not None
    torch.testing.assert_close(step.logits, expected, rtol=1e-5, atol=1e-5)
    for index in range(runner.num_layers):
        got, want = cache.layers[index], reference_cache.layers[index]
        assert got.keys.shape[-2] == 8
        torch.testing.assert_close(got.keys, want.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-5)
    # Not the K/V of a full-depth decode: the propagated layers really did change.
    full_cache = copy.deepcopy(reference_cache)
    full_cache.crop(-1)
    runner.run(ids[:, 7:], full_cache)
    assert not torch.allclose(full_cache.layers[3].keys, cache.layers[3].keys)


def test_continue_everywhere_equals_a_full_decode(model: PreTrainedModel) -> None:
    ids = _ids(8, seed=2)
    runner, cache = _prefilled(model, ids[:, :7])
    full_cache = copy.deepcopy(cache)
    step = runner.decode_exit(ids[:, 7:], cache, _heads(model, (1, 3), CONTINUE), ExitThresholds())
    full = runner.run(ids[:, 7:], full_cache).logits
    assert step.decision == "full" and step.layers == runner.num_layers and full is not None
    assert step.logits is not None
    torch.testing.assert_close(step.logits, full[-1], rtol=1e-5, atol=1e-5)
    for index in range(runner.num_layers):
        torch.testing.assert_close(cache.layers[index].keys, full_cache.layers[index].keys)


def test_stop_ends_with_a_full_depth_cache(model: PreTrainedModel) -> None:
    ids = _ids(6, seed=4)
    runner, cache = _prefilled(model, ids[:, :5])
    step = runner.decode_exit(ids[:, 5:], cache, _heads(model, (2,), STOP), ExitThresholds(stop=0.5))
    assert step.decision == "stop" and step.logits is None and step.layers == 2
    assert {cache.layers[i].keys.shape[-2] for i in range(runner.num_layers)} == {6}
    # A Stop threshold of 1.0 never fires: the same controller then runs the whole model.
    runner2, cache2 = _prefilled(model, ids[:, :5])
    step2 = runner2.decode_exit(ids[:, 5:], cache2, _heads(model, (2,), STOP), ExitThresholds(stop=1.0))
    assert step2.decision == "full"


def test_controller_labels_on_a_hand_made_table() -> None:
    # columns: exit heads at three layers, then the full model
    correct = torch.tensor(
        [
            [True, True, True, True],  # right from the first exit: exit everywhere
            [False, True, False, True],  # first right at slot 1: exit there and after
            [False, False, False, True],  # only the full model: continue everywhere
            [False, False, False, False],  # nobody: stop
            [False, False, True, False],  # an exit head right where the full model is wrong
        ]
    )
    assert controller_labels(correct).tolist() == [
        [EXIT, EXIT, EXIT],
        [CONTINUE, EXIT, EXIT],
        [CONTINUE, CONTINUE, CONTINUE],
        [STOP, STOP, STOP],
        [CONTINUE, CONTINUE, EXIT],
    ]


def _loaded(model: PreTrainedModel, model_id: str = "tiny/llama") -> LoadedModel:
    return LoadedModel(
        model=model,
        tokenizer=None,  # type: ignore[arg-type]
        model_id=model_id,
        spec=parse_spec("default"),
        device=torch.device("cpu"),
        dtype=torch.float32,
        context_window=256,
        adapter_name="fim",
    )


def test_heads_round_trip_and_are_refused_for_another_model(tmp_path: Path) -> None:
    llama, qwen2 = MODELS["llama"], MODELS["qwen2"]
    heads = _heads(llama, (2, 4), None)
    save_exit_heads(heads, tmp_path, model_identity(_loaded(llama)), {"note": "test"})
    back = load_exit_heads(tmp_path, _loaded(llama))
    assert back.exit_layers == (2, 4)
    for key, value in heads.state_dict().items():  # stored in fp16
        torch.testing.assert_close(back.state_dict()[key], value.half().float())

    with pytest.raises(ExitHeadsError, match=r"another model.*base_model_id"):
        load_exit_heads(tmp_path, _loaded(qwen2, model_id="tiny/qwen2"))
    with pytest.raises(ExitHeadsError, match="no exit heads"):
        load_exit_heads(tmp_path / "missing", _loaded(llama))
    (tmp_path / "exit_heads.json").write_text("{not json")
    with pytest.raises(ExitHeadsError, match="not valid JSON"):
        load_exit_heads(tmp_path, _loaded(llama))


@pytest.mark.parametrize("exit_, stop", [(0.0, 1.0), (1.5, 1.0), (0.9, -0.1), (float("nan"), 1.0)])
def test_thresholds_out_of_range_are_refused(exit_: float, stop: float) -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        ExitThresholds(exit=exit_, stop=stop)


def test_exit_layers_must_increase() -> None:
    with pytest.raises(ExitHeadsError):
        ExitHeads(64, (3, 2))
    with pytest.raises(ExitHeadsError):
        ExitHeads(64, ())


# --- the engine's decode loop with early exit (tiny Llama with a real tokenizer) ---


def _engine(decision: int | None, **config: object) -> CompletionEngine:
    tokenizer = build_tokenizer("starcoder")
    model = build_model(tokenizer, "llama", max_position_embeddings=512)
    heads = None if decision is None else _heads(model, (1,), decision)
    loaded = LoadedModel(
        model,
        tokenizer,
        "tiny-llama",
        parse_spec("default"),
        torch.device("cpu"),
        torch.float32,
        512,
        exit_heads=heads,
    )
    return CompletionEngine(loaded, EngineConfig(**{"token_healing": False, "drafting": "off", **config}))  # type: ignore[arg-type]


INPUT = CompletionInput("def total(xs):\n    s = 0\n    for x in xs:\n", "\n    return s\n")


def test_engine_continue_everywhere_is_greedy_and_counts_every_layer() -> None:
    params = GenerationParams(max_tokens=12)
    plain = _engine(None).complete(INPUT, params)
    engine = _engine(CONTINUE, early_exit=True)
    result = engine.complete(INPUT, params)
    assert result.raw == plain.raw and result.exited_tokens == 0
    assert result.decode_layers == result.decode_passes * engine.runner.num_layers > 0


def test_engine_exit_everywhere_runs_one_layer_per_token_and_leaves_the_document_intact() -> None:
    engine = _engine(EXIT, early_exit=True, exit_thresholds=ExitThresholds(exit=0.5))
    key = DocumentKey("t", "doc.py", "tiny-llama")
    params = GenerationParams(max_tokens=12)
    result = engine.complete(INPUT, params, document=key)
    assert result.decode_passes > 0 and result.exited_tokens == result.decode_passes
    assert result.decode_layers == result.decode_passes  # the exit layer is layer 1
    # The document's cache is untouched by decoding: a full-depth completion from it equals a fresh one.
    cached = engine.complete(INPUT, GenerationParams(max_tokens=12, early_exit=False), document=key)
    fresh = _engine(None).complete(INPUT, params)
    assert cached.reused_prompt_tokens == cached.prompt_tokens and cached.raw == fresh.raw


def test_engine_stop_ends_the_completion_and_reports_what_it_removed() -> None:
    engine = _engine(STOP, early_exit=True, exit_thresholds=ExitThresholds(stop=0.5))
    result = engine.complete(INPUT, GenerationParams(max_tokens=10))
    assert result.finish_reason == "early_stop"
    assert result.completion_tokens == 1 and result.early_stop_removed == 9  # the prompt's token only
    off = engine.complete(INPUT, GenerationParams(max_tokens=10, early_exit=False))
    assert (
        off.finish_reason != "early_stop"
        and off.decode_layers == off.decode_passes * engine.runner.num_layers
    )


def test_engine_refuses_early_exit_without_heads() -> None:
    with pytest.raises(ValueError, match="no exit heads"):
        _engine(None, early_exit=True)
    with pytest.raises(ValueError, match="no exit heads"):
        _engine(None).complete(INPUT, GenerationParams(max_tokens=4, early_exit=True))


# --- self-speculative drafting ---


def test_lower_then_upper_passes_equal_one_full_pass(model: PreTrainedModel) -> None:
    """Draft-style: tokens through the lower layers one at a time, then the upper layers on all of
    them at once, give the full model's logits and the same cache as one full pass."""
    if ModelRunner(model).sliding:
        pytest.skip("no sliding-window model here")
    ids = _ids(10, seed=5)
    runner, cache = _prefilled(model, ids[:, :6])
    full_cache = copy.deepcopy(cache)
    states = [runner.run_lower(ids[:, i : i + 1], cache, 2) for i in range(6, 10)]
    assert cache.get_seq_length(0) == 10 and cache.get_seq_length(2) == 6  # the upper layers lag
    logits = runner.run_upper(torch.cat(states, dim=1), cache, 2)
    reference = runner.run(ids[:, 6:], full_cache, logits="all").logits
    assert reference is not None
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    for index in range(runner.num_layers):
        torch.testing.assert_close(
            cache.layers[index].keys, full_cache.layers[index].keys, rtol=1e-5, atol=1e-5
        )


def test_self_speculative_drafting_equals_greedy() -> None:
    plain = _engine(None)
    tokenizer, model = plain.loaded.tokenizer, plain.loaded.model
    layers = model.config.num_hidden_layers
    heads = ExitHeads(model.config.hidden_size, (layers - 1,), controller_hidden=8).eval()  # identity lens
    loaded = LoadedModel(
        model,
        tokenizer,
        "tiny-llama",
        parse_spec("default"),
        torch.device("cpu"),
        torch.float32,
        512,
        exit_heads=heads,
    )
    speculative = CompletionEngine(loaded, EngineConfig(token_healing=False, drafting="self"))
    key = DocumentKey("t", "doc.py", "tiny-llama")
    accepted = 0
    for inp in (
        INPUT,
        CompletionInput("x = 1\ny = 2\n", ""),
        CompletionInput("class A:\n    def f(self):\n", ""),
    ):
        params = GenerationParams(max_tokens=24)
        want = plain.complete(inp, params)
        got = speculative.complete(inp, params, document=key)
        assert (got.raw, got.completion_tokens) == (want.raw, want.completion_tokens)
        assert got.verify_passes > 0
        accepted += got.accepted_draft_tokens
    assert accepted > 0, "no drafted token was ever accepted: verification's reuse path went untested"
    with pytest.raises(ValueError, match="self-speculative drafting needs exit heads"):
        _engine(None, drafting="self")
