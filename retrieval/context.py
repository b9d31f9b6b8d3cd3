"""Context assembly: the repository snippets a completion at a cursor should see.

Sources, in order of trust:
1. **Definitions** of identifiers used or imported near the cursor. The current buffer is
   parsed (unsaved text included); each import is resolved through the import graph
   (`splice.retrieval.resolve`) to the defining chunk in the imported file, following
   re-exports (`from ._models import Request` in a package `__init__`); `module.name` accesses
   resolve `name` in the module's file. Identifiers that no import explains are looked up in
   the symbol table: files the buffer imports or includes first, then its own folder (Go and
   Java packages), then the whole repository when the name is rare.
2. **Recently edited regions** of other files (the chunk around each edit).
3. **Similar chunks**: BM25 over identifier sub-tokens of the lines before the cursor.

A name's weight is its use near the cursor (each occurrence decays with distance in lines)
plus a bonus for names imported but not yet used, which the code below is about to use. The
candidates are deduplicated (by chunk and by near-identical text), ranked, and cut to a token
budget. `ContextSlots` then keeps the prompt stable between requests of one document.
"""

from __future__ import annotations

import math
import posixpath
import re
import textwrap
import time
import weakref
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .chunking import Outline, parse_outline
from .indexer import RepositoryIndex
from .languages import language_for_path
from .store import StoredChunk, StoredImport
from .tokens import IDENTIFIER, is_meaningful, split_identifier, text_terms

TokenCounter = Callable[[str], int]

# editor language ids that differ from grammar names
_EDITOR_LANGUAGES = {"typescriptreact": "tsx", "javascriptreact": "javascript", "c++": "cpp", "golang": "go"}
_LINE_COMMENT = {"python": "#"}


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (code averages ~3.3 characters per BPE token)."""
    return max(1, math.ceil(len(text) / 3.3))


@dataclass(frozen=True, slots=True)
class Snippet:
    """One piece of context. `key` identifies it across requests (path + symbol or lines)."""

    key: str
    path: str
    start_line: int
    end_line: int
    text: str
    source: str  # "definition" | "recent_edit" | "similar"
    name: str
    score: float
    chunk_ids: tuple[int, ...] = ()  # the indexed chunks whose text the snippet shows
    names: tuple[str, ...] = ()  # the definitions it shows, best first (definition snippets)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "source": self.source,
            "name": self.name,
            "names": list(self.names or (self.name,)),
            "score": round(self.score, 4),
            "text": self.text,
        }


@dataclass(frozen=True)
class ContextOptions:
    window_lines: int = 40  # lines before the cursor whose identifiers count
    suffix_lines: int = 10  # ... and after it
    decay_lines: float = 12.0  # an occurrence this far from the cursor weighs 1/e
    max_definitions: int = 48
    max_similar: int = 8
    max_recent: int = 4
    max_snippet_lines: int = 60  # longer chunks are cut (signature and first lines kept)
    whole_definitions: int = 0  # per file, this many best definitions shown whole (when short)
    summary_lines: int = 6  # the others: a signature, or a skeleton cut to this many lines
    group_bonus: float = 0.1  # a file's other definitions add this fraction of their scores
    rare_name_limit: int = 3  # a name defined in more files than this is not looked up globally
    file_weight: float = 0.15  # each e-fold of uses anywhere in the file's body
    unused_import_bonus: float = 0.5  # a name imported but not used yet
    overlap_bonus: float = 0.4  # ... times its word overlap with the last lines typed
    qualified_bonus: float = 0.05  # `module.name` is explicit
    cooccurrence_chunks: int = 16  # similar chunks whose names count as likely next
    cooccurrence_weight: float = 0.5  # ... weighted by their BM25 score relative to the best
    cooccurrence_names: int = 12  # names found only there that are looked up
    cooccurrence_min: float = 0.5
    module_api_names: int = 16  # a package imported whole and used (`click.x`): its most used exports
    module_api_weight: float = 0.25  # ... weighted by their use across the repository
    popularity_refresh_s: float = 60.0  # how stale that repository-wide count may get


@dataclass
class _Candidate:
    name: str
    weight: float  # use near the cursor
    prior: float  # how sure the resolution is
    chunks: list[StoredChunk]


class _Usage:
    """How much each identifier is used around the cursor: occurrences in the window before it
    (and a few lines after) decay with distance; every use in the file's body adds a little."""

    def __init__(self, window: list[str], after: list[str], body: list[str], opts: ContextOptions) -> None:
        self.bare: dict[str, float] = defaultdict(float)
        self.qualified: dict[tuple[str, str], float] = defaultdict(float)  # (module local, name)
        lines = [(len(window) - 1 - i, line) for i, line in enumerate(window)]
        lines += [(i + 1, line) for i, line in enumerate(after)]
        for distance, line in lines:
            w = math.exp(-distance / opts.decay_lines)
            for m in _QUALIFIED.finditer(line):
                self.qualified[(m.group(1), m.group(2))] += w
            for m in IDENTIFIER.finditer(line):
                self.bare[m.group(0)] += w
        self.counts: Counter[str] = Counter()
        qualified_counts: Counter[tuple[str, str]] = Counter()
        for line in body:
            self.counts.update(IDENTIFIER.findall(line))
            qualified_counts.update(_QUALIFIED.findall(line))
        for name, n in self.counts.items():
            self.bare[name] += opts.file_weight * math.log1p(n)
        self.module_uses: Counter[str] = Counter()  # `module.x` uses in the body, per module
        for pair, n in qualified_counts.items():
            self.qualified[pair] += opts.file_weight * math.log1p(n)
            self.module_uses[pair[0]] += n

    def weight(self, name: str) -> float:
        return self.bare.get(name, 0.0)

    def used(self, name: str) -> bool:
        return self.counts.get(name, 0) > 0


