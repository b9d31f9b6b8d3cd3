"""Next-edit suggestions: rewrite a window of lines around the cursor, given what the developer
just did, and answer with the smallest edit that turns the window into the rewrite.

The prompt is the service's completion prompt with the window marked as a merge conflict, a
layout code models have seen in every repository's history:

    <recent edits, unified diffs (the context slot)>
    ...document before the window...
    <<<<<<< current
    ...the window as it is...
    =======
    <the window's first line>
    [the model writes the rest of the window as it should be: the FIM middle]
    >>>>>>> updated
    ...document after the window...

The window's first line is repeated after the divider as a fixed anchor (it is not rewritten): a
small model starts copying where the text it just read occurred before (an induction match on the
first line), and without the anchor it does not know where the copy starts. Edits are proposed
for the lines after it (the cursor's line is never the window's first unless the document's is).

The window's text is also the drafting source (`CompletionInput.draft_text`): most of a rewrite
is a copy, which lookup drafting verifies many tokens at a time. The generation is raw (no
completion post-processing) and ends at the FIM end, a conflict marker or the first line after
the window; a rewrite cut by the token limit, an empty one, or one equal to the window is "no
change" (no edit).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from splice.completion.engine import CompletionInput, GenerationParams

CURRENT = "<<<<<<< current\n"
DIVIDER = "=======\n"
UPDATED = ">>>>>>> updated\n"
STOPS = ("\n>>>>>>>", ">>>>>>>", "\n=======", "\n<<<<<<<")
MAX_WINDOW_LINES = 41  # ±20
MIN_RUN_ON_LINE = 8  # shorter lines after the window (`else:`, `)`) may well be in a rewrite


@dataclass(frozen=True)
class Window:
    start_line: int  # 0-based, first line of the window
    end_line: int  # exclusive
    start: int  # code-point offset of the window in the document
    end: int
    before: str  # the document before the window
    text: str  # the window (whole lines, with their line ends)
    after: str  # the document after it

    @property
    def anchor(self) -> str:
        """The window's first line (with its line end) when more lines follow it, else ''."""
        end = self.text.find("\n")
        return self.text[: end + 1] if 0 <= end < len(self.text) - 1 else ""


@dataclass(frozen=True)
class TextEdit:
    start: int  # code-point offsets in the document
    end: int
    text: str


def window_around(text: str, offset: int, lines_before: int = 5, lines_after: int = 5) -> Window:
    """The whole lines from `lines_before` above the cursor's line to `lines_after` below it."""
    if not 0 <= offset <= len(text):
        raise ValueError(f"offset {offset} is outside the document (0..{len(text)})")
    if lines_before < 0 or lines_after < 0 or lines_before + lines_after + 1 > MAX_WINDOW_LINES:
        raise ValueError(f"a window is at most {MAX_WINDOW_LINES} lines (±{MAX_WINDOW_LINES // 2})")
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    if starts[-1] == len(text) and len(starts) > 1 and text:
        starts.pop()  # a final newline does not start a line
    line = max(i for i, s in enumerate(starts) if s <= offset) if starts else 0
    first = max(0, line - lines_before)
    last = min(len(starts), line + lines_after + 1)
    start = starts[first]
    end = starts[last] if last < len(starts) else len(text)
    return Window(first, last, start, end, text[:start], text[start:end], text[end:])


def rewrite_input(
    window: Window, language: str | None, filepath: str | None, context: str = ""
) -> CompletionInput:
    body = window.text if window.text.endswith("\n") or not window.text else window.text + "\n"
    return CompletionInput(
        prefix=window.before + CURRENT + body + DIVIDER + window.anchor,
        suffix=UPDATED + window.after,
        language=language,
        filepath=filepath,
        context=context,
        draft_text=body,
        heal=False,  # the rewrite starts after the divider's line end, as in training
    )


def rewrite_params(window: Window, count_tokens: int, max_tokens: int | None = None) -> GenerationParams:
    """Room for the window rewritten with some growth (`count_tokens`: the window's tokens). A
    rewrite that runs on into the first line after the window (a model that copies past the
    conflict's end instead of closing it) stops there."""
    budget = max_tokens if max_tokens is not None else int(count_tokens * 1.5) + 16
    following = next((line for line in window.after.split("\n") if line.strip()), "")
    stops = STOPS + (("\n" + following,) if len(following.strip()) >= MIN_RUN_ON_LINE else ())
    return GenerationParams(max_tokens=max(1, budget), stop=stops, postprocess=False)


def suggested_edit(window: Window, generated: str, finish_reason: str) -> TextEdit | None:
    """The edit a generation suggests: the anchor line and the generated rest of the window,
    as a minimal edit; none for a generation that did not end by itself (cut by the limit) or
    that is empty (a model that closes the conflict at once means "no change", not "delete")."""
    if finish_reason != "stop" or not generated.strip():
        return None
    return minimal_edit(window, keep_edges(window.text, window.anchor + generated))


def keep_edges(old: str, new: str) -> str:
    """`new` without the deletions a rewrite makes by stopping early or starting late: lines of
    `old` missing at the rewrite's start or end are kept, and so are deleted blank lines (a small
    model drops or adds blank lines while copying). Replacements, insertions and deletions of
    code lines inside the window stand. A replacement at the end with fewer new lines than old
    (an unfinished line completed, then the rewrite ended) keeps the old lines after it."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    out: list[str] = []
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        edge = n == 0 or n == len(ops) - 1
        if tag == "equal" or tag == "insert":
            out.extend(b[j1:j2])
        elif tag == "delete":
            if edge or all(not line.strip() for line in a[i1:i2]):
                out.extend(a[i1:i2])
        elif n == len(ops) - 1 and i2 - i1 > j2 - j1:  # the rewrite ended inside this block
            done = b[j1:j2]
            if done and not done[-1].endswith("\n"):
                done[-1] += "\n"  # the kept lines follow it
            out.extend(done)
            out.extend(a[i1 + (j2 - j1) : i2])
        else:
            out.extend(b[j1:j2])
    return "".join(out)


def minimal_edit(window: Window, rewritten: str) -> TextEdit | None:
    """The one contiguous edit that turns the window into `rewritten` (None: no change)."""
    old = window.text
    new = rewritten
    if not old.endswith("\n") and new.endswith("\n"):
        new = new[:-1]  # the prompt added a line end the document's last line does not have
    elif old.endswith("\n") and not new.endswith("\n"):
        new += "\n"
    if new == old or not new.strip():
        return None
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    s = 0
    while s < min(len(old), len(new)) - p and old[len(old) - 1 - s] == new[len(new) - 1 - s]:
        s += 1
    return TextEdit(window.start + p, window.start + len(old) - s, new[p : len(new) - s])
