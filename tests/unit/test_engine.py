"""CompletionEngine on tiny random-weight Llama and Qwen2 models (real transformers classes)."""

from __future__ import annotations

import threading

import pytest
import torch

from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.models import LoadedModel, ModelSpec
from splice_testkit.tiny import build_model, build_tokenizer

PROMPTS = [
    CompletionInput("def foo(x):\n    return", ""),
    CompletionInput("import os\n\nclass A:\n    def f(self):\n        ", "\n\nprint(A())\n"),
    CompletionInput("x = 1\n", ""),
    CompletionInput("for i in range(10):\n    total += i\n", "print(total)\n"),
]


def make_engine(
    family: str = "plain", arch: str = "llama", context: int = 512, **config: object
) -> CompletionEngine:
    tokenizer = build_tokenizer(family)
    model = build_model(tokenizer, arch, max_position_embeddings=context)
    loaded = LoadedModel(
        model,
        tokenizer,
        f"tiny-{arch}",
        ModelSpec("dir", "tiny"),
        torch.device("cpu"),
        torch.float32,
        context,
    )
    return CompletionEngine(loaded, EngineConfig(**config))  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=[("plain", "llama"), ("qwen", "qwen2")], ids=["llama", "qwen2"])
def engine(request: pytest.FixtureRequest) -> CompletionEngine:
    family, arch = request.param
    return make_engine(family, arch)


def test_template_detected_per_tokenizer() -> None:
    assert make_engine("plain").template.name == "prefix-only"
    assert make_engine("qwen", "qwen2").template.name == "qwen"
    assert make_engine("starcoder").template.name == "starcoder"


def test_incremental_decode_matches_full_forward(engine: CompletionEngine) -> None:
    """prefill + decode_one_token (KV cache) must give the logits of a full forward pass."""
    ids = engine.prepare(PROMPTS[1], 8).input_ids
    cache, logits = engine.prefill(ids)
    seq = list(ids)
    for _ in range(6):
        token = int(torch.argmax(logits))
        seq.append(token)
        logits = engine.decode_one_token(cache, token)
        with torch.inference_mode():
            reference = engine.model(input_ids=torch.tensor([seq])).logits[0, -1].float()
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_greedy_matches_transformers_generate(engine: CompletionEngine) -> None:
    """Without healing, the engine's greedy loop picks the same tokens as `generate(do_sample=False)`."""
    family = "qwen" if engine.template.is_fim else "plain"
    arch = "qwen2" if engine.template.is_fim else "llama"
    engine = make_engine(family, arch, token_healing=False)
    for inp in PROMPTS:
        result = engine.complete(inp, GenerationParams(max_tokens=24))
        ids = torch.tensor([engine.prepare(inp, 24).input_ids])
        with torch.inference_mode():
            out = engine.model.generate(
                ids, max_new_tokens=24, do_sample=False, eos_token_id=sorted(engine.stop_ids), pad_token_id=0
            )
        reference = engine.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert reference.startswith(result.raw), (result.raw, reference)
        assert result.completion_tokens >= 1


def test_greedy_is_deterministic(engine: CompletionEngine) -> None:
    for inp in PROMPTS:
        first = engine.complete(inp, GenerationParams(max_tokens=32))
        second = engine.complete(inp, GenerationParams(max_tokens=32))
        assert (first.raw, first.text) == (second.raw, second.text)


def test_streamed_deltas_concatenate_to_final_text(engine: CompletionEngine) -> None:
    for inp in PROMPTS:
        for max_tokens in (5, 40, 120):
            deltas: list[str] = []
            result = engine.complete(inp, GenerationParams(max_tokens=max_tokens), on_text=deltas.append)
            assert "".join(deltas) == result.text
            assert all(deltas)


def test_seeded_sampling_is_reproducible() -> None:
    engine = make_engine()
    params = GenerationParams(max_tokens=30, temperature=1.0, seed=1234)
    runs = {engine.complete(PROMPTS[2], params).raw for _ in range(2)}
    assert len(runs) == 1
    others = {
        engine.complete(PROMPTS[2], GenerationParams(max_tokens=30, temperature=1.0, seed=s)).raw
        for s in range(5)
    }
    assert len(others) > 1, "different seeds should sample different text"


def test_a_tiny_temperature_or_top_p_samples_the_greedy_text() -> None:
    """Found by schemathesis: temperature 6e-77 overflowed logits / t to inf and softmax to nan (a 500).
    So was top_p 1e-300 (it rounds to 0 in fp32 and kept no token). As t -> 0 or top_p -> 0 sampling
    becomes argmax, so it must pick greedy decoding's tokens."""
    engine = make_engine(token_healing=False)
    greedy = engine.complete(PROMPTS[2], GenerationParams(max_tokens=30))
    for t in (5.9e-77, 1e-30, 1e-8):
        cold = engine.complete(PROMPTS[2], GenerationParams(max_tokens=30, temperature=t, seed=7))
        assert cold.raw == greedy.raw, t
    for p in (1e-300, 1e-8):  # nucleus sampling keeps at least the top token
        params = GenerationParams(max_tokens=30, temperature=1.0, top_p=p, seed=7)
        narrow = engine.complete(PROMPTS[2], params)
        assert narrow.raw == greedy.raw, p


