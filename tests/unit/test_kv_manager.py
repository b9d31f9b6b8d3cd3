"""The KV manager: document tokens kept across edits equal whole tokenization, a small edit
tokenizes a window and not the document, the prompt on the document path equals the stateless
one, and closing a document forgets it (even while its encoding is in flight)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase
from unit.test_engine import make_engine
from unit.test_token_edits import documents, edit_batches

from splice.completion.document_cache import DocumentKey
from splice.completion.engine import CompletionInput, GenerationParams
from splice.completion.fim import TextEncoder, adds_dummy_prefix, plain_added_tokens
from splice.completion.kv_manager import SPLIT_SPAN_CHARS, DocumentTokens, changed_span, text_edits
from splice.completion.token_edits import apply_text_edits
from splice_testkit.tiny import build_tokenizer

CODE = "".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))\n\n" for i in range(60))


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_changed_span_turns_old_into_new(head: str, old_mid: str, new_mid: str, tail: str) -> None:
    old, new = head + old_mid + tail, head + new_mid + tail
    edit = changed_span(old, new)
    if old == new:
        assert edit is None
        return
    assert edit is not None
    assert apply_text_edits(old, [edit]) == new
    assert edit.end - edit.start <= len(old_mid) and len(edit.text) <= len(new_mid)  # minimal span


@settings(max_examples=200)
@given(
    st.text(alphabet="ab\n", max_size=3000),
    st.lists(
        st.tuples(st.integers(0, 3000), st.integers(0, 3), st.sampled_from(["x", "\n", "ab\n", ""])),
        max_size=6,
    ),
)
def test_text_edits_turn_old_into_new(old: str, changes: list[tuple[int, int, str]]) -> None:
    new = old
    for at, cut, text in changes:
        at = min(at, len(new))
        new = new[:at] + text + new[at + cut :]
    edits = text_edits(old, new)
    assert apply_text_edits(old, edits) == new
    assert (edits == []) == (old == new)


def test_edits_far_apart_stay_separate_edits() -> None:
    lines = CODE.splitlines(keepends=True)
    assert len(CODE) > SPLIT_SPAN_CHARS + 200
    new_lines = list(lines)
    new_lines[3] = "    return x  # changed\n"
    new_lines[-4] = "    return 0\n"
    new = "".join(new_lines)
    edits = text_edits(CODE, new)
    assert len(edits) == 2 and all(e.end - e.start < 80 for e in edits)
    assert apply_text_edits(CODE, edits) == new


@pytest.fixture(scope="module", params=["plain", "qwen", "codellama"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    return build_tokenizer(request.param)


def _document_tokens(tokenizer: PreTrainedTokenizerBase) -> DocumentTokens:
    incremental = bool(tokenizer.is_fast) and not adds_dummy_prefix(tokenizer)
    return DocumentTokens(tokenizer, incremental=incremental, plain_added=plain_added_tokens(tokenizer))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_kept_tokens_equal_whole_tokenization_after_every_edit(
    tokenizer: PreTrainedTokenizerBase, data: st.DataObject
) -> None:
    text = data.draw(documents())
    kept, whole = _document_tokens(tokenizer), TextEncoder(tokenizer)
    for _ in range(3):
        cursor = data.draw(st.integers(0, len(text)))
        healed = data.draw(st.integers(0, min(cursor, 3)))  # healing holds back a few characters
        prefix, suffix = text[: cursor - healed], text[cursor:]
        kept.document(text)
        assert kept.prefix(prefix) == whole.prefix(prefix)
        assert kept.suffix(suffix) == whole.suffix(suffix)
        assert kept.prefix(text) == whole.prefix(text)
        text = apply_text_edits(text, data.draw(edit_batches(text)))


def _request(kept: DocumentTokens, text: str, cursor: int) -> int:
    before = kept.stats.chars
    kept.document(text)
    kept.prefix(text[:cursor])
    kept.suffix(text[cursor:])
    return kept.stats.chars - before


def test_typing_and_moving_the_cursor_tokenize_windows_not_the_document() -> None:
    tokenizer = build_tokenizer("plain")
    kept = _document_tokens(tokenizer)
    cursor = len(CODE) // 2
    assert _request(kept, CODE, cursor) >= len(CODE)  # the first request tokenizes it all
    typed = "    y = x + 1\n"
    text = CODE[:cursor] + typed + CODE[cursor:]
    assert 0 < _request(kept, text, cursor + len(typed)) < 300  # windows at the edit and the cursor
    assert 0 < _request(kept, text, 100) < 200  # the cursor moved far: windows at the cursor only
    # A tokenizer that adds a dummy prefix to a text's start cannot splice windows: whole again.
    dummy = _document_tokens(build_tokenizer("codellama"))
    _request(dummy, CODE, cursor)
    assert _request(dummy, text, cursor + len(typed)) >= len(text)


def test_plain_added_token_text_is_encoded_whole_and_equal() -> None:
    tokenizer = build_tokenizer("qwen")
    tokenizer.add_tokens(["<|repo_name|>"])  # not special, as Qwen2.5-Coder's FIM tokens
    kept, whole = _document_tokens(tokenizer), TextEncoder(tokenizer)
    assert kept.plain_added == ("<|repo_name|>",)
    text = "x = '<|repo_name|>'\n" + CODE[:300]
    for version in (text, text + "y"):
        kept.document(version)
        assert kept.doc is None
        assert kept.prefix(version) == whole.prefix(version)
    assert tokenizer.convert_tokens_to_ids("<|repo_name|>") not in kept.prefix(text)


@pytest.mark.parametrize(("family", "arch"), [("plain", "llama"), ("qwen", "qwen2")])
def test_document_path_prompts_and_completions_equal_the_stateless_ones(family: str, arch: str) -> None:
    engine = make_engine(family, arch, context=1024)
    key = DocumentKey("t", "doc.py", "m")
    text = CODE[:1500]
    params = GenerationParams(max_tokens=6)
    for step, typed in enumerate(["", "    z = 3\n", "    z = 3\n    w = z", "    z = 3\n    w = z * 2\n"]):
        cursor = 700
        inp = CompletionInput(text[:cursor] + typed, text[cursor:])
        assert engine.prepare(inp, 6, key).input_ids == engine.prepare(inp, 6).input_ids
        cached = engine.complete(inp, params, document=key)
        fresh = engine.complete(inp, params)
        assert cached.raw == fresh.raw
        assert fresh.tokenized_chars >= len(inp.prefix) - 8  # all of it (healing holds back a token)
        if step > 0:
            assert cached.tokenized_chars < len(inp.prefix) // 4  # a window, not the document
            assert cached.reused_prompt_tokens > 0


def test_closing_a_document_forgets_it_even_mid_encoding() -> None:
    engine = make_engine()
    kv = engine.kv
    key = DocumentKey("t", "doc.py", "m")
    inp = CompletionInput(CODE[:400], CODE[400:800])
    engine.complete(inp, GenerationParams(max_tokens=2), document=key)
    assert len(kv) == 1 and kv.tokens(key).doc is not None
    assert kv.close(key) and len(kv) == 0
    assert kv.tokens(key).doc is None  # a fresh set: the old tokens are gone
    assert not kv.close(DocumentKey("t", "never-opened", "m"))

    real = kv._encode

    def closed_meanwhile(*args: object, **kwargs: object) -> object:
        kv.close(key)  # the editor closes the document while the worker encodes it
        return real(*args, **kwargs)  # type: ignore[arg-type]

    kv._encode = closed_meanwhile  # type: ignore[method-assign]
    result = engine.complete(inp, GenerationParams(max_tokens=2), document=key)
    kv._encode = real  # type: ignore[method-assign]
    assert result.completion_tokens >= 1  # the request still gets its answer
    assert len(kv) == 0  # and nothing of the closed document is kept
    engine.complete(inp, GenerationParams(max_tokens=2), document=key)
    assert len(kv) == 1  # reopened later, it is cached again


def _edited_inputs() -> list[CompletionInput]:
    """A document edited in its middle three times, the cursor near its end."""
    text = CODE[:1000]
    edits = ["", "    y = 1\n", "    y = 1\n    q = y + 2\n", "    y = 1\n    q = y + 2\n    r = q\n"]
    return [CompletionInput(text[:300] + typed + text[300:800], text[800:]) for typed in edits]


def test_forced_full_reencode_equals_full_recomputation_exactly() -> None:
    key = DocumentKey("t", "doc.py", "m")
    forced = make_engine(context=2048, drift_full_bound=1e-9, refresh_first_k=0)  # any stale deviation
    reference = make_engine(context=2048, reuse_method="full")
    reference.model.load_state_dict(forced.model.state_dict())
    params = GenerationParams(max_tokens=6)
    for step, inp in enumerate(_edited_inputs()):
        got = forced.complete(inp, params, document=key)
        want = reference.complete(inp, params, document=key)
        doc, ref = forced.kv.peek(key), reference.kv.peek(key)
        assert doc is not None and ref is not None and doc.ids == ref.ids
        assert doc.logits is not None and ref.logits is not None
        assert torch.equal(doc.logits, ref.logits)  # the same computation: bit for bit
        assert all(torch.equal(a, b) for a, b in zip(doc.keys, ref.keys, strict=True))
        assert got.raw == want.raw
        if step > 0:
            assert got.forced_full_encode and got.reused_prompt_tokens == 0
            # the probe ran before the decision, and its cost is counted
            assert got.encoded_prompt_tokens > len(doc.ids)


def test_probe_cost_and_refreshed_tokens_are_counted() -> None:
    key = DocumentKey("t", "doc.py", "m")
    plain = make_engine(context=2048, reuse_method="pie")
    probed = make_engine(context=2048, refresh_first_k=0, refresh_ratio=0.5, drift_full_bound=0.0)
    probed.model.load_state_dict(plain.model.state_dict())
    layers = probed.model.config.num_hidden_layers
    params = GenerationParams(max_tokens=2)
    inputs = _edited_inputs()
    plain.complete(inputs[0], params, document=key)
    probed.complete(inputs[0], params, document=key)
    before = probed.kv.peek(key)
    assert before is not None
    base = plain.complete(inputs[1], params, document=key)
    got = probed.complete(inputs[1], params, document=key)
    after = probed.kv.peek(key)
    assert after is not None
    assert not got.forced_full_encode and got.refreshed_prompt_tokens > 0
    first = next(i for i, (a, b) in enumerate(zip(before.ids, after.ids, strict=False)) if a != b)
    # encoded = what plain PIE encodes + the refreshed tokens + the probe's cost: layers 0..1 over
    # the tokens from the first change on, in full-depth tokens
    probe = -(-(len(after.ids) - first) * 2 // layers)
    assert got.encoded_prompt_tokens == base.encoded_prompt_tokens + got.refreshed_prompt_tokens + probe
    assert got.reused_prompt_tokens == base.reused_prompt_tokens - got.refreshed_prompt_tokens


def test_bad_drift_policy_overrides_are_refused() -> None:
    with pytest.raises(ValueError, match="probe_layer"):
        make_engine(refresh_probe_layer=0)
    with pytest.raises(ValueError, match="probe_ratio"):
        make_engine(refresh_ratio=1.5)
    with pytest.raises(ValueError, match="full_bound"):
        make_engine(drift_full_bound=float("inf"))
