"""Turn a model's raw completion into the text the editor inserts at the cursor.

The model keeps writing until a stop token or its token budget: past the end of the block
the cursor is in, into text that already follows the cursor, with its own idea of
indentation and line endings. This module cuts and reshapes that output. It is pure string
work (no model, no tokenizer), so each rule is a small function with golden tests that mark
the cursor (`tests/unit/golden/postprocess/`).

`postprocess` applies the rules in this order:

1. `normalise_newlines`: `\\r\\n` and a lone `\\r` in the raw output become `\\n`.
2. Truncate. Cursor mid-line (the rest of its line has non-whitespace): `first_line`; but at
   the start of a line of code (only indentation before the cursor), whole lines the model
   wrote are inserted above that code, as a FIM middle that ends at a line start is.
   Otherwise `limit_scope`: stop before the first line that leaves the cursor's block.
   Multi-line suggestions are made only where nothing but whitespace follows the cursor, or
   at the start of an empty block (`allows_multi_line`, the rule GitHub Copilot follows);
   elsewhere the suggestion ends with its first non-blank line (`single_line_end`).
3. Drop what the suffix already has: `drop_suffix_overlap` (mid-line) or
   `drop_duplicate_suffix_lines` (multi-line).
4. `trim_trailing_whitespace` (multi-line only; the start of the first line is kept).
5. `convert_indentation` to the document's tabs or spaces.
6. `to_line_endings`: `\\r\\n` when most of the document's line breaks are `\\r\\n`.
7. A whitespace-only result becomes "" (no suggestion).

Widths of indentation count a tab as 4 columns (`TAB_WIDTH`), not as a jump to a tab stop,
both when comparing lines for the scope and when converting spaces to tabs.

Streaming: `stable_prefix` returns the part of the final suggestion that no continuation of
the raw output can change, and `is_finished` says when nothing can change any more. Both
reason on the normalised raw text, whose complete lines (those followed by a newline) are
fixed: more tokens only extend its last line or add lines.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["allows_multi_line", "is_finished", "postprocess", "stable_prefix"]

TAB_WIDTH = 4
DEFAULT_INDENT_UNIT = 4
# A cursor line ending with one of these (and a completion that starts a new line) opens a block
# whose body the completion writes; see `scope_end`.
BLOCK_OPENERS = (":", "{", "(", "[")
BLOCK_CLOSERS = ("}", ")", "]")

# Chat-tuned models close a Markdown code block they imagine themselves in; in a document
# without fences, a line starting with one ends the completion.
FENCE = "```"

IndentStyle = Literal["tabs", "spaces"]


@dataclass(frozen=True)
class CursorContext:
    """What the rules need to know about the document around the cursor (LF-normalised)."""

    line_before: str  # the cursor's line, from its start to the cursor
    line_above: str  # the last non-blank line before the cursor's line ("" if none)
    fences: bool  # the document itself contains Markdown code fences (```)
    line_after: str  # the cursor's line, from the cursor to its end
    suffix_lines: tuple[str, ...]  # the suffix's non-blank lines, stripped, in order
    crlf: bool  # the document mostly ends lines with "\r\n"
    indent_style: IndentStyle | None  # None: no indented lines, or as many tabs as spaces
    indent_unit: int  # spaces per indent level in a space-indented document
    multi_line: bool  # a suggestion may span several lines (`allows_multi_line`)

    @property
    def mid_line(self) -> bool:
        """Code follows the cursor on its line: only a single-line suggestion fits."""
        return bool(self.line_after.strip())


def normalise_newlines(text: str) -> str:
    """`\\r\\n` and lone `\\r` become `\\n` (universal newlines).

    Treating a lone `\\r` as a line break keeps this monotone: the normalised form of a text is
    a prefix of the normalised form of any of its extensions, which streaming relies on.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n")


def indent_width(line: str) -> int:
    """Width of the leading spaces and tabs of `line`, a tab counting `TAB_WIDTH` columns."""
    width = 0
    for char in line:
        if char == " ":
            width += 1
        elif char == "\t":
            width += TAB_WIDTH
        else:
            break
    return width


