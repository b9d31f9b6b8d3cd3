"""FIM templates: detection, exact prompt layouts, injection safety, stop ids and trimming."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from splice.completion.fim import (
    FIM_MODES,
    TEMPLATES,
    FimTemplate,
    build_prompt,
    detect_template,
    resolve_template,
    stop_token_ids,
)
from splice_testkit.tiny import build_tokenizer

FIM_FAMILIES = ("starcoder", "qwen", "deepseek", "codellama")
PREFIX = "def add(a, b):\n    total = a + b\n"
SUFFIX = "return total\n"


@functools.cache
def _tokenizer(family: str) -> PreTrainedTokenizerFast:
    return build_tokenizer(family)


def _ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    assert all(isinstance(i, int) and i != tokenizer.unk_token_id for i in ids), tokens
    return [i for i in ids if isinstance(i, int)]


def _text(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _qwen_like_tokenizer() -> PreTrainedTokenizerFast:
    """Like Qwen2.5-Coder's release: FIM tokens are added tokens marked `special: false`."""
    tokenizer = build_tokenizer("plain")
    fim = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in fim])
    return tokenizer


# --- detection and resolution ---


@pytest.mark.parametrize(
    ("family", "expected"),
    [("plain", "prefix-only"), *((f, f) for f in FIM_FAMILIES)],
)
def test_detect_template_per_family(family: str, expected: str) -> None:
    template = detect_template(_tokenizer(family))
    assert template.name == expected
    assert template is TEMPLATES[expected]
    assert template.is_fim == (expected != "prefix-only")
    assert resolve_template(_tokenizer(family)) is template
    assert resolve_template(_tokenizer(family), "auto") is template


def test_resolve_template_by_name() -> None:
    tokenizer = _tokenizer("starcoder")
    assert resolve_template(tokenizer, "starcoder").name == "starcoder"
    assert resolve_template(tokenizer, "prefix-only").name == "prefix-only"


def test_resolve_template_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown FIM template 'starcoder3'") as err:
        resolve_template(_tokenizer("starcoder"), "starcoder3")
    for name in ("auto", "starcoder", "qwen", "deepseek", "codellama", "prefix-only"):
        assert name in str(err.value)


def test_resolve_template_missing_tokens_says_which() -> None:
    with pytest.raises(ValueError, match="'qwen' does not fit") as err:
        resolve_template(_tokenizer("starcoder"), "qwen")
    message = str(err.value)
    assert "<|fim_prefix|>" in message and "<|fim_suffix|>" in message and "<|fim_middle|>" in message
    assert "'starcoder'" in message  # points at what would work


def test_resolve_template_needs_bos_when_template_adds_one() -> None:
    tokenizer = build_tokenizer("plain")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"]}
    )
    assert tokenizer.bos_token_id is None
    with pytest.raises(ValueError, match="BOS"):
        resolve_template(tokenizer, "deepseek")


def test_template_validation() -> None:
    with pytest.raises(ValueError, match="all three"):
        FimTemplate("half", "<p>", None, "<m>", (), ("psm",), add_bos=False)
    with pytest.raises(ValueError, match="modes"):
        FimTemplate("odd", "<p>", "<s>", "<m>", (), ("pms",), add_bos=False)


# --- exact layouts ---


def test_starcoder_psm_and_spm_ids() -> None:
    tok = _tokenizer("starcoder")
    pre, suf, mid = _ids(tok, "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    p, s = _text(tok, PREFIX), _text(tok, SUFFIX)
    psm = build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, mode="psm")
    assert psm.input_ids == [pre, *p, suf, *s, mid]
    spm = build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, mode="spm")
    assert spm.input_ids == [pre, suf, *s, mid, *p]
    for prompt in (psm, spm):
        assert (prompt.prefix_tokens, prompt.suffix_tokens) == (len(p), len(s))
        assert (prompt.trimmed_prefix_tokens, prompt.trimmed_suffix_tokens) == (0, 0)


