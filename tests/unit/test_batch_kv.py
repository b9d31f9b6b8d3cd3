"""Batched decoding over a static KV pool against each request decoded alone (tiny random-weight
Llama, Qwen2 and OpenELM-shaped models): rows of different lengths, drafts to verify, slots freed
and refilled."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, PreTrainedModel

from splice.completion.batch_kv import KVPool, kv_shape
from splice.completion.runner import ModelRunner
from splice_testkit.tiny import build_model, build_tokenizer


@pytest.fixture(scope="module", params=["llama", "qwen2", "openelm"])
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return build_model(build_tokenizer("plain"), request.param)


def _pool(model: PreTrainedModel, slots: int = 4, capacity: int = 96) -> KVPool:
    config = model.config
    heads, head_dim = kv_shape(config)
    return KVPool(heads, head_dim, slots, capacity, dtype=torch.float32, device=torch.device("cpu"))


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(20, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _prefill(runner: ModelRunner, model: PreTrainedModel, ids: list[int]) -> tuple[DynamicCache, int]:
    cache = DynamicCache(config=model.config)
    out = runner.run(torch.tensor([ids]), cache)
    assert out.logits is not None
    return cache, int(out.logits[-1].argmax())


def test_batched_greedy_decoding_equals_each_request_alone(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    prompts = [_prompt(n, n) for n in (17, 40, 5)]
    pool = _pool(model)
    solo, tokens = [], []
    for i, ids in enumerate(prompts):
        cache, first = _prefill(runner, model, ids)
        pool.admit(f"r{i}", cache)
        solo.append(cache)
        tokens.append(first)
    batched_tokens = list(tokens)
    for _ in range(6):
        rows = [[t] for t in batched_tokens]
        logits = runner.run_batch(pool, [0, 1, 2], rows)
        for b in range(3):
            pool.advance(b, 1)
            alone = runner.run(torch.tensor([[tokens[b]]]), solo[b]).logits
            assert alone is not None
            torch.testing.assert_close(logits[b], alone, rtol=1e-4, atol=1e-4)
            tokens[b] = int(alone[-1].argmax())
            batched_tokens[b] = int(logits[b][-1].argmax())
        assert batched_tokens == tokens
    assert pool.lengths == [17 + 6, 40 + 6, 5 + 6]


def test_a_verification_row_beside_decode_rows_and_a_rejected_draft(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    pool = _pool(model)
    caches = []
    for i, n in enumerate((12, 30)):
        cache, _ = _prefill(runner, model, _prompt(n, 100 + n))
        pool.admit(i, cache)
        caches.append(cache)
    rows = [[7, 8, 9, 10], [11]]  # row 0 verifies a 3-token draft, row 1 decodes one token
    logits = runner.run_batch(pool, [0, 1], rows)
    assert [tuple(x.shape) for x in logits] == [(4, model.config.vocab_size), (1, model.config.vocab_size)]
    for b, row in enumerate(rows):
        alone = runner.run(torch.tensor([row]), caches[b], logits="all").logits
        torch.testing.assert_close(logits[b], alone, rtol=1e-4, atol=1e-4)
    # Row 0 keeps only 2 of its 4 tokens (draft rejected after one): its next pass must equal a
    # cache cropped the same way.
    pool.advance(0, 2)
    pool.advance(1, 1)
    caches[0].crop(-2)
    logits = runner.run_batch(pool, [0, 1], [[21], [22, 23]])
    for b, row in enumerate([[21], [22, 23]]):
        alone = runner.run(torch.tensor([row]), caches[b], logits="all").logits
        torch.testing.assert_close(logits[b], alone, rtol=1e-4, atol=1e-4)


def test_released_slots_are_refilled_and_the_moved_request_decodes_on(model: PreTrainedModel) -> None:
    runner = ModelRunner(model)
    pool = _pool(model, slots=3)
    caches = {}
    for name, n in (("a", 9), ("b", 14), ("c", 21)):
        cache, _ = _prefill(runner, model, _prompt(n, n))
        pool.admit(name, cache)
        caches[name] = cache
    assert not pool.fits(5)  # every slot taken
    pool.release("a")  # "c" moves into slot 0
    assert pool.owners == ["c", "b"] and pool.lengths == [21, 14] and pool.fits(5)
    logits = runner.run_batch(pool, [pool.slot_of("b"), pool.slot_of("c")], [[5], [6]])
    for name, token, got in (("b", 5, logits[0]), ("c", 6, logits[1])):
        alone = runner.run(torch.tensor([[token]]), caches[name]).logits
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)


def test_pool_refuses_what_does_not_fit() -> None:
    model = build_model(build_tokenizer("plain"), "llama")
    runner = ModelRunner(model)
    pool = _pool(model, slots=1, capacity=16)
    with pytest.raises(ValueError, match="no slot for 20 tokens"):
        pool.admit("big", _prefill(runner, model, _prompt(20, 1))[0])
    pool.admit("x", _prefill(runner, model, _prompt(14, 2))[0])
    with pytest.raises(ValueError, match="does not fit"):
        runner.run_batch(pool, [0], [[1, 2, 3]])
    with pytest.raises(ValueError, match="one fed count per slot"):
        pool.batch([0], [])
    with pytest.raises(ValueError, match="slots >= 1"):
        KVPool([2], 16, 0, 8, dtype=torch.float32, device=torch.device("cpu"))