# per index: (store version, when counted, name -> files that use it)
_POPULARITY: weakref.WeakKeyDictionary[RepositoryIndex, tuple[int, float, Counter[str]]] = (
    weakref.WeakKeyDictionary()
)

_RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
_QUALIFIED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\.|::|->)\s*([A-Za-z_][A-Za-z0-9_]*)")


_CONTAINERS = frozenset({"class", "struct", "interface", "trait", "impl", "enum", "namespace", "module"})
_SHORT_LINES = 6


def compact_definition(chunk: StoredChunk, whole: bool = False, max_lines: int = 12) -> str:
    """A definition as an API summary shows it: whole when short (or `whole` and under 30
    lines), a container's skeleton cut to `max_lines`, a function's signature with its body
    elided (`...` in Python, `{ ... }` in brace languages)."""
    text = textwrap.dedent(chunk.text).strip("\n")
    n = text.count("\n") + 1
    if n <= _SHORT_LINES or (whole and n <= 30):
        return text
    if chunk.kind in _CONTAINERS:
        return _clip(_without_docs(text, chunk.language == "python"), max_lines)
    if chunk.kind in ("function", "method"):
        return _signature_only(text, chunk.language == "python") or _clip(text, max_lines)
    return _clip(text, max_lines)


_DOCSTRING = re.compile(r'^[ \t]*[rbuRBU]?("""|\'\'\')[\s\S]*?\1[ \t]*\n', re.MULTILINE)
_BLOCK_COMMENT = re.compile(r"^[ \t]*/\*[\s\S]*?\*/[ \t]*\n", re.MULTILINE)


def _without_docs(text: str, python: bool) -> str:
    """A skeleton without its docstrings, comment lines and blank lines: the members' signatures
    and fields are what an API summary is for. The first line (the header) always stays."""
    head, _, rest = text.partition("\n")
    rest = (_DOCSTRING if python else _BLOCK_COMMENT).sub("", rest + "\n")
    marker = "#" if python else "//"
    kept = [line for line in rest.split("\n") if line.strip() and not line.strip().startswith(marker)]
    return "\n".join([head, *kept])


def _signature_only(text: str, python: bool) -> str:
    """The lines of a function up to its body (decorators and multi-line parameters kept), the
    body elided; '' when no body start is found within 12 lines."""
    lines = text.split("\n")
    for i, line in enumerate(lines[:12]):
        code = line.split("#")[0].rstrip() if python else line.split("//")[0].rstrip()
        if python and code.endswith(":") and not code.lstrip().startswith("@"):
            return "\n".join([*lines[:i], code + " ..."])
        if not python and "{" in code:
            return "\n".join([*lines[:i], code[: code.index("{")].rstrip() + " { ... }"])
    return ""