def test_qwen_psm_ids() -> None:
    tok = _tokenizer("qwen")
    pre, suf, mid = _ids(tok, "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    prompt = build_prompt(tok, TEMPLATES["qwen"], PREFIX, SUFFIX)
    assert prompt.input_ids == [pre, *_text(tok, PREFIX), suf, *_text(tok, SUFFIX), mid]


def test_deepseek_psm_ids_start_with_bos() -> None:
    tok = _tokenizer("deepseek")
    bos, pre, hole, end = _ids(
        tok, "<｜begin▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
    )
    prompt = build_prompt(tok, TEMPLATES["deepseek"], PREFIX, SUFFIX)
    assert prompt.input_ids == [bos, pre, *_text(tok, PREFIX), hole, *_text(tok, SUFFIX), end]


def test_codellama_psm_and_spm_ids() -> None:
    tok = _tokenizer("codellama")
    bos, pre, suf, mid = _ids(tok, "<s>", "▁<PRE>", "▁<SUF>", "▁<MID>")
    p = _text(tok, PREFIX)
    # Meta's `encode_infilling`: encode "☺" + suffix and drop the sentinel's tokens
    s = _text(tok, "☺" + SUFFIX)[len(_text(tok, "☺")) :]
    assert s != _text(tok, SUFFIX)  # the normal encoding starts with a dummy-prefix "▁"
    psm = build_prompt(tok, TEMPLATES["codellama"], PREFIX, SUFFIX, mode="psm")
    assert psm.input_ids == [bos, pre, *p, suf, *s, mid]
    spm = build_prompt(tok, TEMPLATES["codellama"], PREFIX, SUFFIX, mode="spm")
    assert spm.input_ids == [bos, pre, suf, *s, mid, *p]


def test_codellama_suffix_has_no_dummy_prefix_space_but_prefix_does() -> None:
    tok = _tokenizer("codellama")
    prefix, suffix = "x = 1\n", "y = 2\n"
    prompt = build_prompt(tok, TEMPLATES["codellama"], prefix, suffix)
    tokens = tok.convert_ids_to_tokens(prompt.input_ids)
    prefix_part = tokens[2 : 2 + prompt.prefix_tokens]
    suffix_part = tokens[3 + prompt.prefix_tokens : -1]
    assert "".join(prefix_part).replace("▁", " ") == " " + prefix
    assert "".join(suffix_part).replace("▁", " ") == suffix
    # a suffix that really starts with a space keeps it
    spaced = build_prompt(tok, TEMPLATES["codellama"], prefix, " " + suffix)
    spaced_part = tok.convert_ids_to_tokens(spaced.input_ids)[3 + spaced.prefix_tokens : -1]
    assert "".join(spaced_part).replace("▁", " ") == " " + suffix


@pytest.mark.parametrize(
    ("family", "layout"),
    [
        ("starcoder", "<fim_prefix>{p}<fim_suffix>{s}<fim_middle>"),
        ("qwen", "<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>"),
        ("deepseek", "<｜begin▁of▁sentence｜><｜fim▁begin｜>{p}<｜fim▁hole｜>{s}<｜fim▁end｜>"),
        ("codellama", "<s> <PRE> {p} <SUF>{s} <MID>"),  # Meta's "<PRE> {pre} <SUF>{suf} <MID>"
        ("plain", "{p}"),
    ],
)
def test_decoded_prompt_layout(family: str, layout: str) -> None:
    tok = _tokenizer(family)
    prompt = build_prompt(tok, detect_template(tok), PREFIX, SUFFIX)
    assert tok.decode(prompt.input_ids) == layout.format(p=PREFIX, s=SUFFIX)


def test_starcoder_spm_decoded_layout() -> None:
    tok = _tokenizer("starcoder")
    prompt = build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, mode="spm")
    assert tok.decode(prompt.input_ids) == f"<fim_prefix><fim_suffix>{SUFFIX}<fim_middle>{PREFIX}"


def test_prefix_only_ignores_suffix_and_adds_no_bos() -> None:
    tok = _tokenizer("plain")
    prompt = build_prompt(tok, TEMPLATES["prefix-only"], PREFIX, SUFFIX)
    assert prompt.input_ids == _text(tok, PREFIX)
    assert (prompt.suffix_tokens, prompt.trimmed_suffix_tokens) == (0, 0)
    assert build_prompt(tok, TEMPLATES["prefix-only"], PREFIX, SUFFIX, mode="spm") == prompt


