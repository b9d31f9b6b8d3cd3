"""Lookup drafting: the drafter's n-gram index, and lossless verification in the engine
(the output equals greedy decoding without drafts, token for token, on every path)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from unit.test_engine import PROMPTS, make_engine

from splice.completion.document_cache import DocumentKey
from splice.completion.drafting import DraftConfig, LookupDrafter, SuggestionDrafter
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.kernels.cpu_linear import pack_linears, supported

REPETITIVE = [
    CompletionInput(
        "def area(w, h):\n    return w * h\n\n\ndef volume(w, h, d):\n    return w * h * d\n\n\ndef ", ""
    ),
    CompletionInput("x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2, ", "]\nprint(x, y, z)\n"),
    CompletionInput("for a in b:\n    for a in b:\n        for a in b:\n            ", "\n"),
]


def test_propose_copies_what_followed_the_latest_occurrence() -> None:
    drafter = LookupDrafter([1, 2, 3, 4, 5, 1, 2], DraftConfig(max_tokens=8, max_ngram=4, min_ngram=2))
    assert drafter.propose() == [3, 4, 5, 1, 2]
    drafter = LookupDrafter([1, 2, 9, 1, 2, 7, 1, 2], DraftConfig(max_tokens=2))
    assert drafter.propose() == [7, 1]  # the latest occurrence wins, cut to max_tokens
    drafter.append(8)
    assert drafter.propose() == []  # (2, 8) never occurred


def test_min_ngram_sets_the_shortest_match() -> None:
    # Only the last token (5) occurred before; what followed it there is a draft from a 1-gram.
    assert LookupDrafter([5, 7, 8, 5], DraftConfig(max_tokens=3)).propose() == [7, 8, 5]  # (default: 1)
    assert LookupDrafter([5, 7, 8, 5], DraftConfig(max_tokens=3, min_ngram=2)).propose() == []


def test_longer_matches_are_preferred() -> None:
    # (3, 1, 2) occurred once, followed by 5; (1, 2) occurred later, followed by 6.
    drafter = LookupDrafter([3, 1, 2, 5, 0, 1, 2, 6, 3, 1, 2], DraftConfig(max_tokens=1, max_ngram=3))
    assert drafter.propose() == [5]
    drafter = LookupDrafter([3, 1, 2, 5, 0, 1, 2, 6, 3, 1, 2], DraftConfig(max_tokens=1, max_ngram=2))
    assert drafter.propose() == [6]


def test_draft_settings_are_validated() -> None:
    for bad in ({"max_tokens": 0}, {"min_ngram": 3, "max_ngram": 2}, {"min_ngram": 0}):
        with pytest.raises(ValueError):
            DraftConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drafting must be one of"):
        EngineConfig(drafting="magic")  # type: ignore[arg-type]


@pytest.fixture(
    scope="module",
    params=[("plain", "llama", False), ("qwen", "qwen2", False), ("plain", "llama", True)],
    ids=["llama", "qwen2", "llama-packed"],
)
def engines(request: pytest.FixtureRequest) -> tuple[CompletionEngine, CompletionEngine]:
    """A plain and a drafting engine on one model; `-packed`: every linear layer packed
    (kernels/cpu_linear.py, what the service does on a CPU for layers of a real model's size)."""
    family, arch, packed = request.param
    plain = make_engine(family, arch, drafting="off")
    if packed:
        if not supported():
            pytest.skip("this PyTorch build has no oneDNN packed linear")
        assert pack_linears(plain.loaded.model, "packed", min_params=0) > 0
    return plain, CompletionEngine(plain.loaded, EngineConfig(drafting="lookup"))  # the same model


@pytest.mark.parametrize("healing", [True, False], ids=["healing", "no-healing"])
def test_lookup_drafting_equals_greedy(
    engines: tuple[CompletionEngine, CompletionEngine], healing: bool
) -> None:
    plain, drafting = engines
    accepted = passes = tokens = 0
    for inp in PROMPTS + REPETITIVE:
        for max_tokens in (1, 5, 40):
            params = GenerationParams(max_tokens=max_tokens, stop=("\n\n\n",))
            plain.healer = plain.healer if healing else None
            drafting.healer = plain.healer
            want = plain.complete(inp, params)
            got = drafting.complete(inp, params)
            assert (got.raw, got.text, got.finish_reason, got.completion_tokens) == (
                want.raw,
                want.text,
                want.finish_reason,
                want.completion_tokens,
            ), inp
            assert want.draft_tokens == 0
            accepted += got.accepted_draft_tokens
            passes += got.decode_passes
            tokens += got.completion_tokens
    assert accepted > 0, "no draft was ever accepted: the test would not exercise verification"
    assert passes < tokens


def test_streamed_text_with_drafting_equals_the_result(
    engines: tuple[CompletionEngine, CompletionEngine],
) -> None:
    _, drafting = engines
    for inp in REPETITIVE:
        deltas: list[str] = []
        result = drafting.complete(inp, GenerationParams(max_tokens=40), on_text=deltas.append)
        assert "".join(deltas) == result.text


def test_document_cache_with_drafting_equals_full_recompute(
    engines: tuple[CompletionEngine, CompletionEngine],
) -> None:
    """Verification works on a cache built from a document's KV; a request cancelled while it
    decodes leaves the document's cache as it was (the next completion equals a fresh one)."""
    plain, drafting = engines
    key = DocumentKey("tenant", "file:///a.py", "tiny")
    params = GenerationParams(max_tokens=40)
    cancel = threading.Event()

    def cancel_after_first(_: str) -> None:
        cancel.set()

    for inp in REPETITIVE:
        drafting.complete(inp, params, document=key, cancel=cancel, on_text=cancel_after_first)
        cancel.clear()
        got = drafting.complete(inp, params, document=key)
        want = plain.complete(inp, params)
        assert (got.raw, got.text) == (want.raw, want.text)
        assert got.reused_prompt_tokens > 0


def test_sampling_does_not_draft(engines: tuple[CompletionEngine, CompletionEngine]) -> None:
    _, drafting = engines
    result = drafting.complete(REPETITIVE[0], GenerationParams(max_tokens=20, temperature=0.8, seed=1))
    assert result.draft_tokens == 0


def test_removed_text_drafts_a_retyped_line() -> None:
    """What the last edit removed is a draft source: when it holds what greedy decoding is about to
    write (a deleted line typed again), most of it is accepted, and the output is still greedy's.
    (On the tiny Llama, whose greedy text re-tokenizes to the same tokens; the tiny Qwen2 writes
    partial UTF-8 bytes that do not survive a round trip through text.)"""
    plain = make_engine("plain", "llama", drafting="off")
    drafting = CompletionEngine(plain.loaded, EngineConfig(drafting="lookup"))
    params = GenerationParams(max_tokens=24)
    inp = CompletionInput("def total(items):\n    s = 0\n    for item in items:\n        s", "")
    want = plain.complete(inp, params)
    assert want.completion_tokens >= 8
    removed = inp.prefix[-12:] + want.raw  # the line as it was before the developer deleted it
    without = drafting.complete(inp, params)
    with_removed = drafting.complete(CompletionInput(inp.prefix, inp.suffix, draft_text=removed), params)
    assert with_removed.raw == want.raw == without.raw
    assert with_removed.accepted_draft_tokens > without.accepted_draft_tokens
    assert with_removed.decode_passes < without.decode_passes


def test_suggestion_drafter_follows_the_output_and_gives_up_at_a_rejection() -> None:
    calls: list[str] = []

    def encode(text: str) -> list[int]:
        calls.append(text)
        return [ord(c) for c in text]

    drafter = SuggestionDrafter("abcdef", encode, max_tokens=4)
    assert drafter.propose("") == [ord(c) for c in "abcd"]
    assert drafter.propose("") == [ord(c) for c in "abcd"] and calls == ["abcdef"]  # tokenized once
    drafter.feedback(4, 4)
    assert drafter.propose("abcde") == [ord("f")]
    assert drafter.propose("abcdef") == []  # spelled out whole
    assert drafter.propose("abx") == []  # the output went its own way
    drafter.feedback(1, 0)  # a draft not kept whole ends it, even where the output still fits
    assert drafter.propose("a") == []


def test_a_suggestion_typed_through_is_drafted() -> None:
    """The rest of a suggestion the user typed the start of (`CompletionInput.expected`) is a
    draft: most of it is accepted when greedy decoding writes it again, and the output is greedy's;
    a wrong suggestion costs one rejected draft and changes nothing either."""
    plain = make_engine("plain", "llama", drafting="off")
    drafting = CompletionEngine(plain.loaded, EngineConfig(drafting="lookup"))
    params = GenerationParams(max_tokens=24)
    inp = CompletionInput("def total(items):\n    s = 0\n    for item in items:\n        s", "")
    shown = plain.complete(inp, params)
    first = plain.tokenizer.decode(plain.tokenizer(shown.raw).input_ids[:2])
    assert shown.completion_tokens >= 8 and shown.raw.startswith(first)
    typed = CompletionInput(inp.prefix + first, inp.suffix)  # the user typed its first two tokens
    want = plain.complete(typed, params)
    assert shown.raw.startswith(first + want.raw[:8])  # greedy writes the rest of it again
    without = drafting.complete(typed, params)
    through = drafting.complete(replace(typed, expected=shown.raw[len(first) :]), params)
    assert through.raw == want.raw == without.raw
    assert through.accepted_draft_tokens > without.accepted_draft_tokens
    assert through.decode_passes < without.decode_passes
    wrong = drafting.complete(replace(typed, expected="while True: pass"), params)
    assert wrong.raw == want.raw
    assert wrong.decode_passes <= without.decode_passes + 1


def test_draft_length_adapts_to_acceptance() -> None:
    drafter = LookupDrafter([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2], DraftConfig(max_tokens=6))
    assert drafter.propose() == [3, 4, 5, 6, 7, 8]
    drafter.feedback(6, 2)  # a rejection: one token shorter
    drafter.feedback(5, 0)
    assert drafter.length == 4 and drafter.propose() == [3, 4, 5, 6]
    for _ in range(3):
        drafter.feedback(drafter.length, 0)
    assert drafter.length == 1 and drafter.ready()  # never below one token
    drafter.feedback(1, 0)  # a rejected 1-token draft pauses drafting for 1, then 2, ... steps
    assert [drafter.ready() for _ in range(2)] == [False, True]
    drafter.feedback(1, 0)
    assert [drafter.ready() for _ in range(3)] == [False, False, True]
    drafter.feedback(1, 1)  # accepted whole: two tokens longer, capped at max_tokens
    assert drafter.length == 3
    drafter.feedback(3, 3)
    drafter.feedback(5, 5)
    assert drafter.length == 6
    fixed = LookupDrafter([1, 2, 3, 4, 1, 2], DraftConfig(max_tokens=3, adaptive=False))
    fixed.feedback(3, 0)
    assert fixed.length == 3 and fixed.propose() == [3, 4, 1]


def test_the_min_ngram_setting_reaches_the_drafter(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from splice.assistant.settings import Settings

    monkeypatch.setenv("SPLICE_DRAFT_MIN_NGRAM", "3")
    assert Settings().engine_config().draft.min_ngram == 3
    monkeypatch.setenv("SPLICE_DRAFT_MIN_NGRAM", "5")  # longer than the longest match (4)
    with pytest.raises(ValidationError, match="draft_min_ngram"):
        Settings()


@pytest.mark.parametrize(("family", "arch"), [("plain", "llama"), ("qwen", "qwen2")], ids=["llama", "qwen2"])
def test_a_suggestion_is_verified_in_the_prompts_own_pass(family: str, arch: str) -> None:
    """With a document cache, the suggestion being typed through rides on the pass that encodes
    the typed text (`prompt_draft`): when greedy decoding writes it again, the whole completion
    needs no decode pass, healed text included; wrong or right, the output is greedy's and the
    document's cache holds the prompt only."""
    engine = make_engine(family, arch, drafting="lookup")
    prompts = [
        CompletionInput("def total(items):\n    s = 0\n    for item in items:\n        s", "\n    return s"),
        CompletionInput("import os\n\ndef read(path):\n    with open(path) as f:\n        return f", "\n"),
        CompletionInput("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self", ""),
    ]

    def primed(inp: CompletionInput, name: str) -> DocumentKey:  # a document whose cache holds `inp`'s prompt
        key = DocumentKey("tenant", f"file:///{name}.py", "tiny")
        engine.complete(inp, GenerationParams(max_tokens=4), document=key)
        return key

    def typed_through() -> tuple[CompletionInput, CompletionInput, str, int] | None:
        """A prompt, the same with the first characters of its suggestion typed, and a greedy
        output of m >= 2 tokens after those (healed text included) that its own text tokenizes
        back to (a random model writes bytes that do not), preferring a healed one."""
        found = None
        for index, inp in enumerate(prompts):
            shown = engine.complete(inp, GenerationParams(max_tokens=16))
            for typed_chars in range(1, 8):  # the user types the suggestion's first characters
                typed = CompletionInput(inp.prefix + shown.raw[:typed_chars], inp.suffix)
                prepared = engine.prepare(typed, 16)
                if prepared.input_ids == engine.prepare(inp, 16).input_ids:
                    continue  # healing took back all that was typed: no prompt pass to ride on
                heal = prepared.heal
                generation = engine.start(
                    typed, GenerationParams(max_tokens=16), document=primed(inp, f"g{index}-{typed_chars}")
                )
                while not generation.step():
                    pass
                greedy = generation.generated
                for m in range(len(greedy), 1, -1):
                    decoded = engine.tokenizer.decode(greedy[:m], skip_special_tokens=True)
                    text = decoded[len(heal) :] if decoded.startswith(heal) else ""
                    if (
                        text
                        and engine.tokenizer(heal + text, add_special_tokens=False).input_ids == greedy[:m]
                    ):
                        found = inp, typed, text, m
                        if heal:
                            return found
                        break
        return found

    found = typed_through()
    assert found is not None, "no typed prefix whose greedy output tokenizes back to itself"
    inp, typed, text, m = found
    params = GenerationParams(max_tokens=m)
    without = engine.complete(typed, params, document=primed(inp, "without"))
    through_key = primed(inp, "through")
    through = engine.complete(replace(typed, expected=text), params, document=through_key)
    assert through.raw == without.raw == text
    assert through.decode_passes == 0 < without.decode_passes  # all of it verified in the prompt's pass
    assert through.accepted_draft_tokens == m
    cached = engine.kv.peek(through_key)
    assert cached is not None and cached.ids == engine.prepare(typed, m).input_ids  # no draft rows kept
    assert cached.keys[0].shape[1] == len(cached.ids)
    wrong = engine.complete(
        replace(typed, expected="while True: pass"), params, document=primed(inp, "wrong")
    )
    assert wrong.raw == without.raw
    again = GenerationParams(max_tokens=8)
    after = CompletionInput(typed.prefix + text, typed.suffix)
    assert engine.complete(after, again, document=through_key).raw == engine.complete(after, again).raw