def _cooccurrence(hits: Sequence[tuple[StoredChunk, float]], limit: int) -> dict[str, float]:
    """name -> sum over the best `limit` similar chunks that use it of their relative score."""
    if not hits:
        return {}
    best = hits[0][1] or 1.0
    uses: dict[str, float] = defaultdict(float)
    for chunk, score in hits[:limit]:
        for name in set(IDENTIFIER.findall(chunk.text)):
            if name != chunk.name:
                uses[name] += score / best
    return uses


def _overlap(name: str, terms: set[str]) -> float:
    """Jaccard overlap of a name's sub-tokens with `terms`."""
    parts = {p for p in split_identifier(name) if len(p) > 1}
    if not parts or not terms:
        return 0.0
    return len(parts & terms) / len(parts | terms)


def bound_names(text: str) -> set[str]:
    """Names `text` binds itself, by their shape in any of the indexed languages: assignment and
    annotation targets (`x =`, `x :=`, `x: T`), loop and `as` targets, and function parameters.
    Such a name near the cursor is a local, not a reference to another file."""
    bound = set(_ASSIGNED.findall(text)) | set(_LOOP_OR_AS.findall(text))
    for params in _PARAMETERS.findall(text):
        bound |= {m.group(0) for m in IDENTIFIER.finditer(params)}
    return bound


_ASSIGNED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*(?:=(?!=)|:=|:(?!:))")
_LOOP_OR_AS = re.compile(r"\b(?:for|as)\s+([A-Za-z_]\w*)")
_PARAMETERS = re.compile(r"\b(?:def|function|func|fn)\s*\w*\s*\(([^()]*)\)")


def _language(path: str | None, language: str | None) -> str | None:
    if language:
        language = _EDITOR_LANGUAGES.get(language, language)
    if path:
        return language_for_path(path) or language
    return language


def _clip(text: str, max_lines: int) -> str:
    lines = text.split("\n")
    if len(lines) <= max_lines:
        return text
    return "\n".join([*lines[:max_lines], "..."])


