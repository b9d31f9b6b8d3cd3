"""LintSeq (Piterbarg et al., ICLR'25, "Training language models on synthetic edit sequences
improves code synthesis"): synthetic edit sequences sampled from a single file.

Backward sampling: starting from the whole file, delete one random line, then delete every line a
linter flags in what is left (an orphaned block body, a use of a name whose definition just went),
lint again until clean, and repeat until the file is empty. Read backwards, the states are a
sequence of insertions from an empty file to the whole one, every intermediate program lint-clean;
each step is rendered as a unified diff.

Linters (permissive licenses): pyflakes (MIT) for Python, error-class messages only (syntax errors,
undefined names; style and unused-import warnings are not errors); tree-sitter for the other
languages the index knows, flagging the lines of ERROR and MISSING nodes. Files that do not lint
clean to begin with are skipped (`LintSeqError`), as the paper does.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pyflakes import checker as pyflakes_checker
from pyflakes import messages as pyflakes_messages

from splice.retrieval.chunking import LANGUAGES, parser_for

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
Opcode = Literal["replace", "delete", "insert", "equal"]
Linter = Callable[[list[str]], set[int]]  # lines -> 0-based indexes of flagged lines

# pyflakes messages that make a program wrong, not just untidy.
_ERRORS: tuple[type, ...] = (
    pyflakes_messages.UndefinedName,
    pyflakes_messages.UndefinedLocal,
    pyflakes_messages.UndefinedExport,
    pyflakes_messages.DuplicateArgument,
    pyflakes_messages.ReturnOutsideFunction,
    pyflakes_messages.YieldOutsideFunction,
    pyflakes_messages.ContinueOutsideLoop,
    pyflakes_messages.BreakOutsideLoop,
    pyflakes_messages.DefaultExceptNotLast,
    pyflakes_messages.TwoStarredExpressions,
    pyflakes_messages.TooManyExpressionsInStarredAssignment,
)


class LintSeqError(ValueError):
    """The file cannot be sampled: it does not lint clean, or its language has no linter."""


def lint_python(lines: list[str]) -> set[int]:
    source = "".join(lines)
    if not source.strip():
        return set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning (invalid escapes) is no error
            tree = ast.parse(source)
    except SyntaxError as exc:
        line = (exc.lineno or len(lines)) - 1
        return {min(max(line, 0), len(lines) - 1)}
    except (ValueError, RecursionError):  # null bytes, absurd nesting: flag the last line
        return {len(lines) - 1}
    found = pyflakes_checker.Checker(tree, filename="<lintseq>")
    flagged = set()
    for message in found.messages:
        if isinstance(message, _ERRORS):
            flagged.add(min(max(int(getattr(message, "lineno", len(lines))) - 1, 0), len(lines) - 1))
    return flagged


def tree_sitter_linter(language: str) -> Linter:
    def lint(lines: list[str]) -> set[int]:
        src = "".join(lines).encode("utf-8")
        if not src.strip():
            return set()
        root = parser_for(language).parse(src).root_node
        if not root.has_error:
            return set()
        flagged: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if not node.has_error:
                continue
            if node.is_error or node.is_missing:
                flagged.add(min(node.start_point.row, len(lines) - 1))
                continue
            stack.extend(node.children)
        return flagged or {len(lines) - 1}

    return lint


def linter_for(language: str) -> Linter:
    if language == "python":
        return lint_python
    if language in LANGUAGES:
        return tree_sitter_linter(language)
    raise LintSeqError(f"no linter for {language!r}")


@dataclass(frozen=True)
class EditStep:
    """One insertion of a LintSeq sequence: `before` + `diff` = `after` (whole file texts)."""

    before: str
    after: str
    diff: str


def sample_states(text: str, language: str, rng: random.Random, max_lints: int = 5000) -> list[str]:
    """The backward-sampled states, from the whole `text` down to "" (each lints clean)."""
    lines, kept = _sample(text, language, rng, max_lints)
    return ["".join(lines[i] for i in ids) for ids in kept]


def _sample(
    text: str, language: str, rng: random.Random, max_lints: int
) -> tuple[list[str], list[list[int]]]:
    """The file's lines and, per state, the indexes of the lines it keeps (whole file first)."""
    lint = linter_for(language)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"  # a state is a list of whole lines; the last one gets its newline
    if lint(lines):
        raise LintSeqError("the file does not lint clean")
    ids = list(range(len(lines)))
    kept = [ids]
    lints = 0
    while ids:
        ids = ids[: (k := rng.randrange(len(ids)))] + ids[k + 1 :]
        while ids:
            lints += 1
            if lints > max_lints:
                raise LintSeqError(f"more than {max_lints} lint runs; file too large")
            flagged = lint([lines[i] for i in ids])
            if not flagged:
                break
            ids = [line for n, line in enumerate(ids) if n not in flagged]
        kept.append(ids)
    return lines, kept