def leading_whitespace(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def uses_crlf(document: str) -> bool:
    """True when most of the document's line breaks are `\\r\\n`."""
    crlf = document.count("\r\n")
    return crlf > document.count("\n") - crlf


def detect_indentation(lines: Sequence[str]) -> tuple[IndentStyle | None, int]:
    """The document's indent style (what most indented lines start with) and indent unit.

    The unit is the most common positive step in indent width between consecutive non-blank
    lines (the smaller step on a tie), `DEFAULT_INDENT_UNIT` when no line is indented deeper
    than the one before it.
    """
    tabs = spaces = 0
    steps: Counter[int] = Counter()
    previous = 0
    for line in lines:
        if not line.strip():
            continue
        if line[0] == "\t":
            tabs += 1
        elif line[0] == " ":
            spaces += 1
        width = indent_width(line)
        if width > previous:
            steps[width - previous] += 1
        previous = width
    style: IndentStyle | None = "tabs" if tabs > spaces else "spaces" if spaces > tabs else None
    unit = min(steps, key=lambda step: (-steps[step], step)) if steps else DEFAULT_INDENT_UNIT
    return style, unit


@functools.lru_cache(maxsize=16)
def analyse_context(prefix: str, suffix: str) -> CursorContext:
    """Read the cursor's surroundings once per request (cached: streaming calls this per token)."""
    if prefix.endswith("\r") and suffix.startswith("\n"):
        # The cursor sits inside a "\r\n": read it as placed before the "\r".
        prefix, suffix = prefix[:-1], "\r" + suffix
    before = normalise_newlines(prefix)
    after = normalise_newlines(suffix)
    style, unit = detect_indentation((before + after).split("\n"))
    above = [line for line in before.split("\n")[:-1] if line.strip()]
    line_before = before.rsplit("\n", 1)[-1]
    line_above = above[-1] if above else ""
    return CursorContext(
        line_before=line_before,
        line_above=line_above,
        fences=FENCE in prefix or FENCE in suffix,
        line_after=after.split("\n", 1)[0],
        suffix_lines=tuple(line.strip() for line in after.split("\n") if line.strip()),
        crlf=uses_crlf(prefix + suffix),
        indent_style=style,
        indent_unit=unit,
        multi_line=allows_multi_line(line_before, line_above, after),
    )


def allows_multi_line(line_before: str, line_above: str, suffix: str) -> bool:
    """Whether a suggestion at the cursor may span several lines (`suffix` LF-normalised).

    Yes when only whitespace follows the cursor (nothing to collide with), or at the start of an
    empty block: the last code before the cursor (its own line, else the line above) ends with
    a block opener (`BLOCK_OPENERS`) and the first code after the cursor is not indented deeper
    than that line, so the block has no body yet (`def f():|` at the end of a class, `{|}`).
    Elsewhere (a blank line between two statements, the start of a line of code) the model's
    next line is what fits; a weak model that goes on writing mostly invents code that
    disagrees with the code after the cursor. This is GitHub Copilot's rule.
    """
    lines = suffix.split("\n")
    if lines[0].strip():
        lines[0] = line_before + lines[0]  # code on the cursor's line keeps the indent before it
    after = next((line for line in lines if line.strip()), None)
    if after is None:
        return True
    opener = line_before if line_before.strip() else line_above
    if not opener.rstrip().endswith(BLOCK_OPENERS):
        return False
    return indent_width(after) <= indent_width(opener)


# Rule 1: first line only when the cursor is mid-line.


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


# Rule 2: stop at the end of the cursor's block.


def scope_end(lines: Sequence[str], line_before: str, line_above: str = "") -> int | None:
    """Index of the first completion line that leaves the cursor's block, None if none does.

    The reference indent is that of the cursor line after insertion (`line_before + lines[0]`).
    When that line is blank, it is the cursor's own column if the cursor sits after some
    indentation (the editor put it inside a block); at column 0, the indent of the line above
    (one more if that line opens a block); with no line above, the indent of the first non-blank
    completion line. A later non-blank line indented less than the reference leaves the block.

    When the cursor line ends with a block opener (`BLOCK_OPENERS`) and the completion starts a
    new line, the completion is that block's body: a line back at the reference indent leaves
    it too, unless it starts with a closing bracket, which is kept (`}` or `} else {`).

    The answer for a line is fixed as soon as that line has a non-whitespace character, which
    `is_finished` relies on.
    """
    if len(lines) < 2:
        return None
    cursor_line = line_before + lines[0]
    opens_block = False
    if cursor_line.strip():
        reference = indent_width(cursor_line)
        opens_block = not lines[0].strip() and cursor_line.rstrip().endswith(BLOCK_OPENERS)
        start = 1
    elif line_before:
        reference = indent_width(line_before)
        start = 1
    elif line_above.strip():
        reference = indent_width(line_above) + (1 if line_above.rstrip().endswith(BLOCK_OPENERS) else 0)
        start = 1
    else:
        first = next((i for i in range(1, len(lines)) if lines[i].strip()), None)
        if first is None:
            return None
        reference = indent_width(lines[first])
        start = first + 1
    for index in range(start, len(lines)):
        line = lines[index]
        if not line.strip():
            continue
        width = indent_width(line)
        if width < reference:
            return index
        if opens_block and width == reference and not line.lstrip().startswith(BLOCK_CLOSERS):
            return index
    return None


def fence_end(lines: Sequence[str]) -> int | None:
    """Index of the first line that starts with a Markdown fence, None if none does."""
    return next((i for i, line in enumerate(lines) if line.lstrip().startswith(FENCE)), None)


def single_line_end(lines: Sequence[str]) -> int | None:
    """Index of the line after the first non-blank line, once that line is complete, else None."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    return first + 1 if first is not None and first + 1 < len(lines) else None


def truncation_point(lines: Sequence[str], context: CursorContext) -> int | None:
    """Where the completion ends when it may leave the cursor's line: scope end, chat fence, or
    (where `context.multi_line` is false) the end of its first non-blank line, the earliest."""
    ends = [scope_end(lines, context.line_before, context.line_above)]
    if not context.multi_line:
        ends.append(single_line_end(lines))
    if not context.fences:
        ends.append(fence_end(lines))
    found = [end for end in ends if end is not None]
    return min(found) if found else None


def limit_scope(text: str, line_before: str, line_above: str = "") -> str:
    lines = text.split("\n")
    end = scope_end(lines, line_before, line_above)
    return text if end is None else "\n".join(lines[:end])


# Rule 3: drop text that duplicates the start of the suffix.


def drop_suffix_overlap(line: str, line_after: str) -> str:
    """Drop the longest end of `line` that `line_after` starts with, if not only whitespace.

    `foo(|)` with completion `a, b)` gives `a, b`.
    """
    for size in range(min(len(line), len(line_after)), 0, -1):
        overlap = line_after[:size]
        if overlap.strip() and line.endswith(overlap):
            return line[:-size]
    return line


def duplicate_start(lines: Sequence[str], line_before: str, suffix_lines: Sequence[str]) -> int | None:
    """First index of the longest tail of `lines` that repeats the start of the suffix.

    A tail repeats it when its non-blank lines, stripped, equal the suffix's first non-blank
    lines (`suffix_lines`). The tail starts at a non-blank line. The first completion line is
    compared as it will read in the document, after `line_before`.

    For the complete lines of an unfinished completion, the same test finds the earliest line
    that could still turn out to be a duplicate once more lines follow.
    """
    stripped = [line.strip() for line in [line_before + lines[0], *lines[1:]]] if lines else []
    nonblank = [index for index, line in enumerate(stripped) if line]
    for position, start in enumerate(nonblank):
        tail = [stripped[index] for index in nonblank[position:]]
        if len(tail) <= len(suffix_lines) and tail == list(suffix_lines[: len(tail)]):
            return start
    return None


def drop_duplicate_suffix_lines(text: str, line_before: str, suffix_lines: Sequence[str]) -> str:
    lines = text.split("\n")
    start = duplicate_start(lines, line_before, suffix_lines)
    return text if start is None else "\n".join(lines[:start])


# Rules 4 and 5: the document's indentation and line endings; no whitespace-only suggestions.


def trim_trailing_whitespace(text: str) -> str:
    return text.rstrip()


def reindent(line: str, style: IndentStyle, unit: int) -> str:
    """Rewrite the leading whitespace of `line` in the document's style.

    Tabs: the width (tab = `TAB_WIDTH`) as tabs, the remainder as spaces. Spaces: each tab
    becomes `unit` spaces.
    """
    indent = leading_whitespace(line)
    if style == "tabs":
        if " " not in indent:
            return line
        width = indent_width(indent)
        converted = "\t" * (width // TAB_WIDTH) + " " * (width % TAB_WIDTH)
    else:
        if "\t" not in indent:
            return line
        converted = indent.replace("\t", " " * unit)
    return converted + line[len(indent) :]


def convert_indentation(
    text: str, style: IndentStyle | None, unit: int, *, first_line_is_indent: bool
) -> str:
    """Reindent every line; the first only when it starts the document line (blank before it)."""
    if style is None:
        return text
    lines = text.split("\n")
    for index in range(0 if first_line_is_indent else 1, len(lines)):
        lines[index] = reindent(lines[index], style, unit)
    return "\n".join(lines)


def to_line_endings(text: str, crlf: bool) -> str:
    return text.replace("\n", "\r\n") if crlf else text


def finish(text: str, context: CursorContext) -> str:
    """Steps 4 to 7 of the pipeline, on truncated and deduplicated text."""
    if not context.mid_line:
        text = trim_trailing_whitespace(text)
    text = convert_indentation(
        text,
        context.indent_style,
        context.indent_unit,
        first_line_is_indent=not context.line_before.strip(),
    )
    text = to_line_endings(text, context.crlf)
    return text if text.strip() else ""


# Public interface.


def _inserts_lines(context: CursorContext, text: str) -> bool:
    """The cursor is at the start of a line of code (only indentation before it) and the model
    wrote at least one whole line: the suggestion is lines inserted above that code, which keeps
    its place and indentation. A FIM middle that ends at a line start ends with a newline."""
    return context.mid_line and not context.line_before.strip() and "\n" in text


def _lines_above(text: str, context: CursorContext) -> str:
    """Rules 2 and 3 for `_inserts_lines`: whole lines, up to the scope end or a repeat of the suffix."""
    lines = text.split("\n")
    end = truncation_point(lines, context)
    text = text if end is None else "\n".join(lines[:end])
    return drop_duplicate_suffix_lines(text, context.line_before, context.suffix_lines)


def postprocess(raw: str, prefix: str, suffix: str) -> str:
    """The suggestion to insert at the cursor for the model output `raw`; "" for none."""
    context = analyse_context(prefix, suffix)
    text = normalise_newlines(raw)
    if _inserts_lines(context, text):
        body = "\n".join(_lines_above(text, context).rstrip("\n \t").split("\n"))
        body = finish(body, context)
        if not body:
            return ""
        # the cursor's line keeps its code, pushed down with the indentation it had
        return body + to_line_endings("\n", context.crlf) + context.line_before
    if context.mid_line:
        text = drop_suffix_overlap(first_line(text), context.line_after)
    else:
        lines = text.split("\n")
        end = truncation_point(lines, context)
        text = text if end is None else "\n".join(lines[:end])
        text = drop_duplicate_suffix_lines(text, context.line_before, context.suffix_lines)
    return finish(text, context)


def is_finished(raw: str, prefix: str, suffix: str) -> bool:
    """True when no continuation of `raw` can change `postprocess(raw, prefix, suffix)`.

    Mid-line: once the raw output has a line break, unless the cursor is at the start of its
    line (then whole lines are inserted above the code, as in multi-line mode). Multi-line:
    once a line that leaves the scope has a non-whitespace character.
    """
    context = analyse_context(prefix, suffix)
    text = normalise_newlines(raw)
    if context.mid_line and not _inserts_lines(context, text):
        return "\n" in text and bool(context.line_before.strip())
    return truncation_point(text.split("\n"), context) is not None


def stable_prefix(raw: str, prefix: str, suffix: str) -> str:
    """The start of the suggestion that no continuation of `raw` can change, for streaming.

    Finished: the whole suggestion. Mid-line: the line so far, less as many characters as the
    rest of the cursor line has (they could still be dropped as overlap), once what is left
    has non-whitespace. Multi-line (and whole lines inserted at a line start): the complete
    lines up to the last non-blank one that can no longer turn out to be a duplicate of the
    suffix, its trailing whitespace held back.
    Monotone: a longer `raw` never gives a shorter or different start.
    """
    if is_finished(raw, prefix, suffix):
        return postprocess(raw, prefix, suffix)
    context = analyse_context(prefix, suffix)
    text = normalise_newlines(raw)
    if context.mid_line and not _inserts_lines(context, text):
        if not context.line_before.strip():
            return ""  # a line start: until a newline, the text may still become a repeat of the line
        head = text[: max(0, len(text) - len(context.line_after))]
        return finish(head, context) if head.strip() else ""
    lines = text.split("\n")
    complete = lines[:-1]
    duplicate = duplicate_start(complete, context.line_before, context.suffix_lines)
    held = len(complete) if duplicate is None else duplicate
    end = max((index + 1 for index in range(held) if lines[index].strip()), default=0)
    stable = "\n".join(lines[:end])
    if _inserts_lines(context, text):
        stable = stable.rstrip()  # the final suggestion trims the body's end
        return finish(stable, context) if stable.strip() else ""
    return finish(stable, context)