class ContextAssembler:
    """Ranks snippets from one repository for a cursor in one of its files."""

    def __init__(self, index: RepositoryIndex, options: ContextOptions | None = None) -> None:
        self.index = index
        self.options = options or ContextOptions()

    # -- public ---------------------------------------------------------------------------

    def candidates(
        self, path: str | None, prefix: str, suffix: str = "", language: str | None = None
    ) -> list[Snippet]:
        """Every snippet worth showing, best first (not yet cut to a budget)."""
        lang = _language(path, language)
        current = path or ""
        similar = self._similar_hits(current, prefix)
        snippets: list[Snippet] = []
        if lang is not None:
            snippets += self._definitions(current, lang, prefix, suffix, similar)
        snippets += self._recent(current)
        snippets += self._similar(similar)
        return _dedupe(snippets)

    def assemble(
        self,
        path: str | None,
        prefix: str,
        suffix: str = "",
        language: str | None = None,
        budget_tokens: int = 1024,
        count_tokens: TokenCounter = approx_tokens,
        render: Callable[[Snippet], str] | None = None,
    ) -> list[Snippet]:
        """The best snippets whose rendering fits `budget_tokens`, best first."""
        chosen: list[Snippet] = []
        used = 0
        for snippet in self.candidates(path, prefix, suffix, language):
            cost = count_tokens(render(snippet) if render else snippet.text)
            if used + cost > budget_tokens:
                continue  # a smaller one further down may still fit
            chosen.append(snippet)
            used += cost
        return chosen

    # -- definitions ----------------------------------------------------------------------

    def _definitions(
        self,
        path: str,
        lang: str,
        prefix: str,
        suffix: str,
        similar: Sequence[tuple[StoredChunk, float]] = (),
    ) -> list[Snippet]:
        opts = self.options
        store = self.index.store
        resolver = self.index.resolver
        outline = _parse(prefix + suffix, lang)
        local_names = {c.name for c in outline.chunks if c.name}
        header_end = next((c.end_line for c in outline.chunks if c.kind == "header"), -1)
        before = prefix.split("\n")
        body = before[header_end + 1 :]
        window = before[-opts.window_lines :]
        after = suffix.split("\n")[: opts.suffix_lines]
        usage = _Usage(window, after, body, opts)
        bound = bound_names("\n".join(window))  # parameters and local variables near the cursor
        recent_terms = set(text_terms("\n".join(before[-3:])))

        imports = [
            StoredImport(i.module, n, loc, i.line, i.level, i.system)
            for i in outline.imports
            for n, loc in (i.names or (("", i.local),))
        ]
        found: dict[int, _Candidate] = {}
        by_local: dict[str, list[str]] = {}  # a module's local binding -> its files

        def add(name: str, w: float, prior: float, chunks: list[StoredChunk]) -> None:
            for chunk in chunks:
                if chunk.path == path:
                    continue
                cand = found.get(chunk.id)
                if cand is None or cand.prior * cand.weight < prior * w:
                    found[chunk.id] = _Candidate(name, w, prior, [chunk])

        imported_files: list[str] = []
        for imp in imports:
            targets = resolver.resolve(path, lang, imp)
            imported_files += targets
            if not targets:
                continue
            if imp.name in ("", "*"):
                if imp.local:
                    by_local[imp.local] = targets
                continue
            local = imp.local or imp.name
            w = usage.weight(local)
            if not usage.used(local):
                # imported, not used yet: the code below is about to use it; names that share
                # words with the lines just typed first
                w += opts.unused_import_bonus + opts.overlap_bonus * _overlap(local, recent_terms)
            add(local, w, 1.0, self._resolve_name(imp.name, targets, lang))
            # `from pkg import module` binds a module: its attributes resolve in it
            module_files = [
                t
                for t in targets
                if posixpath.splitext(posixpath.basename(t))[0] == imp.name
                or t.endswith(f"/{imp.name}/__init__.py")
            ]
            if module_files:
                by_local[local] = module_files
        # `module.name` (Python module imports, Go packages, JS namespaces, Rust paths)
        for (mod_local, name), w in usage.qualified.items():
            files = by_local.get(mod_local)
            if not files or not is_meaningful(name):
                continue
            chunks = self._resolve_name(name, files, lang)
            if not chunks:  # re-exported deeper than followed (`from .algorithms import *` chains)
                chunks = [c for c in store.definitions(name) if "." not in c.qualname][: opts.rare_name_limit]
            add(name, w + opts.qualified_bonus, 0.9, chunks)

        # names no import explains: included/imported files, the same folder, then anywhere if rare
        folder = posixpath.dirname(path)
        explained = {c.name for c in found.values()} | local_names | bound
        # names that code like the lines before the cursor uses (the similar chunks): likely next
        uses = _cooccurrence(similar, opts.cooccurrence_chunks)
        for cand in found.values():
            cand.weight += opts.cooccurrence_weight * uses.get(cand.name, 0.0)
        for name, u in sorted(uses.items(), key=lambda kv: -kv[1])[: opts.cooccurrence_names]:
            if name not in usage.bare and u >= opts.cooccurrence_min:
                usage.bare[name] = opts.cooccurrence_weight * u
        for name, w in sorted(usage.bare.items(), key=lambda kv: -kv[1]):
            if name in explained or not is_meaningful(name) or w < 0.05:
                continue
            defs = [c for c in store.definitions(name) if "." not in c.qualname and c.path != path]
            if not defs:
                continue
            near = [c for c in defs if c.path in imported_files]
            if near:
                add(name, w, 0.8, near)
                continue
            same = [c for c in defs if posixpath.dirname(c.path) == folder]
            if same:
                add(name, w, 0.7, same)
            elif len({c.path for c in defs}) <= opts.rare_name_limit:
                add(name, w, 0.4, defs)

        # a package imported whole: the names of its public API that the repository uses most,
        # which code that imports it is likely to use next (`import click` ... `click.echo(`);
        # last, so that nothing above boosts them: a prior, below any evidence near the cursor
        if opts.module_api_names:
            self._module_api(by_local, usage, lang, add)
        ranked = sorted(found.values(), key=lambda c: -(c.prior * c.weight))[: opts.max_definitions]
        return self._group_by_file(ranked)

    def _popularity(self) -> Counter[str]:
        """Name -> how many files of the repository use it. Counted over the whole index, and
        counted again when the index has changed and the count is older than
        `popularity_refresh_s` (a prior need not follow every keystroke)."""
        store = self.index.store
        now = time.monotonic()
        cached = _POPULARITY.get(self.index)  # assemblers are made per request; the count is the index's
        if cached is not None and (
            cached[0] == store.version or now - cached[1] < self.options.popularity_refresh_s
        ):
            return cached[2]
        counts: Counter[str] = Counter()
        for path in store.paths():
            names: set[str] = set()
            for chunk in store.chunks_in_file(path):
                names.update(IDENTIFIER.findall(chunk.text))
            counts.update(names)
        _POPULARITY[self.index] = (store.version, now, counts)
        return counts

    def _exports(self, files: Sequence[str], lang: str, depth: int = 0) -> set[str]:
        """The public names a module's files define or import (a package `__init__` re-exports),
        following `from .x import *` two hops."""
        store = self.index.store
        names: set[str] = set()
        for f in files:
            names.update(c.name for c in store.chunks_in_file(f) if c.name and "." not in c.qualname)
            for imp in store.imports_of(f):
                if imp.name == "*" and depth < 2:
                    names |= self._exports(self.index.resolver.resolve(f, lang, imp), lang, depth + 1)
                elif imp.name:
                    names.add(imp.local or imp.name)
        return {n for n in names if n and not n.startswith("_") and is_meaningful(n)}

    def _module_api(
        self,
        by_local: dict[str, list[str]],
        usage: _Usage,
        lang: str,
        add: Callable[[str, float, float, list[StoredChunk]], None],
    ) -> None:
        opts = self.options
        popular = self._popularity()
        for mod_local, files in by_local.items():
            if not any(f.endswith("__init__.py") for f in files):
                continue  # a package's public API (`import click`), not a sibling module's helpers
            if not usage.module_uses[mod_local]:
                continue  # code that has not used `module.x` yet is not about to use its API
            # the defining file and a re-exporting `__init__` count 2: used elsewhere means more
            exports = [n for n in self._exports(files, lang) if popular.get(n, 0) > 2]
            if not exports:
                continue
            exports.sort(key=lambda n: (-popular[n], n))
            top = math.log1p(popular[exports[0]])
            for name in exports[: opts.module_api_names]:
                chunks = self._resolve_name(name, files, lang)
                if chunks:
                    w = opts.module_api_weight * math.log1p(popular[name]) / top
                    add(name, w, 0.6, chunks)

    def _group_by_file(self, ranked: list[_Candidate]) -> list[Snippet]:
        """One snippet per defining file, its definitions best first: the best few shown whole
        when short, the others as signatures or skeletons (LANCE-style API summaries), so the
        budget holds many more definitions than whole chunks would allow."""
        opts = self.options
        groups: dict[str, list[_Candidate]] = {}
        for cand in ranked:
            groups.setdefault(cand.chunks[0].path, []).append(cand)
        out = []
        for path, cands in groups.items():
            parts: list[str] = []
            ids: list[int] = []
            names: list[str] = []
            lines = 0
            seen: set[int] = set()
            for i, cand in enumerate(cands):
                chunk = cand.chunks[0]
                if chunk.id in seen:
                    continue
                text = compact_definition(
                    chunk, whole=i < opts.whole_definitions, max_lines=opts.summary_lines
                )
                n = text.count("\n") + 1
                if parts and lines + n > opts.max_snippet_lines:
                    continue
                parts.append(text)
                ids.append(chunk.id)
                names.append(cand.name)
                seen.add(chunk.id)
                lines += n
            chunks = [c.chunks[0] for c in cands if c.chunks[0].id in seen]
            best = cands[0]
            score = best.prior * best.weight + opts.group_bonus * sum(c.prior * c.weight for c in cands[1:])
            out.append(
                Snippet(
                    key=f"{path}#definitions",
                    path=path,
                    start_line=min(c.start_line for c in chunks),
                    end_line=max(c.end_line for c in chunks),
                    text=_clip("\n".join(parts), opts.max_snippet_lines),
                    source="definition",
                    name=names[0],
                    score=score,
                    chunk_ids=tuple(ids),
                    names=tuple(names),
                )
            )
        out.sort(key=lambda s: -s.score)
        return out

    def _resolve_name(self, name: str, files: Sequence[str], lang: str, depth: int = 0) -> list[StoredChunk]:
        """The chunk(s) defining `name` in `files`, following re-exports (`from .x import name`,
        `from .x import *`, `export * from './x'`) up to four hops."""
        store = self.index.store
        defs = [c for c in store.definitions(name, list(files)) if c.kind not in ("header", "block")]
        top = [c for c in defs if "." not in c.qualname] or defs
        if top or depth >= 4:
            return top[:2]
        out: list[StoredChunk] = []
        for f in files:
            for imp in store.imports_of(f):
                if imp.local == name or imp.name == name or imp.name == "*":
                    targets = self.index.resolver.resolve(f, lang, imp)
                    real = imp.name if imp.name and imp.name != "*" else name
                    out += self._resolve_name(real, [t for t in targets if t not in files], lang, depth + 1)
                    if out:
                        return out[:2]
        return out[:2]

    # -- the other sources -----------------------------------------------------------------

    def _recent(self, path: str) -> list[Snippet]:
        out: list[Snippet] = []
        seen: set[str] = set()
        for i, edit in enumerate(reversed(list(self.index.recent))):
            if edit.path == path or len(out) >= self.options.max_recent:
                continue
            chunks = self.index.store.chunks_in_file(edit.path)
            inside = [c for c in chunks if c.start_line <= edit.end_line and c.end_line >= edit.start_line]
            inside.sort(key=lambda c: (c.kind == "header", c.end_line - c.start_line))
            if not inside:
                continue
            chunk = inside[0]
            key = f"{chunk.path}#{chunk.qualname or chunk.start_line}"
            if key in seen:
                continue
            seen.add(key)
            out.append(self._snippet(chunk, "recent_edit", chunk.name, 0.5 * 0.8**i))
        return out

    def _similar_hits(self, path: str, prefix: str) -> list[tuple[StoredChunk, float]]:
        """BM25 over the identifier sub-tokens of the last lines before the cursor, fused by
        reciprocal rank with the vector index's nearest chunks when the index has an embedder."""
        query_text = "\n".join(prefix.split("\n")[-12:])
        terms = text_terms(query_text)
        limit = max(self.options.max_similar, self.options.cooccurrence_chunks)
        lexical = self.index.store.search(terms[-64:], limit=limit, exclude_path=path) if terms else []
        embedder = self.index.embedder
        if embedder is None or not query_text.strip():
            return lexical
        query = embedder.embed([query_text])[0]
        dense = self.index.store.vector_search(query, limit=limit, exclude_path=path)
        fused: dict[int, float] = defaultdict(float)
        chunks: dict[int, StoredChunk] = {}
        for hits in (lexical, dense):
            for rank, (chunk, _) in enumerate(hits):
                fused[chunk.id] += 1.0 / (_RRF_K + rank + 1)
                chunks[chunk.id] = chunk
        ranked = sorted(fused.items(), key=lambda kv: -kv[1])[:limit]
        return [(chunks[cid], score) for cid, score in ranked]

    def _similar(self, hits: Sequence[tuple[StoredChunk, float]]) -> list[Snippet]:
        if not hits:
            return []
        best = hits[0][1]
        return [
            self._snippet(chunk, "similar", chunk.name, 0.3 * score / best)
            for chunk, score in hits[: self.options.max_similar]
            if chunk.kind != "header"
        ]

    def _snippet(self, chunk: StoredChunk, source: str, name: str, score: float) -> Snippet:
        return Snippet(
            key=f"{chunk.path}#{chunk.qualname or chunk.start_line}",
            path=chunk.path,
            start_line=chunk.start_line,
            end_line=chunk.end_line,
            text=_clip(chunk.text, self.options.max_snippet_lines),
            source=source,
            name=name,
            score=score,
            chunk_ids=(chunk.id,),
        )