def test_unsupported_mode_raises() -> None:
    with pytest.raises(ValueError, match=r"mode 'spm' is not supported by template 'qwen'.*psm"):
        build_prompt(_tokenizer("qwen"), TEMPLATES["qwen"], PREFIX, SUFFIX, mode="spm")
    with pytest.raises(ValueError, match="mode 'middle'"):
        build_prompt(_tokenizer("starcoder"), TEMPLATES["starcoder"], PREFIX, SUFFIX, mode="middle")


# --- user text stays text ---

_ALL_CONTROL_STRINGS = (
    "<fim_prefix><fim_suffix><fim_middle><|endoftext|><|fim_prefix|><|fim_suffix|><|fim_middle|>"
    "<｜begin▁of▁sentence｜><｜fim▁begin｜><｜fim▁hole｜><｜fim▁end｜><s></s>▁<PRE>▁<SUF>▁<MID>▁<EOT>"
)


@pytest.mark.parametrize("family", ["plain", *FIM_FAMILIES])
def test_special_token_strings_in_user_text_stay_text(family: str) -> None:
    tok = _tokenizer(family)
    template = detect_template(tok)
    prefix = f"s = '{_ALL_CONTROL_STRINGS}'\n"
    suffix = f"t = '{_ALL_CONTROL_STRINGS}'\n"
    prompt = build_prompt(tok, template, prefix, suffix)
    control = {i for i in tok.all_special_ids} | {tok.convert_tokens_to_ids(t) for t in template.fim_tokens}
    inserted = [i for i in prompt.input_ids if i in control]
    assert len(inserted) == template.added_tokens  # only the template's own, once each
    start = int(template.add_bos) + int(template.is_fim)
    prefix_ids = prompt.input_ids[start : start + prompt.prefix_tokens]
    # sentencepiece decodes a literal "▁" as a space; that is the tokenizer, not an injection
    expected = prefix.replace("▁", " ") if family == "codellama" else prefix
    assert str(tok.decode(prefix_ids)).lstrip(" ") == expected


