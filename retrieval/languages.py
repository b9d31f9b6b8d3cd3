"""Which language a source file is in, from its name: the one table the walker, the chunker and
the index share. A language here is one that has a tree-sitter grammar in `splice.retrieval.chunking`."""

from __future__ import annotations

from pathlib import PurePosixPath

LANGUAGES = ("python", "javascript", "typescript", "tsx", "java", "go", "rust", "c", "cpp")

EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",  # the C grammar parses most C++ headers' declarations too; see language_for_path
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".ipp": "cpp",
    ".inl": "cpp",
}

# `--languages` accepts these families; typescript includes tsx and cpp includes C headers.
FAMILIES: dict[str, tuple[str, ...]] = {
    "python": ("python",),
    "javascript": ("javascript",),
    "typescript": ("typescript", "tsx"),
    "java": ("java",),
    "go": ("go",),
    "rust": ("rust",),
    "c": ("c",),
    "cpp": ("cpp", "c"),
}

# Markers that make a `.h` file C++ rather than C (checked in the first 64 KB).
_CPP_HEADER_MARKERS = (b"namespace ", b"template<", b"template <", b"class ", b"public:", b"std::", b"::")


def language_for_path(path: str, head: bytes | None = None) -> str | None:
    """The language of `path` (a relative POSIX path), or None when no grammar handles it.
    `head`, the start of the file, lets a `.h` file that is really C++ be parsed as C++."""
    suffix = PurePosixPath(path).suffix.lower()
    language = EXTENSIONS.get(suffix)
    if language == "c" and suffix == ".h" and head is not None:
        sample = head[:65536]
        if any(marker in sample for marker in _CPP_HEADER_MARKERS):
            return "cpp"
    return language


def expand_languages(names: list[str] | tuple[str, ...] | None) -> frozenset[str] | None:
    """`--languages python,go` -> the grammar names to index; None means every language."""
    if not names:
        return None
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown language(s) {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    return frozenset(lang for n in names for lang in FAMILIES[n])
