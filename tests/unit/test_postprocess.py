"""Tests for `splice.completion.postprocess`: golden cases, streaming properties, helpers.

Golden files `tests/unit/golden/postprocess/*.txt` hold one or more cases each:

    # comment lines, before the first case
    === case name
    --- document
    the document, the cursor marked by ║ (exactly once)
    --- raw
    the model's output
    --- expected
    the suggestion ("" when the section is empty)

A section's text is its lines joined by "\\n", without its trailing empty lines (they separate
cases). Markers spell out invisible characters: ␍ = "\\r" (write `line␍` for a CRLF line),
⇥ = "\\t", ␣ = " " (for trailing spaces), ␤ = "\\n" (for a trailing line break). Files are read
as text with universal newlines, so real "\\r" bytes would not survive: use ␍.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.completion.postprocess import (
    allows_multi_line,
    analyse_context,
    convert_indentation,
    detect_indentation,
    drop_duplicate_suffix_lines,
    drop_suffix_overlap,
    duplicate_start,
    first_line,
    indent_width,
    is_finished,
    limit_scope,
    normalise_newlines,
    postprocess,
    reindent,
    scope_end,
    stable_prefix,
    to_line_endings,
    trim_trailing_whitespace,
    uses_crlf,
)

GOLDEN_DIR = Path(__file__).parent / "golden" / "postprocess"
CURSOR = "║"
MARKERS = {"␍": "\r", "⇥": "\t", "␣": " ", "␤": "\n"}
SECTIONS = ("document", "raw", "expected")


@dataclass(frozen=True)
class GoldenCase:
    id: str
    prefix: str
    suffix: str
    raw: str
    expected: str


def _section_text(lines: list[str]) -> str:
    while lines and not lines[-1]:
        lines.pop()
    text = "\n".join(lines)
    for marker, char in MARKERS.items():
        text = text.replace(marker, char)
    return text


def load_golden(path: Path) -> list[GoldenCase]:
    cases: list[GoldenCase] = []
    name: str | None = None
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None

    def flush() -> None:
        if name is None:
            return
        if sorted(sections) != sorted(SECTIONS):
            raise ValueError(f"{path.name}: case {name!r} needs sections {SECTIONS}, has {list(sections)}")
        document = _section_text(sections["document"])
        if document.count(CURSOR) != 1:
            raise ValueError(f"{path.name}: case {name!r} must mark the cursor exactly once")
        prefix, suffix = document.split(CURSOR)
        raw, expected = _section_text(sections["raw"]), _section_text(sections["expected"])
        cases.append(GoldenCase(f"{path.stem}: {name}", prefix, suffix, raw, expected))

    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("=== "):
            flush()
            name, sections, current = line[4:].strip(), {}, None
        elif line.startswith("--- "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    flush()
    return cases


GOLDEN_CASES = [case for path in sorted(GOLDEN_DIR.glob("*.txt")) for case in load_golden(path)]


def test_golden_files_are_found() -> None:
    assert len(GOLDEN_CASES) >= 30
    assert len({case.id for case in GOLDEN_CASES}) == len(GOLDEN_CASES)


def test_golden_loader_translates_markers(tmp_path: Path) -> None:
    path = tmp_path / "case.txt"
    path.write_text("# header\n=== one\n--- document\na␍\n⇥║b\n--- raw\nx␣␤\n\n--- expected\n\n", "utf-8")
    [case] = load_golden(path)
    assert (case.id, case.prefix, case.suffix) == ("case: one", "a\r\n\t", "b")
    assert (case.raw, case.expected) == ("x \n", "")


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda case: case.id)
def test_golden(case: GoldenCase) -> None:
    assert postprocess(case.raw, case.prefix, case.suffix) == case.expected


def check_streaming(raw: str, prefix: str, suffix: str) -> None:
    """The streaming contract at every split point of `raw`."""
    final = postprocess(raw, prefix, suffix)
    previous = ""
    finished = False
    for split in range(len(raw) + 1):
        head = raw[:split]
        stable = stable_prefix(head, prefix, suffix)
        assert final.startswith(stable), (split, stable, final)
        assert postprocess(head, prefix, suffix).startswith(stable), (split, stable)
        assert stable.startswith(previous), (split, previous, stable)
        if is_finished(head, prefix, suffix):
            finished = True
            assert postprocess(head, prefix, suffix) == final, split
        else:
            assert not finished, f"is_finished went back to False at {split}"
        previous = stable


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda case: case.id)
def test_golden_streaming(case: GoldenCase) -> None:
    check_streaming(case.raw, case.prefix, case.suffix)


TOKENS = [
    "\n", "\r\n", "\r", "\t", " ", "    ", "\n    ", "\n\t", "x", "y = 1", "é", "日本", "🌸", "\xa0",
    "(", ")", "{", "}", "]", ":", ",", "return", "def f():",
]  # fmt: skip


@st.composite
def completion_cases(draw: st.DrawFn) -> tuple[str, str, str]:
    """Random (prefix, suffix, raw); raw also reuses lines and line starts of the suffix."""
    text = st.lists(st.sampled_from(TOKENS), max_size=12).map("".join)
    prefix, suffix = draw(text), draw(text)
    suffix_lines = [line for line in normalise_newlines(suffix).split("\n") if line]
    rest = normalise_newlines(suffix).split("\n", 1)[0]
    reused = suffix_lines + [rest[:size] for size in range(1, len(rest) + 1)]
    raw = draw(st.lists(st.sampled_from(TOKENS + reused), max_size=24).map("".join))
    return prefix, suffix, raw


@settings(max_examples=400, deadline=None)
@given(completion_cases())
def test_streaming_contract_on_random_text(case: tuple[str, str, str]) -> None:
    prefix, suffix, raw = case
    check_streaming(raw, prefix, suffix)
    result = postprocess(raw, prefix, suffix)
    assert result == "" or result.strip()
    if analyse_context(prefix, suffix).crlf:
        assert result.count("\n") == result.count("\r\n")
    else:
        assert "\r" not in result


# Streaming: specific values, so the properties above cannot pass by always answering "" / False.


def test_stable_prefix_multi_line_holds_back_incomplete_and_trailing_blank_lines() -> None:
    prefix, suffix = "def f():\n    ", "\n"
    assert stable_prefix("a = 1\n    b = ", prefix, suffix) == "a = 1"
    assert stable_prefix("a = 1  \n    b = 2\n\n", prefix, suffix) == "a = 1  \n    b = 2"
    assert stable_prefix("a = 1", prefix, suffix) == ""


def test_stable_prefix_holds_back_possible_suffix_duplicates() -> None:
    # between two statements: one line, dropped when it repeats the next line
    prefix, suffix = "def f():\n    a = 1\n    ", "\n    x = 2\n    return x\n"
    assert stable_prefix("x = 2", prefix, suffix) == ""
    assert stable_prefix("x = 2\n", prefix, suffix) == postprocess("x = 2\n", prefix, suffix) == ""
    assert stable_prefix("y = 3\n", prefix, suffix) == "y = 3"
    # at the start of an empty block: whole lines, up to the end of the block
    prefix, suffix = "if a:\n    f()\nelse:\n    ", "\nx = 2\n"
    assert stable_prefix("g()\n    h()\n", prefix, suffix) == "g()\n    h()"
    assert stable_prefix("g()\n    h()\nx = 2", prefix, suffix) == "g()\n    h()"


def test_multi_line_only_at_the_end_or_at_an_empty_block() -> None:
    assert allows_multi_line("x = 1", "", "")  # nothing follows
    assert allows_multi_line("", "def f():", "\n\n")
    assert allows_multi_line("def f():", "", "\n\ndef g():\n")  # the block has no body yet
    assert allows_multi_line("function f() {", "", "\n}\n")
    assert allows_multi_line("        ", "    def f(self):", "\n    \n    def g(self):\n")
    assert not allows_multi_line("def f():", "", "\n    return 1\n")  # the body exists
    assert not allows_multi_line("    ", "a = 1", "\n    b = 2\n")  # between two statements
    assert not allows_multi_line("    ", "def f():", "return 1\n")  # code on the cursor's line, indented
    assert allows_multi_line("", "def f():", "pass_at_column_0()\n")
    raw = "a = 1\n    b = 2\n"
    assert postprocess(raw, "def f():\n    ", "\n\nf()\n") == "a = 1\n    b = 2"
    assert postprocess(raw, "def f():\n    ", "\n    return b\n") == "a = 1"


def test_stable_prefix_mid_line_holds_back_rest_of_line_length() -> None:
    assert stable_prefix("abc", "f(", ")") == "ab"
    assert stable_prefix("abc", "f(", "))") == "a"
    assert stable_prefix(" ", "f(", ")") == ""
    assert stable_prefix("abc)\nmore", "f(", ")") == "abc"


def test_is_finished() -> None:
    assert not is_finished("abc", "f(", ")")
    assert is_finished("abc\n", "f(", ")")
    assert not is_finished("return 1\n\n", "def f():\n    ", "")
    assert not is_finished("return 1\n  ", "def f():\n    ", "")
    assert is_finished("return 1\n\nd", "def f():\n    ", "")
    assert is_finished("\n    return 1\nx", "def f():", "")


def test_cursor_inside_crlf_reads_as_end_of_line() -> None:
    context = analyse_context("x = 1\r", "\ny = 2\r\n")
    assert (context.line_before, context.line_after, context.mid_line) == ("x = 1", "", False)
    assert postprocess("\nz = 3", "x = 1\r", "\ny = 2\r\n") == "\r\nz = 3"


# Helpers.


def test_normalise_newlines() -> None:
    assert normalise_newlines("a\r\nb\rc\n") == "a\nb\nc\n"
    assert normalise_newlines("a\r") == "a\n"


def test_indent_width_counts_tab_as_four() -> None:
    assert indent_width("    x") == 4
    assert indent_width("\t\tx") == 8
    assert indent_width(" \t x") == 6
    assert indent_width("x  ") == 0
    assert indent_width("   ") == 3


def test_uses_crlf_by_majority() -> None:
    assert uses_crlf("a\r\nb\r\nc\n")
    assert not uses_crlf("a\r\nb\nc\n")
    assert not uses_crlf("")


def test_detect_indentation() -> None:
    assert detect_indentation(["if a:", "\tb", "\tif c:", "\t\td"]) == ("tabs", 4)
    assert detect_indentation(["f {", "  a", "  g {", "    b", "  }", "}"]) == ("spaces", 2)
    assert detect_indentation(["x", "", "y"]) == (None, 4)
    assert detect_indentation(["a", "\tb", "  c"]) == (None, 4)


def test_analyse_context() -> None:
    context = analyse_context("a\r\n  b = f(", ")\r\nc\r\n\r\n  d\r\n")
    assert (context.line_before, context.line_after) == ("  b = f(", ")")
    assert context.mid_line
    assert context.suffix_lines == (")", "c", "d")
    assert (context.crlf, context.indent_style, context.indent_unit) == (True, "spaces", 2)
    assert not analyse_context("", "").mid_line


def test_first_line() -> None:
    assert first_line("a\nb") == "a"
    assert first_line("\nb") == ""
    assert first_line("a") == "a"


def test_scope_end_reference_from_cursor_line() -> None:
    assert scope_end(["return 1", "", "def g():"], "    ") == 2
    assert scope_end(["return 1", "    x", "        y"], "    ") is None
    assert scope_end(["x", "  }"], "    if (a) ") == 1  # cursor line "    if (a) x" is indented 4


def test_scope_end_blank_cursor_line_uses_first_code_line() -> None:
    assert scope_end(["", "", "    a", "    b", "c"], "") == 4
    assert scope_end(["", "  ", "    a"], "  ") is None
    assert scope_end(["", "   "], "") is None


def test_scope_end_after_block_opener() -> None:
    assert scope_end(["", "    body", "", "def g():"], "def f():") == 3
    assert scope_end(["", "  a;", "} else {", "  b;", "}", "c();"], "if (x) {") == 5
    assert scope_end(["", "    a,", ")", "b"], "call(") == 3
    # The opener belongs to the completion: a line back at its indent stays.
    assert scope_end([" {", "  a;", "}"], "if (x)") is None


def test_scope_end_with_tabs_and_spaces() -> None:
    assert scope_end(["a", "    b", "\t", "c"], "\t") == 3
    assert scope_end(["a", "   b"], "\t") == 1


def test_limit_scope() -> None:
    assert limit_scope("return 1\n\ndef g():\n", "    ") == "return 1\n"
    assert limit_scope("a\nb", "") == "a\nb"
    assert limit_scope("", "x") == ""


def test_drop_suffix_overlap() -> None:
    assert drop_suffix_overlap("a, b)", ")") == "a, b"
    assert drop_suffix_overlap("a)) {", ")) {") == "a"
    assert drop_suffix_overlap("a)", "))") == "a"
    assert drop_suffix_overlap("a ", " )") == "a "
    assert drop_suffix_overlap("a", ")") == "a"
    assert drop_suffix_overlap("", ")") == ""


def test_duplicate_start() -> None:
    assert duplicate_start(["a", "b", "", "c"], "", ["b", "c", "d"]) == 1
    assert duplicate_start(["a", "b"], "", ["c"]) is None
    assert duplicate_start(["b", "b"], "", ["b", "b"]) == 0
    # The first line is compared as it reads after the text before the cursor.
    assert duplicate_start(["1"], "x = ", ["1"]) is None
    assert duplicate_start(["return x"], "    ", ["return x"]) == 0
    assert duplicate_start([], "", ["a"]) is None


def test_drop_duplicate_suffix_lines() -> None:
    assert drop_duplicate_suffix_lines("a\n  }\n", "", ["}", "x"]) == "a"
    assert drop_duplicate_suffix_lines("a\nb", "", ["c"]) == "a\nb"
    assert drop_duplicate_suffix_lines("a\n\nb\n", "", ["b"]) == "a\n"


def test_trim_trailing_whitespace() -> None:
    assert trim_trailing_whitespace(" a \n\n \n") == " a"
    assert trim_trailing_whitespace("\n  a") == "\n  a"


def test_reindent() -> None:
    assert reindent("        x", "tabs", 4) == "\t\tx"
    assert reindent("      x", "tabs", 4) == "\t  x"
    assert reindent("\t\tx", "tabs", 4) == "\t\tx"
    assert reindent("\t\tx", "spaces", 2) == "    x"
    assert reindent("  \tx", "spaces", 4) == "      x"
    assert reindent("    x", "spaces", 2) == "    x"


def test_convert_indentation() -> None:
    text = "    a\n    b"
    assert convert_indentation(text, "tabs", 4, first_line_is_indent=False) == "    a\n\tb"
    assert convert_indentation(text, "tabs", 4, first_line_is_indent=True) == "\ta\n\tb"
    assert convert_indentation(text, None, 4, first_line_is_indent=True) == text


def test_to_line_endings() -> None:
    assert to_line_endings("a\nb", crlf=True) == "a\r\nb"
    assert to_line_endings("a\nb", crlf=False) == "a\nb"


def test_postprocess_whitespace_only_and_first_line_space() -> None:
    assert postprocess(" \n\t\n", "x =", "") == ""
    assert postprocess(" 1\n", "x =", "") == " 1"
    assert postprocess("", "", "") == ""
