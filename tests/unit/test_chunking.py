"""Tree-sitter chunking, per language, against golden outlines.

Each source in `golden/chunking/` has a `.outline` file next to it: every chunk (kind, qualified
name, lines, signature, then its text, which shows a container's skeleton) and every import. The
expected files were written by the chunker and then read line by line; after an intended change,
regenerate them with `SPLICE_UPDATE_GOLDEN=1 pytest tests/unit/test_chunking.py` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splice.retrieval.chunking import Outline, parse_outline
from splice.retrieval.languages import LANGUAGES, language_for_path

GOLDEN = Path(__file__).parent / "golden" / "chunking"
SOURCES = sorted(p for p in GOLDEN.iterdir() if p.suffix != ".outline")


def render(outline: Outline) -> str:
    out = []
    for c in outline.chunks:
        out.append(f"{c.kind} {c.qualname or '-'} {c.start_line}-{c.end_line} | {c.signature}")
        out += [f"    |{line}" for line in c.text.split("\n")]
    for i in outline.imports:
        names = ", ".join(f"{n} as {loc}" if n != loc else n for n, loc in i.names)
        out.append(
            f"import {i.module!r} [{names}] local={i.local!r} line={i.line} level={i.level} system={i.system}"
        )
    return "\n".join(out) + "\n"


def _outline(source: Path) -> Outline:
    language = language_for_path(source.name, source.read_bytes())
    assert language is not None, source
    return parse_outline(source.read_text(encoding="utf-8"), language)


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_outline_matches_golden(source: Path) -> None:
    expected = source.with_name(source.name + ".outline")
    got = render(_outline(source))
    if os.environ.get("SPLICE_UPDATE_GOLDEN"):
        expected.write_text(got, encoding="utf-8")
    assert expected.is_file(), f"no golden outline for {source.name}; run with SPLICE_UPDATE_GOLDEN=1"
    assert got == expected.read_text(encoding="utf-8")


def test_every_language_has_a_golden_source() -> None:
    covered = {language_for_path(p.name, p.read_bytes()) for p in SOURCES}
    assert covered == set(LANGUAGES)


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_chunk_text_is_the_source_at_its_lines(source: Path) -> None:
    """A chunk's text is its lines of the file (a container's text with member bodies elided)."""
    lines = source.read_text(encoding="utf-8").split("\n")
    for chunk in _outline(source).chunks:
        assert 0 <= chunk.start_line <= chunk.end_line < len(lines)
        original = "\n".join(lines[chunk.start_line : chunk.end_line + 1])
        if "..." not in chunk.text:
            assert chunk.text.strip() in original, chunk
        assert chunk.text.split("\n")[0].strip() in original.split("\n")[0], chunk


def test_definitions_have_names_and_blocks_do_not() -> None:
    for source in SOURCES:
        for chunk in _outline(source).chunks:
            assert bool(chunk.name) == (chunk.kind not in ("header", "block")), chunk


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("text", ["", "\n\n", "def (", "class {", "}}}{{{", "import", "#include", "é😀\x00"])
def test_broken_or_empty_sources_do_not_crash(language: str, text: str) -> None:
    outline = parse_outline(text, language)
    assert all(c.start_line <= c.end_line for c in outline.chunks)


def test_unknown_language_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no grammar for 'cobol'"):
        parse_outline("x", "cobol")
