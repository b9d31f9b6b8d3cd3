"""FIM training samples: the transform round-trips, and the encoded samples lay out prompts exactly
as the serving side does for each model family (including a model that had no FIM tokens)."""

from __future__ import annotations

import functools
import inspect
import random
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AddedToken, PreTrainedTokenizerFast

from splice.completion.fim import TEMPLATES, build_prompt, detect_template, resolve_template
from splice.training.data import FimStream, horizon_targets, line_chunks
from splice.training.fim import (
    IGNORE,
    FimSample,
    add_fim_tokens,
    encode_sample,
    end_token_id,
    fim_transform,
    split_document,
)
from splice_testkit.tiny import build_model, build_tokenizer

FIM_FAMILIES = ("starcoder", "qwen", "deepseek", "codellama")
CODE = "def add(a, b):\n    total = a + b\n    return total\n\n\nprint(add(1, 2))\n"


@functools.cache
def _tokenizer(family: str) -> PreTrainedTokenizerFast:
    return build_tokenizer(family)


# --- the transform ---


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=300), seed=st.integers(0, 2**32), span=st.sampled_from(["char", "line", "mixed"])
)
def test_fim_transform_round_trips(text: str, seed: int, span: str) -> None:
    sample = fim_transform(text, random.Random(seed), fim_rate=0.9, span=span)  # type: ignore[arg-type]
    assert sample.prefix + sample.middle + sample.suffix == text
    assert sample.text == text


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.text(alphabet="ab \t:()", max_size=12), min_size=1, max_size=20),
    seed=st.integers(0, 2**32),
)
def test_line_spans_cut_at_line_starts(lines: list[str], seed: int) -> None:
    text = "\n".join(lines) + "\n"
    prefix, middle, suffix = split_document(text, random.Random(seed), "line")
    assert prefix + middle + suffix == text
    assert prefix == "" or prefix.endswith("\n")
    assert middle == "" or middle.endswith("\n") or suffix == ""


def test_fim_rate_and_spm_rate_are_honoured() -> None:
    rng = random.Random(0)
    samples = [fim_transform(CODE, rng, fim_rate=0.5, spm_rate=0.5) for _ in range(2000)]
    fim = [s for s in samples if s.mode is not None]
    assert 0.45 < len(fim) / len(samples) < 0.55
    assert 0.45 < sum(s.mode == "spm" for s in fim) / len(fim) < 0.55
    assert all(s.mode is None for s in (fim_transform(CODE, rng, fim_rate=0.0) for _ in range(50)))
    assert all(
        s.mode == "psm" for s in (fim_transform(CODE, rng, fim_rate=1.0, spm_rate=0.0) for _ in range(50))
    )


def test_transform_rejects_bad_rates_and_spans() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        fim_transform(CODE, random.Random(0), fim_rate=1.5)
    with pytest.raises(ValueError, match="span must be one of"):
        split_document(CODE, random.Random(0), "word")  # type: ignore[arg-type]


# --- token handling per family ---


@pytest.mark.parametrize("family", FIM_FAMILIES)
@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_encoded_sample_starts_with_the_serving_prompt(family: str, mode: str) -> None:
    """What the model is trained on up to the middle is exactly what `build_prompt` sends it."""
    tokenizer = _tokenizer(family)
    template = detect_template(tokenizer)
    assert template.name == family
    if mode not in template.modes:
        pytest.skip(f"{family} is trained with {template.modes} only")
    sample = FimSample("def add(a, b):\n    total = ", "a + b\n", "    return total\n", mode)
    encoded = encode_sample(tokenizer, template, sample, loss_on="middle")
    prompt = build_prompt(tokenizer, template, sample.prefix, sample.suffix, mode=mode).input_ids
    assert encoded.input_ids[: encoded.middle_start] == prompt
    assert encoded.input_ids[-1] == end_token_id(tokenizer, template)
    middle_ids = encoded.input_ids[encoded.middle_start : -1]
    assert tokenizer.decode(middle_ids) == sample.middle
    # loss on the middle and the end token only, each label its own position's token
    labelled = [i for i, label in enumerate(encoded.labels) if label != IGNORE]
    assert labelled == list(range(encoded.middle_start, len(encoded.input_ids)))
    assert all(encoded.labels[i] == encoded.input_ids[i] for i in labelled)


@pytest.mark.parametrize("family", FIM_FAMILIES)
def test_user_text_with_sentinel_strings_stays_text(family: str) -> None:
    tokenizer = _tokenizer(family)
    template = detect_template(tokenizer)
    sentinels = set(tokenizer.convert_tokens_to_ids(list(template.fim_tokens)))
    literal = "".join(template.fim_tokens)
    encoded = encode_sample(tokenizer, template, FimSample(f"x = '{literal}'\n", literal, "\n", "psm"))
    assert sum(i in sentinels for i in encoded.input_ids) == 3  # only the layout's own three


