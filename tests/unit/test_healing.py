"""Token healing: the healed split, the constraint index, and its use in decoding."""

from __future__ import annotations

import pytest
import torch

from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.healing import TokenHealer
from splice.completion.models import LoadedModel, ModelSpec
from splice_testkit.tiny import build_model, build_tokenizer

PREFIXES = [
    "def fibonacci(n):\n    ",
    "import os\nx = os.pa",
    "total = 0\nfor i in range(10):\n",
    "é = 'café",
    "a",
]


@pytest.fixture(scope="module")
def healer() -> TokenHealer:
    return TokenHealer(build_tokenizer("plain"))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_split_removes_exactly_the_last_token(healer: TokenHealer, prefix: str) -> None:
    healed = healer.split(prefix)
    assert healed.prefix + healed.heal == prefix
    if healed.heal:
        ids = healer.tokenizer(prefix, add_special_tokens=False).input_ids
        assert healer.token_text[ids[-1]] == healed.heal


def test_split_keeps_a_prefix_that_is_one_token(healer: TokenHealer) -> None:
    assert healer.split("").heal == ""
    assert healer.split("a").prefix == "a"


@pytest.mark.parametrize("pending", [" ", "    ", "\n", "\n    ", "re", "return", "é", "self.it"])
def test_allowed_is_exactly_the_consistent_tokens(healer: TokenHealer, pending: str) -> None:
    """Brute force over the vocabulary: t starts with pending, or pending starts with t."""
    special = set(healer.tokenizer.all_special_ids)
    texts = [(i, t) for i, t in enumerate(healer.token_text) if t and "\ufffd" not in t and i not in special]

    def spellable(s: str) -> bool:
        return any(t.startswith(s) or (s.startswith(t) and spellable(s[len(t) :])) for _, t in texts)

    expected = {
        i
        for i, t in texts
        if t.startswith(pending) or (pending.startswith(t) and spellable(pending[len(t) :]))
    }
    assert set(healer.allowed(pending)) == expected
    # an ASCII character is always a token in a byte-level vocabulary; "é" is two byte tokens
    assert bool(expected) == pending.isascii()


def _engine(healing: bool) -> CompletionEngine:
    tokenizer = build_tokenizer("plain")
    model = build_model(tokenizer, "llama")
    loaded = LoadedModel(
        model, tokenizer, "tiny", ModelSpec("dir", "t"), torch.device("cpu"), torch.float32, 512
    )
    # One token a pass, so that the spy below sees every fed token (drafting feeds several at once;
    # tests/unit/test_drafting.py checks that it produces the same tokens, healing included).
    return CompletionEngine(loaded, EngineConfig(token_healing=healing, drafting="off"))


def test_unspellable_last_token_is_not_healed(healer: TokenHealer) -> None:
    # "é" is two byte-level tokens that never decode to text alone: nothing could re-spell it
    assert healer.split("x = 'café").heal == ""


@pytest.mark.parametrize("prefix", PREFIXES[:3])
def test_generation_respells_the_healed_text(prefix: str) -> None:
    engine = _engine(True)
    prompt = engine.prepare(CompletionInput(prefix), 16)
    assert prompt.heal, "these prefixes all end in a healable token"
    seen: list[int] = []
    original = engine.decode_one_token

    def spy(cache: object, token: int) -> torch.Tensor:
        seen.append(token)
        return original(cache, token)  # type: ignore[arg-type]

    engine.decode_one_token = spy  # type: ignore[method-assign]
    result = engine.complete(CompletionInput(prefix), GenerationParams(max_tokens=16))
    # `seen` is every generated token but the last (which is never fed back)
    spelled = engine.tokenizer.decode(seen, skip_special_tokens=True)
    assert result.completion_tokens == len(seen) + 1
    assert spelled.startswith(prompt.heal) or prompt.heal.startswith(spelled)
    if spelled.startswith(prompt.heal):  # the output continues after the healed text, not repeating it
        assert result.raw.startswith(spelled[len(prompt.heal) :].rstrip("\ufffd"))


def test_healing_off_prompts_with_the_whole_prefix() -> None:
    engine = _engine(False)
    prompt = engine.prepare(CompletionInput(PREFIXES[0]), 16)
    assert prompt.heal == ""
    assert prompt.input_ids == engine.tokenizer(PREFIXES[0], add_special_tokens=False).input_ids