class _Insertions(difflib.SequenceMatcher):
    """Opcodes of an insertion-only change, known exactly from the kept line indexes (a matcher
    could align repeated lines, blank ones above all, as a deletion plus an insertion)."""

    def __init__(self, before: list[int], after: list[int]) -> None:
        super().__init__(None, [], [])
        old = set(before)
        codes: list[tuple[Opcode, int, int, int, int]] = []
        i = 0
        for j, line in enumerate(after):
            tag: Opcode = "equal" if line in old else "insert"
            if codes and codes[-1][0] == tag:
                t, i1, i2, j1, _ = codes[-1]
                codes[-1] = (t, i1, i2 + (tag == "equal"), j1, j + 1)
            else:
                codes.append((tag, i, i + (tag == "equal"), j, j + 1))
            i += tag == "equal"
        self.opcodes = codes or [("equal", 0, 0, 0, 0)]

    def get_opcodes(self) -> list[tuple[Opcode, int, int, int, int]]:
        return list(self.opcodes)


def unified_diff(before: str, after: str, path: str = "file", context: int = 2) -> str:
    """A unified diff of two texts (difflib's matcher, without its junk heuristic)."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    return _render(difflib.SequenceMatcher(None, a, b, autojunk=False), a, b, path, context)


def _render(
    matcher: difflib.SequenceMatcher[str], a: list[str], b: list[str], path: str, context: int
) -> str:
    out = [f"--- a/{path}\n", f"+++ b/{path}\n"]
    for group in matcher.get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@\n")
        for tag, x1, x2, y1, y2 in group:
            if tag == "equal":
                out.extend(" " + line for line in a[x1:x2])
                continue
            out.extend("-" + line for line in a[x1:x2])
            out.extend("+" + line for line in b[y1:y2])
    return "".join(out) if len(out) > 2 else ""


def _range(start: int, length: int) -> str:
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def edit_sequence(text: str, language: str, rng: random.Random, path: str = "file") -> list[EditStep]:
    """One LintSeq sample of `text`: insertions from "" to the whole (newline-terminated) file."""
    lines, kept = _sample(text, language, rng, max_lints=5000)
    kept = kept[::-1]
    steps = []
    for old, new in itertools.pairwise(kept):
        a, b = [lines[i] for i in old], [lines[i] for i in new]
        diff = _render(_Insertions(old, new), a, b, path, context=2)
        steps.append(EditStep(before="".join(a), after="".join(b), diff=diff))
    return steps


def apply_unified_diff(text: str, diff: str) -> str:
    """Apply a unified diff (one file: `unified_diff`'s, or a real history's) to `text`; ValueError
    if a hunk does not match."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    cursor = 0
    body = diff.splitlines(keepends=True)
    i = 0
    while i < len(body):
        m = HUNK.match(body[i])
        i += 1
        if not m:
            continue
        start = int(m.group(1)) - (0 if m.group(2) == "0" else 1)
        out.extend(lines[cursor:start])
        cursor = start
        while i < len(body) and not body[i].startswith("@@"):
            tag, content = body[i][:1], body[i][1:]
            i += 1
            if tag == "\\":  # "\ No newline at end of file"
                if out and out[-1].endswith("\n"):
                    out[-1] = out[-1][:-1]
                continue
            if tag in (" ", "-"):
                if cursor >= len(lines) or lines[cursor].rstrip("\r\n") != content.rstrip("\r\n"):
                    raise ValueError(f"hunk does not match at line {cursor + 1}")
                if tag == " ":
                    out.append(lines[cursor])
                cursor += 1
            elif tag == "+":
                out.append(content)
    out.extend(lines[cursor:])
    return "".join(out)
