"""Text edits → token edits: incremental re-tokenization and token diffs.

The central property: after every edit, `retokenize` gives exactly the full tokenization of the
new text (ids and offsets), with a valid script that keeps most tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from splice.completion.models import default_home
from splice.completion.token_edits import (
    TextEdit,
    TokenizedText,
    TokenRun,
    apply_text_edits,
    diff_tokens,
    retokenize,
    tokenize,
    validate_script,
)
from splice_testkit.tiny import build_tokenizer

SMOL = "SmolLM2-135M-Instruct"

CODE = """\
import os


class Résumé:
    \"\"\"Café naïve — 你好, 世界 😀 👍🏽.\"\"\"

    def __init__(self, path: str, *, limit: int = 12345) -> None:
        self.path = path\r
        self.limit = limit\r
\tself.items: list[str] = []

    def load(self) -> list[str]:
        with open(os.path.join(self.path, "data.txt"), encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    self.items.append(line.rstrip("\\n"))
        return self.items[: self.limit]  # it's <|endoftext|> and <s> as text
"""

PIECES = [
    "def ", "return", "self", ".", ",", ":", "(", ")", "[", "]", "=", "==", "+", "-", "#", "'", '"',
    "'s", " ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\n\n", "0", "42", "12345", "é", "naïve",
    "ü", "你好", "中", "😀", "👍🏽", "🇫🇷", "\u200d", "e\u0301", "<|endoftext|>", "<s>", "▁", "-'", "'d",
    "'ll", "----", "   \n",
]  # fmt: skip

identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_XYZ019", min_size=1, max_size=12)
fragments = st.one_of(st.sampled_from(PIECES), identifiers)
snippets = st.lists(fragments, max_size=4).map("".join)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Random code-like text around a slice of real code (so that documents are long), or only
    random fragments (dense in the cases that trip up pre-tokenizer regexes)."""
    if draw(st.booleans()):
        return "".join(draw(st.lists(fragments, min_size=60, max_size=200)))
    start = draw(st.integers(0, len(CODE)))
    end = draw(st.integers(start + len(CODE) // 2, start + len(CODE)))
    head = draw(st.lists(fragments, max_size=40))
    tail = draw(st.lists(fragments, max_size=40))
    return "".join(head) + (CODE * 2)[start:end] + "".join(tail)


@st.composite
def edit_batches(draw: st.DrawFn, text: str) -> list[TextEdit]:
    """1-3 non-overlapping edits of `text`: insertions, deletions and replacements, anywhere,
    often close together (their windows then meet)."""
    position = st.one_of(st.just(0), st.just(len(text)), st.integers(0, len(text)))
    if draw(st.booleans()):
        starts = draw(st.lists(position, min_size=1, max_size=3))
    else:
        center = draw(position)
        starts = [center + d for d in draw(st.lists(st.integers(-24, 24), min_size=1, max_size=3))]
    starts = sorted({min(max(pos, 0), len(text)) for pos in starts})
    edits = []
    for k, start in enumerate(starts):
        limit = starts[k + 1] if k + 1 < len(starts) else len(text)
        end = min(start + draw(st.sampled_from([0, 0, 1, 2, 5, 12])), limit)
        edits.append(TextEdit(start, end, draw(snippets)))
    return draw(st.permutations(edits))  # the order of a batch does not matter


def _smol_path() -> Path | None:
    for path in (default_home() / "models" / SMOL, Path("/tmp/sh/models") / SMOL):
        if (path / "tokenizer.json").exists():
            return path
    return None


@pytest.fixture(scope="module", params=["plain", "codellama", "smollm2"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    if request.param != "smollm2":
        return build_tokenizer(request.param)
    path = _smol_path()
    if path is None:
        pytest.skip(f"{SMOL} is not in {default_home() / 'models'}")
    return AutoTokenizer.from_pretrained(path)


class RecordingTokenizer:
    """Forwards to a tokenizer and records the length of every text it is given."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def _counts(script: list[TokenRun]) -> tuple[int, int]:
    inserted = sum(r.new_end - r.new_start for r in script if r.op == "insert")
    deleted = sum(r.old_end - r.old_start for r in script if r.op == "delete")
    return inserted, deleted


# --- retokenize ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_retokenize_equals_full_tokenization_after_every_edit(
    tokenizer: PreTrainedTokenizerBase, data: st.DataObject
) -> None:
    old = tokenize(tokenizer, data.draw(documents(), label="document"))
    fallback = data.draw(st.sampled_from([0.5, math.inf]), label="fallback_fraction")
    for _ in range(data.draw(st.integers(1, 10), label="steps")):
        edits = data.draw(edit_batches(old.text), label="edits")
        new, script = retokenize(tokenizer, old, edits, fallback_fraction=fallback)
        full = tokenize(tokenizer, apply_text_edits(old.text, edits))
        assert new.text == full.text
        assert new.ids == full.ids
        assert new.offsets == full.offsets
        validate_script(script, old.ids, new.ids)
        if len(edits) == 1 and len(old.ids) >= 64:
            size = len(edits[0].text) + edits[0].end - edits[0].start
            inserted, deleted = _counts(script)
            assert inserted <= 2 * size + 16, (edits, script)
            assert deleted <= 2 * size + 16, (edits, script)
        old = new


def test_retokenize_only_tokenizes_a_window(tokenizer: PreTrainedTokenizerBase) -> None:
    old = tokenize(tokenizer, CODE * 20)
    recording = RecordingTokenizer(tokenizer)
    rng = random.Random(0)
    for pos in [0, len(old.text), *(rng.randrange(len(old.text)) for _ in range(30))]:
        for edit in (TextEdit(pos, pos, "x"), TextEdit(pos, min(pos + 3, len(old.text)), " ")):
            recording.lengths.clear()
            new, script = retokenize(recording, old, [edit])
            assert new == tokenize(tokenizer, new.text)
            assert max(recording.lengths) < len(old.text) // 8, edit
            assert sum(r.old_end - r.old_start for r in script if r.op == "keep") >= len(old.ids) - 12


@pytest.mark.parametrize("replacement", ["é", "a", "", "--"])
def test_retokenize_resyncs_only_where_pre_tokens_agree(replacement: str) -> None:
    """GPT-2's regex reads "-'def" as "-'", "def" but "a'def" as "a", "'d", "ef": the "'" token is
    the same before and after the edit, but the tokens after it are not."""
    tokenizer = build_tokenizer("plain")
    text = CODE * 3 + "x = a-'def b\n" + CODE * 3
    old = tokenize(tokenizer, text)
    dash = text.index("-'def")
    for edits in ([TextEdit(dash, dash + 1, replacement)], [TextEdit(dash, dash, replacement)]):
        new, script = retokenize(tokenizer, old, edits)
        assert new == tokenize(tokenizer, apply_text_edits(text, edits))
        validate_script(script, old.ids, new.ids)


def test_retokenize_handles_distant_and_touching_edits(tokenizer: PreTrainedTokenizerBase) -> None:
    old = tokenize(tokenizer, CODE * 10)
    n = len(old.text)
    batches = [
        [TextEdit(5, 5, "a"), TextEdit(n // 2, n // 2 + 1, "😀"), TextEdit(n, n, "\r\n")],
        [TextEdit(10, 12, "x"), TextEdit(12, 12, "y"), TextEdit(12, 14, "你")],  # touching
        [TextEdit(k, k + 1, "") for k in range(100, 140, 3)],  # many edits in one window
        [TextEdit(0, 0, "def "), TextEdit(7, 7, "def ")],  # the second window reaches the text start
        [TextEdit(0, 3, ""), TextEdit(5, 5, "x")],
        [TextEdit(n - 3, n - 1, "y"), TextEdit(n, n, "z")],  # the first window reaches the text end
    ]
    for edits in batches:
        new, script = retokenize(tokenizer, old, edits)
        assert new == tokenize(tokenizer, apply_text_edits(old.text, edits))
        validate_script(script, old.ids, new.ids)


def test_retokenize_falls_back_for_large_edits(tokenizer: PreTrainedTokenizerBase) -> None:
    old = tokenize(tokenizer, CODE * 4)
    edits = [TextEdit(10, len(old.text) - 10, "pass\n")]
    recording = RecordingTokenizer(tokenizer)
    new, script = retokenize(recording, old, edits)
    assert recording.lengths[-1] == len(new.text)  # the whole new text, once
    assert new == tokenize(tokenizer, new.text)
    validate_script(script, old.ids, new.ids)


def test_retokenize_splices_into_empty_and_out_of_empty(tokenizer: PreTrainedTokenizerBase) -> None:
    empty = tokenize(tokenizer, "")
    new, script = retokenize(tokenizer, empty, [TextEdit(0, 0, CODE)])
    assert new == tokenize(tokenizer, CODE)
    assert script == [TokenRun("insert", 0, 0, 0, len(new.ids), new.ids)]
    gone, script = retokenize(tokenizer, new, [TextEdit(0, len(CODE), "")])
    assert gone == empty
    assert script == [TokenRun("delete", 0, len(new.ids), 0, 0)]
    same, script = retokenize(tokenizer, new, [])
    assert same == new
    assert script == [TokenRun("keep", 0, len(new.ids), 0, len(new.ids))]


def test_tokenize_keeps_special_token_strings_as_text() -> None:
    for family, special in [("plain", "<|endoftext|>"), ("codellama", "</s>")]:
        tok = build_tokenizer(family)
        ids = tokenize(tok, f"a {special} b").ids
        assert tok.convert_tokens_to_ids(special) not in ids
        assert tok.bos_token_id is None or tok.bos_token_id not in ids


# --- apply_text_edits ----------------------------------------------------------------------------


def test_apply_text_edits_uses_old_coordinates_in_any_order() -> None:
    edits = [TextEdit(6, 11, "there"), TextEdit(0, 0, ">> "), TextEdit(5, 6, "_")]
    assert apply_text_edits("hello world", edits) == ">> hello_there"
    assert apply_text_edits("hello world", edits[::-1]) == ">> hello_there"
    assert apply_text_edits("", [TextEdit(0, 0, "x")]) == "x"


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ([TextEdit(0, 5, "a"), TextEdit(4, 6, "b")], r"edits \[0, 5\) and \[4, 6\) overlap"),
        ([TextEdit(3, 3, "a"), TextEdit(3, 3, "b")], "overlap"),  # two insertions at one point
        ([TextEdit(2, 12, "")], r"edit \[2, 12\) is out of range for a text of 11 characters"),
    ],
)
def test_apply_text_edits_rejects_bad_edits(edits: list[TextEdit], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_text_edits("hello world", edits)
    with pytest.raises(ValueError, match=message):
        retokenize(build_tokenizer("plain"), tokenize(build_tokenizer("plain"), "hello world"), edits)


def test_text_edit_rejects_inverted_ranges() -> None:
    with pytest.raises(ValueError, match="not a valid range"):
        TextEdit(5, 3, "")
    with pytest.raises(ValueError, match="not a valid range"):
        TextEdit(-1, 0, "")


# --- diff_tokens ---------------------------------------------------------------------------------


def _apply_token_edits(old: list[int], edits: list[tuple[int, int, list[int]]]) -> list[int]:
    new = list(old)
    for pos, length, ids in sorted(edits, reverse=True):
        new[pos : pos + length] = ids
    return new


@st.composite
def edited_lists(draw: st.DrawFn, alphabet: int, max_size: int) -> tuple[list[int], list[int]]:
    old = draw(st.lists(st.integers(0, alphabet), max_size=max_size))
    positions = draw(st.lists(st.integers(0, len(old)), max_size=6, unique=True))
    edits = [
        (pos, draw(st.integers(0, 4)), draw(st.lists(st.integers(0, alphabet), max_size=4)))
        for pos in positions
    ]
    return old, _apply_token_edits(old, edits)


@settings(max_examples=300, deadline=None)
@given(st.one_of(edited_lists(3, 60), edited_lists(1000, 1500)))
def test_diff_tokens_script_transforms_old_into_new(lists: tuple[list[int], list[int]]) -> None:
    old, new = lists
    script = diff_tokens(old, new)
    validate_script(script, old, new)
    assert sum(r.old_end - r.old_start for r in script if r.op == "keep") >= len(old) - 6 * 4 - 6 * 16


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=80), st.lists(st.integers(0, 5), max_size=80))
def test_diff_tokens_on_unrelated_lists(old: list[int], new: list[int]) -> None:
    validate_script(diff_tokens(old, new), old, new)


def test_diff_tokens_exact_scripts() -> None:
    a = list(range(10))
    assert diff_tokens(a, [*a[:4], 99, *a[4:]]) == [
        TokenRun("keep", 0, 4, 0, 4),
        TokenRun("insert", 4, 4, 4, 5, (99,)),
        TokenRun("keep", 4, 10, 5, 11),
    ]
    assert diff_tokens(a, a[:3] + a[6:]) == [
        TokenRun("keep", 0, 3, 0, 3),
        TokenRun("delete", 3, 6, 3, 3),
        TokenRun("keep", 6, 10, 3, 7),
    ]
    assert diff_tokens([1, 2, 3, 4, 5], [1, 2, 9, 9, 4, 5]) == [  # replace: delete, then insert
        TokenRun("keep", 0, 2, 0, 2),
        TokenRun("delete", 2, 3, 2, 2),
        TokenRun("insert", 3, 3, 2, 4, (9, 9)),
        TokenRun("keep", 3, 5, 4, 6),
    ]
    assert diff_tokens([], []) == []
    assert diff_tokens([], [1, 2]) == [TokenRun("insert", 0, 0, 0, 2, (1, 2))]
    assert diff_tokens([1, 2], []) == [TokenRun("delete", 0, 2, 0, 0)]
    assert diff_tokens((7, 8), [7, 8]) == [TokenRun("keep", 0, 2, 0, 2)]  # tuple vs list


def test_diff_tokens_finds_edits_far_apart_in_long_lists() -> None:
    rng = random.Random(1)
    old = [rng.randrange(5000) for _ in range(8000)]
    edits = [(pos, 2, [1, 2, 3]) for pos in (10, 2000, 4000, 6000, 7990)]
    new = _apply_token_edits(old, edits)
    script = diff_tokens(old, new)
    validate_script(script, old, new)
    assert _counts(script) == (15, 10)


def test_diff_tokens_on_repetitive_lists() -> None:
    old = [k % 3 for k in range(3000)]
    new = _apply_token_edits(old, [(100, 1, [7]), (1500, 0, [8, 8]), (2900, 3, [])])
    validate_script(diff_tokens(old, new), old, new)


# --- validate_script -----------------------------------------------------------------------------

GOOD = [
    TokenRun("keep", 0, 2, 0, 2),
    TokenRun("delete", 2, 3, 2, 2),
    TokenRun("insert", 3, 3, 2, 4, (9, 9)),
    TokenRun("keep", 3, 4, 4, 5),
]


def _replaced(k: int, **changes: Any) -> list[TokenRun]:
    fields = GOOD[k].__dict__ | changes
    return [*GOOD[:k], TokenRun(**fields), *GOOD[k + 1 :]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GOOD[:-1], "script ends at old 3, new 4"),
        (lambda: _replaced(0, old_end=1, new_end=1), "does not start where"),
        (lambda: _replaced(1, old_end=4), "does not start where"),
        (lambda: _replaced(2, ids=(9, 8)), "must insert exactly"),
        (lambda: _replaced(1, new_end=3), "must delete a non-empty range"),
        (lambda: [*GOOD[:3], TokenRun("delete", 3, 4, 4, 4)], "script ends at old 4, new 4"),
        (lambda: [TokenRun("keep", 0, 1, 0, 1), TokenRun("keep", 1, 2, 1, 2), *GOOD[1:]], "merged"),
        (lambda: [TokenRun("keep", 0, 3, 0, 3), TokenRun("insert", 3, 3, 3, 4, (9,)), *GOOD[3:]], "differ"),
        (lambda: _replaced(0, op="move"), "unknown op"),
    ],
)
def test_validate_script_rejects_wrong_scripts(make: Callable[[], list[TokenRun]], message: str) -> None:
    old, new = [1, 2, 3, 4], [1, 2, 9, 9, 4]
    validate_script(GOOD, old, new)
    with pytest.raises(ValueError, match=message):
        validate_script(make(), old, new)


def test_tokenized_text_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 ids but 1 offsets"):
        TokenizedText("ab", (1, 2), ((0, 2),))
