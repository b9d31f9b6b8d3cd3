"""Cross-file completion tasks built from a repository's own code.

A task is a line of file A that uses a name defined at the top level of exactly one other file B
(so the answer is unambiguous, and found without the context assembler), that A neither defines
nor binds (parameters, assignments); occurrences in strings, comments, import lines and attribute
accesses on anything but an imported module are not tasks. The prompt is A up to that line (and
the line's indentation). `splice eval retrieval` scores retrieval and completion on them, and
`splice finetune --repo-context` trains on them (with other repositories than those evaluated).
"""

from __future__ import annotations

import bisect
import random
import re
from collections import defaultdict
from dataclasses import dataclass

from .chunking import parse_outline, parser_for
from .context import bound_names
from .indexer import RepositoryIndex
from .store import StoredImport
from .tokens import IDENTIFIER, is_meaningful


@dataclass(frozen=True)
class Task:
    path: str
    language: str
    line: int  # 0-based
    name: str
    prefix: str
    target: str  # the line, stripped
    chunk_id: int  # the defining chunk
    defined_in: str


_LITERAL_NODES = frozenset(
    {
        "string",
        "comment",
        "line_comment",
        "block_comment",
        "string_literal",
        "raw_string_literal",
        "char_literal",
        "template_string",
        "interpreted_string_literal",
        "concatenated_string",
        "text_block",
        "system_lib_string",
    }
)


_IMPORT_NODES = frozenset(
    {
        "import_statement",
        "import_from_statement",
        "future_import_statement",
        "import_declaration",
        "preproc_include",
        "use_declaration",
        "export_statement",  # only those with a `source`: re-exports
    }
)


def _literal_rows(text: str, language: str) -> tuple[list[tuple[int, int]], set[int]]:
    """Byte spans of strings and comments, and every row of import statements (all the lines
    of a parenthesised multi-line import), in `text`."""
    tree = parser_for(language).parse(text.encode("utf-8"))
    spans: list[tuple[int, int]] = []
    import_rows: set[int] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type in _LITERAL_NODES:
            spans.append((node.start_byte, node.end_byte))
            continue
        if node.type in _IMPORT_NODES and (
            node.type != "export_statement" or node.child_by_field_name("source") is not None
        ):
            import_rows.update(range(node.start_point.row, node.end_point.row + 1))
            continue
        stack.extend(node.children)
    return spans, import_rows


def build_tasks(index: RepositoryIndex, limit: int, seed: int = 0, per_file: int = 3) -> list[Task]:
    """Up to `limit` tasks, spread over files (at most `per_file` each), deterministic for `seed`.

    A task is an occurrence of a name defined at the top level of exactly one file B, in a file A
    that does not define or bind it itself, outside strings, comments and import statements, and
    not as an attribute (`x.name`) unless `x` is a name A imports (a module: `utils.name`)."""
    store = index.store
    unique: dict[str, tuple[int, str]] = {}  # name -> (chunk id, path) for names defined once
    seen_twice: set[str] = set()
    for path in store.paths():
        for chunk in store.chunks_in_file(path):
            if not chunk.name or chunk.kind in ("header", "block") or "." in chunk.qualname:
                continue
            if chunk.name in unique and unique[chunk.name][1] != path:
                seen_twice.add(chunk.name)
            unique.setdefault(chunk.name, (chunk.id, path))
    for name in seen_twice:
        unique.pop(name, None)

    by_file: dict[str, list[Task]] = defaultdict(list)
    for state in sorted(store.file_states().values(), key=lambda s: s.path):
        try:
            text = (index.root / state.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        outline = parse_outline(text, state.language)
        local = {c.name for c in outline.chunks if c.name} | bound_names(text)
        modules: set[str] = set()  # names bound to imports of the repository's own modules
        for imp in outline.imports:  # a name imported from outside the repository is not B's
            for name, bound in imp.names or (("", imp.local),):
                stored = StoredImport(imp.module, name, bound, imp.line, imp.level, imp.system)
                if index.resolver.resolve(state.path, state.language, stored):
                    modules.add(bound)
                else:
                    local.add(bound)
        literals, import_rows = _literal_rows(text, state.language)
        literal_starts = sorted(literals)
        lines = text.split("\n")
        offsets = []  # byte offset of each line
        offset = 0
        for line in lines:
            offsets.append(offset)
            offset += len(line.encode("utf-8")) + 1
        for i, line in enumerate(lines):
            stripped = line.strip()
            if i in import_rows or len(stripped) < 8 or len(stripped) > 120:
                continue
            for m in IDENTIFIER.finditer(line):
                name = m.group(0)
                hit = unique.get(name)
                if hit is None or hit[1] == state.path or name in local or len(name) < 3:
                    continue
                if not is_meaningful(name):
                    continue
                before = line[: m.start()].rstrip()
                if before.endswith((".", "->", "::")):
                    qualifier = re.search(r"([A-Za-z_]\w*)\s*(?:\.|->|::)$", before)
                    if qualifier is None or qualifier.group(1) not in modules:
                        continue
                at = offsets[i] + len(line[: m.start()].encode("utf-8"))
                k = bisect.bisect_right(literal_starts, (at, 1 << 62)) - 1
                if k >= 0 and literal_starts[k][0] <= at < literal_starts[k][1]:
                    continue
                indent = line[: len(line) - len(line.lstrip())]
                prefix = "\n".join(lines[:i]) + ("\n" if i else "") + indent
                by_file[state.path].append(
                    Task(state.path, state.language, i, name, prefix, stripped, hit[0], hit[1])
                )
                break
    rng = random.Random(seed)
    files = sorted(by_file)
    rng.shuffle(files)
    for f in files:
        rng.shuffle(by_file[f])
    tasks: list[Task] = []
    for round_ in range(per_file):
        for f in files:
            if len(tasks) >= limit:
                return tasks
            if round_ < len(by_file[f]):
                tasks.append(by_file[f][round_])
    return tasks