_PARSE_CACHE: OrderedDict[tuple[int, str], Outline] = OrderedDict()


def _parse(text: str, language: str) -> Outline:
    key = (hash(text), language)
    hit = _PARSE_CACHE.get(key)
    if hit is None:
        hit = parse_outline(text, language)
        _PARSE_CACHE[key] = hit
        if len(_PARSE_CACHE) > 64:
            _PARSE_CACHE.popitem(last=False)
    return hit


def _dedupe(snippets: list[Snippet]) -> list[Snippet]:
    """Best first; one snippet per key and none whose text nearly repeats a better one."""
    out: list[Snippet] = []
    keys: set[str] = set()
    token_sets: list[set[str]] = []
    for s in sorted(snippets, key=lambda s: -s.score):
        if s.key in keys:
            continue
        tokens = set(IDENTIFIER.findall(s.text))
        if any(len(tokens & t) / max(1, len(tokens | t)) > 0.9 for t in token_sets):
            continue
        keys.add(s.key)
        token_sets.append(tokens)
        out.append(s)
    return out


# -- rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderStyle:
    """How snippets enter the prompt. Without repository-level file separators, each snippet is
    introduced by a comment with its file's path; code in the prompt's language follows as it is
    (a small model draws more from plain code than from commented-out code: teacher-forced
    log-likelihood of the next line rose further with plain snippets in `splice eval retrieval`
    runs), code in another language is commented out, as is everything when `commented`. With
    file separators (models trained with them), snippets go between them, as in training."""

    comment: str = "#"
    file_sep: str | None = None  # e.g. "<file_sep>" (StarCoder2), "<|file_sep|>" (Qwen2.5-Coder)
    language: str | None = None  # the prompt's language (grammar name)
    commented: bool = False

    @staticmethod
    def for_language(
        language: str | None, file_sep: str | None = None, commented: bool = False
    ) -> RenderStyle:
        lang = _language(None, language) or "python"
        return RenderStyle(_LINE_COMMENT.get(lang, "//"), file_sep, lang, commented)