def test_loss_on_all_labels_every_position_but_the_first() -> None:
    tokenizer = _tokenizer("starcoder")
    template = TEMPLATES["starcoder"]
    encoded = encode_sample(
        tokenizer, template, FimSample("a = 1\n", "b = 2\n", "c = 3\n", "spm"), loss_on="all"
    )
    assert encoded.labels[0] == IGNORE
    assert encoded.labels[1:] == encoded.input_ids[1:]


def test_plain_sample_is_text_then_end_token() -> None:
    tokenizer = _tokenizer("deepseek")
    template = TEMPLATES["deepseek"]
    encoded = encode_sample(tokenizer, template, FimSample(CODE, "", "", None))
    assert encoded.input_ids[0] == tokenizer.bos_token_id  # deepseek's layout adds BOS
    assert tokenizer.decode(encoded.input_ids[1:-1]) == CODE
    assert encoded.middle_start == len(encoded.input_ids)


@pytest.mark.parametrize("tied", [False, True])
def test_add_fim_tokens_to_a_model_without_them(tied: bool) -> None:
    tokenizer = build_tokenizer("plain")
    model = build_model(tokenizer, tie_word_embeddings=tied)
    assert detect_template(tokenizer).name == "prefix-only"
    vocab = len(tokenizer)
    template, added = add_fim_tokens(tokenizer, model)
    assert template.name == "starcoder" and detect_template(tokenizer).name == "starcoder"
    assert added == [vocab, vocab + 1, vocab + 2]
    assert tokenizer.convert_ids_to_tokens(added) == list(template.fim_tokens)
    assert model.get_input_embeddings().weight.shape[0] == vocab + 3
    assert model.get_output_embeddings().weight.shape[0] == vocab + 3
    # the new rows start at the mean of the old ones, not at zero or noise
    rows = model.get_input_embeddings().weight.detach()
    assert rows[vocab:].abs().sum() > 0
    # and the serving side now builds FIM prompts from them, with user text still plain
    prompt = build_prompt(tokenizer, resolve_template(tokenizer), "x = ", "\n", mode="psm").input_ids
    assert prompt[0] == added[0] and prompt[-1] == added[2]
    assert len(tokenizer.encode("<fim_prefix>", add_special_tokens=False, split_special_tokens=True)) > 1


def test_add_fim_tokens_keeps_a_family_that_has_them() -> None:
    tokenizer = build_tokenizer("qwen")
    template, added = add_fim_tokens(tokenizer, None)
    assert template.name == "qwen" and added == []


def test_add_fim_tokens_with_non_special_added_tokens() -> None:
    """Qwen2.5-Coder marks its FIM tokens `special: false`; they are detected, not added again."""
    tokenizer = build_tokenizer("plain")
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in TEMPLATES["qwen"].fim_tokens]
    )
    template, added = add_fim_tokens(tokenizer)
    assert template.name == "qwen" and added == []


# --- chunking and packing ---


def test_line_chunks_cover_the_text_and_fit() -> None:
    tokenizer = _tokenizer("starcoder")
    text = inspect.getsource(textwrap)
    chunks = line_chunks(text, tokenizer, 100)
    assert "".join(chunks) == text
    assert len(chunks) > 5
    for chunk in chunks[:-1]:
        assert chunk.endswith("\n")
        assert (
            len(tokenizer.encode(chunk, add_special_tokens=False)) <= 110
        )  # re-tokenising at a cut may add a few


def test_rows_are_packed_to_seq_len_with_horizon_targets() -> None:
    tokenizer = _tokenizer("starcoder")
    template = TEMPLATES["starcoder"]
    texts = [inspect.getsource(textwrap), CODE * 3]
    stream = FimStream(texts, tokenizer, template, seq_len=128, fim_rate=1.0, spm_rate=0.5, span="mixed",
                       loss_on="middle", seed=0)  # fmt: skip
    rows = list(stream.rows(epochs=1))
    assert rows and all(len(r.input_ids) == len(r.labels) == len(r.horizon) == 128 for r in rows)
    assert stream.stats.dropped_long == 0
    assert sum(r.length for r in rows) + stream.stats.padding == 128 * len(rows)
    again = FimStream(texts, tokenizer, template, seq_len=128, fim_rate=1.0, spm_rate=0.5, span="mixed",
                      loss_on="middle", seed=0)  # fmt: skip
    assert [r.input_ids for r in again.rows(epochs=1)] == [r.input_ids for r in rows]  # deterministic


def test_horizon_targets_count_down_over_the_middle() -> None:
    tokenizer = _tokenizer("starcoder")
    encoded = encode_sample(
        tokenizer, TEMPLATES["starcoder"], FimSample("a = 1\n", "b = 2\nc = 3\n", "d = 4\n", "psm")
    )
    targets = horizon_targets(encoded)
    positions = [i for i, t in enumerate(targets) if t >= 0]
    middle = len(encoded.input_ids) - encoded.middle_start
    assert positions == list(range(encoded.middle_start - 1, len(encoded.input_ids) - 1))
    values = [targets[i] for i in positions]
    assert values[0] == 1.0 and values[-1] == pytest.approx(1 / middle)
    assert values == sorted(values, reverse=True)