def test_stop_sequence_cuts_raw_text() -> None:
    engine = make_engine()
    inp = CompletionInput("x = 1\n", "")
    free = engine.complete(inp, GenerationParams(max_tokens=40))
    assert len(free.raw) > 6
    stop = free.raw[3:5]
    stopped = engine.complete(inp, GenerationParams(max_tokens=40, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.raw == free.raw[: free.raw.find(stop)]
    assert stop not in stopped.raw


def test_cancel_before_and_during_decoding() -> None:
    engine = make_engine()
    cancel = threading.Event()
    cancel.set()
    result = engine.complete(PROMPTS[2], GenerationParams(max_tokens=100), cancel=cancel)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens == 0

    cancel = threading.Event()
    seen: list[int] = []
    original = engine.decode_one_token

    def counting(cache: object, token: int) -> torch.Tensor:
        seen.append(token)
        if len(seen) == 3:
            cancel.set()
        return original(cache, token)  # type: ignore[arg-type]

    engine.decode_one_token = counting  # type: ignore[method-assign]
    try:
        result = engine.complete(PROMPTS[2], GenerationParams(max_tokens=100), cancel=cancel)
    finally:
        del engine.decode_one_token
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens == 3


def test_prompt_over_context_is_trimmed_from_the_left() -> None:
    engine = make_engine("starcoder", context=128)
    prefix = "".join(f"value_{i} = compute({i})\n" for i in range(200)) + "result = "
    suffix = "".join(f"print(value_{i})\n" for i in range(100))
    result = engine.complete(CompletionInput(prefix, suffix), GenerationParams(max_tokens=16))
    assert result.prompt_tokens <= 128 - 16
    assert result.trimmed_prompt_tokens > 0
    prompt = engine.prepare(CompletionInput(prefix, suffix), 16)
    text = engine.tokenizer.decode(prompt.input_ids)
    assert "result =" in text and "value_199" in text  # the text nearest the cursor is kept
    assert "value_0 " not in text


def test_max_prompt_tokens_setting_caps_the_prompt() -> None:
    engine = make_engine(max_prompt_tokens=40)
    prompt = engine.prepare(CompletionInput("a = 1\n" * 100), 16)
    assert len(prompt.input_ids) <= 40


def test_max_tokens_leaving_no_room_is_an_error() -> None:
    engine = make_engine(context=64)
    with pytest.raises(ValueError, match="leaves no room"):
        engine.complete(PROMPTS[0], GenerationParams(max_tokens=60))


def test_crlf_document_is_prompted_as_lf() -> None:
    engine = make_engine()
    lf = engine.prepare(CompletionInput("def f():\n    x = 1\n", "\nprint(1)\n"), 8).input_ids
    crlf = engine.prepare(CompletionInput("def f():\r\n    x = 1\r\n", "\r\nprint(1)\r\n"), 8).input_ids
    assert lf == crlf


def test_generation_params_are_validated() -> None:
    with pytest.raises(ValueError):
        GenerationParams(max_tokens=0)
    with pytest.raises(ValueError):
        GenerationParams(temperature=-1)
    with pytest.raises(ValueError):
        GenerationParams(top_p=0)
    with pytest.raises(ValueError):
        EngineConfig(max_prompt_tokens=2)


def test_unsupported_fim_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="spm"):
        make_engine("qwen", "qwen2", fim_mode="spm")
    assert make_engine("starcoder", fim_mode="spm").config.fim_mode == "spm"


def test_document_cache_reuses_kv_and_matches_full_for_an_append() -> None:
    from splice.completion.document_cache import DocumentKey

    engine = make_engine("starcoder", "llama", token_healing=False)
    fresh = make_engine("starcoder", "llama", token_healing=False, reuse_method="full")
    key = DocumentKey("t", "doc.py", "tiny")
    head = "".join(f"x_{i} = {i}\n" for i in range(40))
    first = engine.complete(CompletionInput(head, ""), GenerationParams(max_tokens=8), document=key)
    assert first.encoded_prompt_tokens == first.prompt_tokens and first.reused_prompt_tokens == 0

    appended = head + "y = x_3 + x_4\n"  # an edit at the end: nothing cached is stale
    cached = engine.complete(CompletionInput(appended, ""), GenerationParams(max_tokens=8), document=key)
    reference = fresh.complete(CompletionInput(appended, ""), GenerationParams(max_tokens=8))
    assert cached.reused_prompt_tokens > 0.8 * cached.prompt_tokens
    assert cached.encoded_prompt_tokens + cached.reused_prompt_tokens == cached.prompt_tokens
    assert cached.raw == reference.raw

    again = engine.complete(CompletionInput(appended, ""), GenerationParams(max_tokens=8), document=key)
    assert again.encoded_prompt_tokens == 0 and again.raw == cached.raw
    assert len(engine.kv) == 1 and engine.kv.bytes > 0


def test_document_cache_budget_evicts_least_recently_used() -> None:
    from splice.completion.document_cache import DocumentKey

    engine = make_engine(document_cache_bytes=1 << 30)
    for name in ("a", "b", "c"):
        engine.complete(
            CompletionInput("z = 1\n" * 30),
            GenerationParams(max_tokens=2),
            document=DocumentKey("t", name, "m"),
        )
    one = engine.kv.bytes // 3
    engine.kv.caches.budget_bytes = 2 * one + one // 2  # room for two
    engine.complete(
        CompletionInput("z = 1\n" * 30), GenerationParams(max_tokens=2), document=DocumentKey("t", "a", "m")
    )
    assert [k.document for k in engine.kv.caches.lru_order()] == ["c", "a"]