_FAMILY = {"tsx": "typescript", "javascript": "typescript", "c": "cpp"}  # code that reads alike


def render_snippet(snippet: Snippet, style: RenderStyle) -> str:
    if style.file_sep:
        return f"{style.file_sep}{snippet.path}\n{snippet.text}\n"
    c = style.comment
    lang = language_for_path(snippet.path)
    same = lang is not None and _FAMILY.get(lang, lang) == _FAMILY.get(style.language or "", style.language)
    if same and not style.commented:
        return f"{c} Path: {snippet.path}\n{snippet.text}\n"
    body = "\n".join(f"{c} {line}" if line else c for line in snippet.text.split("\n"))
    return f"{c} Path: {snippet.path}\n{body}\n"


EDITS_PATH = "recent_edits.diff"


def render_context(
    snippets: Sequence[Snippet], style: RenderStyle, current_path: str | None = None, edits: str = ""
) -> str:
    """The text that goes before the document's prefix (empty without snippets or edits): the
    repository snippets, then the recent edits (unified diffs, `completion.recent_edits`) nearest
    the document."""
    parts = list(snippets)
    if edits:
        parts.append(Snippet(EDITS_PATH, EDITS_PATH, 0, 0, edits.rstrip("\n"), "edits", "", 0.0))
    if not parts:
        return ""
    text = "".join(render_snippet(s, style) for s in parts)
    if style.file_sep:
        text += f"{style.file_sep}{current_path or ''}\n"
    return text


