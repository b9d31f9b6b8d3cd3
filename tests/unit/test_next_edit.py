"""The next-edit window, prompt and minimal edit (`completion.next_edit`)."""

from __future__ import annotations

import pytest

from splice.completion.next_edit import (
    CURRENT,
    DIVIDER,
    STOPS,
    UPDATED,
    keep_edges,
    minimal_edit,
    rewrite_input,
    rewrite_params,
    suggested_edit,
    window_around,
)

TEXT = "".join(f"line {i}\n" for i in range(20))


def _apply(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def test_window_is_whole_lines_around_the_cursor() -> None:
    offset = TEXT.index("line 10") + 3
    w = window_around(TEXT, offset, 2, 3)
    assert (w.start_line, w.end_line) == (8, 14)
    assert w.text == "line 8\nline 9\nline 10\nline 11\nline 12\nline 13\n"
    assert w.before + w.text + w.after == TEXT
    assert TEXT[w.start : w.end] == w.text


@pytest.mark.parametrize(
    ("text", "offset", "expected"),
    [
        ("", 0, ""),
        ("a\nb", 3, "a\nb"),  # the cursor at the end of a last line without a line end
        ("a\nb\n", 4, "a\nb\n"),  # after the final newline: the last line is the cursor's
        ("x\n" * 3, 0, "x\nx\n"),  # the window is cut at the document's start
    ],
)
def test_window_at_the_document_edges(text: str, offset: int, expected: str) -> None:
    w = window_around(text, offset, 1, 1)
    assert w.text == expected
    assert w.before + w.text + w.after == text


def test_window_limits() -> None:
    with pytest.raises(ValueError, match="outside the document"):
        window_around("abc", 4)
    with pytest.raises(ValueError, match="at most 41 lines"):
        window_around(TEXT, 0, 21, 20)
    with pytest.raises(ValueError):
        window_around(TEXT, 0, -1, 2)


def test_the_prompt_marks_the_window_as_a_merge_conflict() -> None:
    w = window_around(TEXT, TEXT.index("line 5"), 1, 1)
    inp = rewrite_input(w, "python", "a.py", context="ctx")
    assert w.anchor == "line 4\n"  # the first line, repeated after the divider: where the copy starts
    assert inp.prefix == w.before + CURRENT + w.text + DIVIDER + w.anchor
    assert inp.heal is False  # the prompt ends at a line boundary, as in training
    assert inp.suffix == UPDATED + w.after
    assert inp.draft_text == w.text  # the copy the rewrite mostly is
    assert rewrite_params(w, 10).postprocess is False
    assert rewrite_params(w, 10).max_tokens == 31
    assert rewrite_params(w, 10, max_tokens=4).max_tokens == 4
    # a copy that runs on past the window stops at the first (long enough) line after it
    run_on = window_around("x = 1\n\n    return total\n", 0, 0, 0)
    assert rewrite_params(run_on, 4).stop == (*STOPS, "\n    return total")
    short = window_around("a = 1\n\n)\n", 0, 0, 0)
    assert rewrite_params(short, 4).stop == STOPS
    last = window_around("a\nb", 3, 1, 0)  # no line end at the end: the prompt adds one
    assert rewrite_input(last, None, None).prefix.endswith("a\nb\n" + DIVIDER + "a\n")
    assert window_around("one line\n", 0, 1, 1).anchor == ""  # nothing after it to rewrite


def test_minimal_edit_is_the_changed_span_only() -> None:
    w = window_around(TEXT, TEXT.index("line 10"), 2, 2)
    new = w.text.replace("line 10\n", "line ten\nline 10.5\n")
    edit = minimal_edit(w, new)
    assert edit is not None
    assert _apply(TEXT, edit.start, edit.end, edit.text) == w.before + new + w.after
    assert len(edit.text) < len(new)  # not the whole window
    assert w.start <= edit.start <= edit.end <= w.end


@pytest.mark.parametrize("rewritten", ["same", "", "   \n"])
def test_no_change_answers_no_edit(rewritten: str) -> None:
    w = window_around(TEXT, TEXT.index("line 3"), 1, 1)
    assert minimal_edit(w, w.text if rewritten == "same" else rewritten) is None


def test_minimal_edit_keeps_the_documents_last_line_end() -> None:
    text = "a = 1\nb = 2"
    w = window_around(text, len(text), 1, 0)
    edit = minimal_edit(w, "a = 1\nb = 3\n")  # the rewrite ends with the line end the prompt added
    assert edit is not None
    assert _apply(text, edit.start, edit.end, edit.text) == "a = 1\nb = 3"
    assert minimal_edit(w, "a = 1\nb = 2\n") is None
    full = "a\nb\n"
    w2 = window_around(full, 0, 0, 1)
    edit2 = minimal_edit(w2, "a\nc")  # a rewrite that lost the last line end keeps it
    assert edit2 is not None
    assert _apply(full, edit2.start, edit2.end, edit2.text) == "a\nc\n"


def test_a_suggestion_is_the_anchor_and_the_generated_rest() -> None:
    w = window_around(TEXT, TEXT.index("line 5"), 1, 1)  # lines 4..6, anchor "line 4"
    edit = suggested_edit(w, "line five\nline 6\n", "stop")
    assert edit is not None
    assert _apply(TEXT, edit.start, edit.end, edit.text) == TEXT.replace("line 5\n", "line five\n")
    assert suggested_edit(w, "line five\nline 6\n", "length") is None  # cut by the limit
    assert suggested_edit(w, "", "stop") is None  # closed at once: no change, not "delete the rest"
    assert suggested_edit(w, "line 5\nline 6\n", "stop") is None  # the window as it is


def test_a_rewrite_that_stops_early_or_starts_late_deletes_nothing() -> None:
    old = "import json\n\n\ndef total(xs):\n    return sum(xs\n\n\ndef save(p):\n    pass\n"
    # the model skipped the first lines, then completed the unfinished line and stopped
    new = "\ndef total(xs):\n    return sum(xs)"
    assert keep_edges(old, new) == old.replace("sum(xs\n", "sum(xs)\n")
    # a deleted code line inside the window stands; a deleted blank line does not
    inner = "a = 1\nb = 2\n\nc = 3\nd = 4\n"
    assert keep_edges(inner, "a = 1\n\nc = 3\nd = 4\n") == "a = 1\n\nc = 3\nd = 4\n"
    assert keep_edges(inner, "a = 1\nb = 2\nc = 3\nd = 4\n") == inner
    assert keep_edges(inner, "a = 1\nb = 20\n\nc = 3\nd = 4\n") == inner.replace("b = 2\n", "b = 20\n")