def test_non_special_added_fim_tokens_in_user_text_stay_text() -> None:
    tok = _qwen_like_tokenizer()
    assert detect_template(tok).name == "qwen"
    pre, suf, mid = _ids(tok, "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    prefix = "x = '<|fim_middle|>'\n"
    # split_special_tokens alone does not cover tokens marked special: false
    assert mid in tok.encode(prefix, add_special_tokens=False, split_special_tokens=True)
    prompt = build_prompt(tok, TEMPLATES["qwen"], prefix, "<|fim_prefix|>")
    assert [prompt.input_ids.count(i) for i in (pre, suf, mid)] == [1, 1, 1]
    assert prompt.input_ids[0] == pre and prompt.input_ids[-1] == mid
    assert tok.decode(prompt.input_ids[1 : 1 + prompt.prefix_tokens]) == prefix
    suffix_ids = prompt.input_ids[2 + prompt.prefix_tokens : -1]
    assert tok.decode(suffix_ids) == "<|fim_prefix|>"


# --- stop tokens ---


@pytest.mark.parametrize(
    ("family", "tokens"),
    [
        ("plain", ["<|endoftext|>"]),
        (
            "starcoder",
            ["<|endoftext|>", "<fim_pad>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
        ),
        (
            "qwen",
            [
                *("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>"),
                *("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
            ],
        ),
        (
            "deepseek",
            ["<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
        ),
        ("codellama", ["▁<EOT>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>"]),
    ],
)
def test_stop_token_ids(family: str, tokens: list[str]) -> None:
    tok = _tokenizer(family)
    assert stop_token_ids(tok, detect_template(tok)) == frozenset(_ids(tok, *tokens))


def test_stop_token_ids_skip_absent_end_tokens_and_include_eos() -> None:
    tok = build_tokenizer("plain")
    tok.add_special_tokens({"eos_token": "<|im_end|>"})
    ids = stop_token_ids(tok, TEMPLATES["prefix-only"])
    assert ids == frozenset(_ids(tok, "<|im_end|>", "<|endoftext|>"))
    assert stop_token_ids(_tokenizer("qwen"), TEMPLATES["prefix-only"]) == frozenset(
        _ids(_tokenizer("qwen"), "<|endoftext|>")
    )


# --- trimming ---

LONG_PREFIX = "".join(f"value_{i} = compute({i})\n" for i in range(60))
LONG_SUFFIX = "".join(f"print(value_{i})\n" for i in range(60))


@pytest.mark.parametrize("mode", FIM_MODES)
def test_trimming_keeps_tokens_nearest_the_cursor(mode: str) -> None:
    tok = _tokenizer("starcoder")
    p, s = _text(tok, LONG_PREFIX), _text(tok, LONG_SUFFIX)
    prompt = build_prompt(
        tok, TEMPLATES["starcoder"], LONG_PREFIX, LONG_SUFFIX, mode=mode, max_prompt_tokens=43
    )
    assert len(prompt.input_ids) == 43
    budget = 40  # 43 minus the three sentinels
    assert (prompt.prefix_tokens, prompt.suffix_tokens) == (30, 10)
    assert (prompt.trimmed_prefix_tokens, prompt.trimmed_suffix_tokens) == (len(p) - 30, len(s) - 10)
    assert prompt.prefix_tokens + prompt.suffix_tokens == budget
    pre, suf, mid = _ids(tok, "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    if mode == "psm":
        assert prompt.input_ids == [pre, *p[-30:], suf, *s[:10], mid]
    else:
        assert prompt.input_ids == [pre, suf, *s[:10], mid, *p[-30:]]


def test_short_suffix_donates_its_budget_to_the_prefix() -> None:
    tok = _tokenizer("deepseek")
    suffix = "\n"
    prompt = build_prompt(tok, TEMPLATES["deepseek"], LONG_PREFIX, suffix, max_prompt_tokens=50)
    assert len(prompt.input_ids) == 50
    assert prompt.suffix_tokens == len(_text(tok, suffix)) == 1
    assert prompt.prefix_tokens == 50 - 4 - 1
    assert prompt.input_ids[2 : 2 + prompt.prefix_tokens] == _text(tok, LONG_PREFIX)[-45:]


def test_short_prefix_donates_its_budget_to_the_suffix() -> None:
    tok = _tokenizer("qwen")
    prefix = "x = 1\n"
    n_prefix = len(_text(tok, prefix))
    prompt = build_prompt(tok, TEMPLATES["qwen"], prefix, LONG_SUFFIX, max_prompt_tokens=40)
    assert len(prompt.input_ids) == 40
    assert (prompt.prefix_tokens, prompt.trimmed_prefix_tokens) == (n_prefix, 0)
    assert prompt.suffix_tokens == 37 - n_prefix
    assert prompt.input_ids[2 + n_prefix : -1] == _text(tok, LONG_SUFFIX)[: 37 - n_prefix]


def test_prefix_only_gives_whole_budget_to_prefix() -> None:
    tok = _tokenizer("plain")
    prompt = build_prompt(tok, TEMPLATES["prefix-only"], LONG_PREFIX, LONG_SUFFIX, max_prompt_tokens=25)
    assert prompt.input_ids == _text(tok, LONG_PREFIX)[-25:]
    assert prompt.trimmed_prefix_tokens == len(_text(tok, LONG_PREFIX)) - 25


def test_prompt_under_budget_is_untouched() -> None:
    tok = _tokenizer("starcoder")
    unlimited = build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX)
    exact = len(unlimited.input_ids)
    assert build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, max_prompt_tokens=exact) == unlimited
    assert build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, max_prompt_tokens=exact - 1) != unlimited


def test_budget_too_small_for_the_template_raises() -> None:
    tok = _tokenizer("codellama")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        build_prompt(tok, TEMPLATES["codellama"], PREFIX, SUFFIX, max_prompt_tokens=4)
    assert len(build_prompt(tok, TEMPLATES["codellama"], PREFIX, SUFFIX, max_prompt_tokens=5).input_ids) == 5


_FRAGMENTS = st.sampled_from(
    ["def ", "return", " ", "    ", "\n", "\r\n", "\t", "x", "(", ")", ":", "é", "你好", "😀", "▁", "☺",
     "<fim_prefix>", "<|fim_middle|>", "<｜fim▁hole｜>", "▁<SUF>", "<s>", "</s>", "<|endoftext|>"]
)  # fmt: skip
_TEXT = st.lists(_FRAGMENTS | st.text(max_size=4), max_size=30).map("".join)


@settings(max_examples=150, deadline=None)
@given(
    family=st.sampled_from(["plain", *FIM_FAMILIES]),
    spm=st.booleans(),
    prefix=_TEXT,
    suffix=_TEXT,
    extra=st.integers(min_value=1, max_value=60),
)
def test_trimmed_prompt_fits_and_keeps_prefix_tail(
    family: str, spm: bool, prefix: str, suffix: str, extra: int
) -> None:
    tok = _tokenizer(family)
    template = detect_template(tok)
    mode = "spm" if spm and "spm" in template.modes else "psm"
    max_prompt_tokens = template.added_tokens + extra
    prompt = build_prompt(tok, template, prefix, suffix, mode=mode, max_prompt_tokens=max_prompt_tokens)
    assert len(prompt.input_ids) <= max_prompt_tokens
    full_prefix = tok.encode(prefix, add_special_tokens=False, split_special_tokens=True)
    assert prompt.prefix_tokens + prompt.trimmed_prefix_tokens == len(full_prefix)
    if mode == "spm":
        kept = prompt.input_ids[len(prompt.input_ids) - prompt.prefix_tokens :]
    else:
        start = int(template.add_bos) + int(template.is_fim)
        kept = prompt.input_ids[start : start + prompt.prefix_tokens]
    assert kept == full_prefix[len(full_prefix) - prompt.prefix_tokens :]
    if prompt.trimmed_prefix_tokens or prompt.trimmed_suffix_tokens:
        assert len(prompt.input_ids) == max_prompt_tokens  # trimming fills the budget exactly


# --- repository context ---


def test_context_comes_first_and_counts_against_the_budget() -> None:
    tok = _tokenizer("starcoder")
    pre, suf, mid = _ids(tok, "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    context = "# Path: util.py\n# def helper(x): ...\n"
    prompt = build_prompt(tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, context=context)
    c = _text(tok, context)
    assert prompt.input_ids == [*c, pre, *_text(tok, PREFIX), suf, *_text(tok, SUFFIX), mid]
    assert prompt.context_tokens == len(c)
    # with a budget the context's tokens come out of the document's share
    budget = 2 * len(c) + 3  # the context may use half of what the template leaves
    trimmed = build_prompt(
        tok, TEMPLATES["starcoder"], PREFIX, SUFFIX, context=context, max_prompt_tokens=budget
    )
    assert len(trimmed.input_ids) <= budget
    assert trimmed.input_ids[: len(c)] == c


def test_context_over_half_the_budget_is_cut_at_line_boundaries() -> None:
    tok = _tokenizer("plain")
    context = "".join(f"# line {i} of a long snippet\n" for i in range(100))
    prompt = build_prompt(tok, TEMPLATES["prefix-only"], PREFIX, "", context=context, max_prompt_tokens=200)
    assert 0 < prompt.context_tokens <= 100
    kept = tok.decode(prompt.input_ids[: prompt.context_tokens])
    assert context.startswith(kept) and kept.endswith("\n")
    assert prompt.prefix_tokens == len(_text(tok, PREFIX))


@pytest.mark.parametrize(("family", "sep"), [("starcoder", "<file_sep>"), ("qwen", "<|file_sep|>")])
def test_file_separator_in_context_is_one_token(family: str, sep: str) -> None:
    tok = _tokenizer(family)
    (sep_id,) = _ids(tok, sep)
    context = f"{sep}a.py\ndef f(): ...\n{sep}b.py\n"
    prompt = build_prompt(tok, TEMPLATES[family], PREFIX, SUFFIX, context=context)
    head = prompt.input_ids[: prompt.context_tokens]
    assert head.count(sep_id) == 2 and head[0] == sep_id
    # in the user's own text the separator stays text
    plain = build_prompt(tok, TEMPLATES[family], sep + PREFIX, SUFFIX)
    assert sep_id not in plain.input_ids