# -- stable slots ------------------------------------------------------------------------------


class ContextSlots:
    """Per-document slot layout that changes as little as possible between requests.

    The prompt is `context + document`, and the document's KV cache is reused through an edit
    script (PIE): a context that is re-ranked from scratch would move every snippet and turn each
    request into a new prompt. Here a snippet that is still wanted keeps its slot; a slot whose
    snippet dropped out is refilled in place (a local edit); new snippets are appended, the best
    last, nearest the document (small models heed the nearest context most); when the budget
    overflows, the lowest-ranked snippets leave. At most `max_snippets` are kept.
    """

    def __init__(self, max_documents: int = 256, max_snippets: int = 5) -> None:
        self._layouts: OrderedDict[str, list[str]] = OrderedDict()
        self.max_documents = max_documents
        self.max_snippets = max_snippets

    def arrange(
        self, document: str, ranked: Sequence[Snippet], budget_tokens: int, cost: Callable[[Snippet], int]
    ) -> list[Snippet]:
        wanted: list[Snippet] = []
        used = 0
        for s in ranked:
            if len(wanted) >= self.max_snippets:
                break
            c = cost(s)
            if used + c <= budget_tokens:
                wanted.append(s)
                used += c
        by_key = {s.key: s for s in wanted}
        previous = self._layouts.get(document, [])
        layout: list[str | None] = [k if k in by_key else None for k in previous]
        fresh = [s.key for s in wanted if s.key not in previous]  # best first
        for i, slot in enumerate(layout):
            if slot is None and fresh:
                layout[i] = fresh.pop(0)
        keys = [k for k in layout if k is not None] + fresh[::-1]
        self._layouts[document] = keys
        self._layouts.move_to_end(document)
        while len(self._layouts) > self.max_documents:
            self._layouts.popitem(last=False)
        return [by_key[k] for k in keys]

    def forget(self, document: str) -> None:
        self._layouts.pop(document, None)
