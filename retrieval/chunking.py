"""Tree-sitter chunking: a source file's definitions, header and imports (its *outline*).

A chunk is one definition (function, class, method, struct, interface, trait, impl, enum, type,
top-level constant or variable, macro) with the comment right above it, a `header` chunk (the
file's docstring, package clause and imports, when it has any), or a `block` of other top-level
code (scripts, `if __name__ == "__main__":`), so that everything in a file can be found by search.
A container (class, impl, trait, interface) is stored as a *skeleton*: members' multi-line bodies
are elided (`...`), their signatures kept; each member is a chunk of its own with a qualified
name (`Client.send`).

Imports are recorded as written (`Import.module`, the names bound, the relative level); the
import graph (`splice.retrieval.resolve`) maps them to files. Lines are 0-based and inclusive.
Grammars come from the per-language PyPI wheels (`tree-sitter-python`, ...); parsers are built
once per thread.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tree_sitter import Language, Node, Parser

from .languages import LANGUAGES


@dataclass(frozen=True, slots=True)
class Chunk:
    kind: str  # header | block | function | class | method | struct | enum | interface | trait | impl | ...
    name: str  # "" for header and block chunks
    qualname: str  # dotted through containers: "Client.send", "geo.Shape.area"
    start_line: int
    end_line: int
    signature: str  # the definition up to its body, whitespace collapsed
    text: str


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # "pkg.models", "./math/vector", "example.com/app/store", "crate::geo", "ring.h"
    names: tuple[tuple[str, str], ...] = ()  # (imported name, local name); ("*", "*") for a wildcard
    local: str = ""  # the name a module import is bound to (`import numpy as np` -> np)
    line: int = 0
    level: int = 0  # Python relative import dots
    system: bool = False  # C/C++ `#include <...>`


@dataclass(frozen=True)
class Outline:
    chunks: list[Chunk] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)


_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "java": ("tree_sitter_java", "language"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
assert set(_GRAMMARS) == set(LANGUAGES)

_languages: dict[str, Language] = {}
_local = threading.local()

BLOCK_MAX_LINES = 40  # a run of other top-level code is cut into blocks this long
_SIGNATURE_CHARS = 300
_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
_ATTACHED = _COMMENTS | {"attribute_item"}  # kept with the definition below them (docs, #[derive])


def parser_for(language: str) -> Parser:
    """This thread's parser for `language` (a name in `LANGUAGES`)."""
    parsers: dict[str, Parser] = _local.__dict__.setdefault("parsers", {})
    parser = parsers.get(language)
    if parser is None:
        if language not in _GRAMMARS:
            raise ValueError(f"no grammar for {language!r}; known: {', '.join(LANGUAGES)}")
        lang = _languages.get(language)
        if lang is None:
            module, attr = _GRAMMARS[language]
            lang = _languages[language] = Language(getattr(importlib.import_module(module), attr)())
        parser = parsers[language] = Parser(lang)
    return parser


def parse_outline(text: str, language: str) -> Outline:
    """The chunks and imports of `text` in `language`. Syntax errors are tolerated: tree-sitter
    recovers, and whatever parses is outlined."""
    src = text.encode("utf-8")
    tree = parser_for(language).parse(src)
    builder = _Builder(src, language)
    _VISITORS[language](builder, tree.root_node)
    return builder.finish()


# -- shared machinery --------------------------------------------------------------------------


def _end_row(node: Node) -> int:
    end = node.end_point
    return end.row - 1 if end.column == 0 and end.row > node.start_point.row else end.row


class _Builder:
    """Collects chunks and imports, and the top-level nodes no chunk covers (cut into blocks)."""

    def __init__(self, src: bytes, language: str) -> None:
        self.src = src
        self.language = language
        self.chunks: list[Chunk] = []
        self.imports: list[Import] = []
        self.header_end = -1  # last row of the header region (package clause, imports)
        self.seen_definition = False
        self._loose: list[Node] = []  # uncovered top-level nodes, in order

    def text(self, node: Node | None) -> str:
        if node is None:
            return ""
        return self.src[node.start_byte : node.end_byte].decode("utf-8", "replace")

    def _line_start(self, byte: int) -> int:
        return self.src.rfind(b"\n", 0, byte) + 1

    def header_node(self, node: Node) -> None:
        """`node` (an import, package clause, include) belongs to the file's header region."""
        if not self.seen_definition:
            self.header_end = max(self.header_end, _end_row(node))

    def add_import(self, imp: Import, node: Node) -> None:
        self.imports.append(imp)
        self.header_node(node)

    def loose(self, node: Node) -> None:
        if node.type not in _ATTACHED and node.is_named:
            self._loose.append(node)

    def add(
        self,
        kind: str,
        name: str,
        scope: str,
        node: Node,
        body: Node | None = None,
        elide: list[tuple[int, int, str]] | None = None,
    ) -> None:
        """A definition chunk for `node` (with the comments right above it). `body` marks where the
        signature ends; `elide` lists byte ranges replaced in the text (a container's skeleton)."""
        if not name:
            return
        self.seen_definition = self.seen_definition or kind != "macro"  # include guards come first
        first = node
        prev = node.prev_sibling
        while prev is not None and prev.type in _ATTACHED and prev.end_point.row >= first.start_point.row - 1:
            first = prev
            prev = prev.prev_sibling
        start = self._line_start(first.start_byte)
        if self.src[start : first.start_byte].strip():  # not first on its line: start at the node
            start = first.start_byte
        end = node.end_byte
        pieces: list[bytes] = []
        at = start
        for lo, hi, replacement in sorted(elide or []):
            if lo < at or hi > end:
                continue
            pieces += [self.src[at:lo], replacement.encode()]
            at = hi
        pieces.append(self.src[at:end])
        text = b"".join(pieces).decode("utf-8", "replace")
        sig_end = body.start_byte if body is not None else self.src.find(b"\n", node.start_byte, end)
        if sig_end < 0:
            sig_end = end
        signature = " ".join(self.src[node.start_byte : sig_end].decode("utf-8", "replace").split())
        signature = re.sub(r",?\s*\)", ")", re.sub(r"\(\s+", "(", signature))
        signature = signature.rstrip(":{ ")[:_SIGNATURE_CHARS]
        qualname = f"{scope}.{name}" if scope else name
        self.chunks.append(
            Chunk(kind, name, qualname, first.start_point.row, _end_row(node), signature, text)
        )

    def body_elision(
        self, member: Node, body: Node | None, python: bool = False
    ) -> tuple[int, int, str] | None:
        """The byte range of `member`'s multi-line body to elide in its container's skeleton."""
        if body is None or body.end_point.row == body.start_point.row == member.start_point.row:
            return None
        if body.end_point.row == member.start_point.row:
            return None
        if python:
            prev = body.prev_sibling  # the ':'
            lo = prev.end_byte if prev is not None else body.start_byte
            return (lo, body.end_byte, " ...")
        return (body.start_byte, body.end_byte, "{ ... }")

    def finish(self) -> Outline:
        chunks = list(self.chunks)
        if self.header_end >= 0:
            lines = self.src.split(b"\n")[: self.header_end + 1]
            text = b"\n".join(lines).decode("utf-8", "replace")
            first = next((line for line in text.split("\n") if line.strip()), "")
            chunks.insert(
                0, Chunk("header", "", "", 0, self.header_end, first.strip()[:_SIGNATURE_CHARS], text)
            )
        chunks += self._blocks()
        chunks.sort(key=lambda c: (c.start_line, c.kind != "header"))
        return Outline(chunks, self.imports)

    def _blocks(self) -> Iterator[Chunk]:
        """Runs of uncovered top-level nodes outside the header, at most `BLOCK_MAX_LINES` each."""
        run: list[Node] = []

        def flush() -> Iterator[Chunk]:
            if run:
                lo = self._line_start(run[0].start_byte)
                text = self.src[lo : run[-1].end_byte].decode("utf-8", "replace")
                first = text.strip().split("\n", 1)[0]
                yield Chunk("block", "", "", run[0].start_point.row, _end_row(run[-1]), first[:80], text)
                run.clear()

        for node in self._loose:
            if _end_row(node) <= self.header_end:
                continue
            if run and (
                _end_row(node) - run[0].start_point.row >= BLOCK_MAX_LINES
                or node.start_point.row - _end_row(run[-1]) > 2
            ):
                yield from flush()
            run.append(node)
        yield from flush()


def _field(node: Node, name: str) -> Node | None:
    return node.child_by_field_name(name)


def _string_content(b: _Builder, node: Node | None) -> str:
    return b.text(node).strip().strip("\"'`<>")


# -- Python ----------------------------------------------------------------------------------------


def _python(b: _Builder, root: Node) -> None:
    for node in root.named_children:
        _python_top(b, node, top=True)


_PY_COMPOUND = ("block", "else_clause", "elif_clause", "except_clause", "finally_clause")


def _python_top(b: _Builder, node: Node, top: bool) -> None:
    kind = node.type
    if kind in ("import_statement", "import_from_statement", "future_import_statement"):
        _python_import(b, node)
    elif kind in ("class_definition", "function_definition", "decorated_definition"):
        _python_definition(b, node, "")
    elif (
        kind == "expression_statement" and node.named_children and node.named_children[0].type == "assignment"
    ):
        names = _python_targets(b, node.named_children[0])
        for name in names[:4]:
            b.add("variable", name, "", node)
        if not names and top:
            b.loose(node)
    elif kind in (
        "if_statement",
        "try_statement",
        "with_statement",
        "else_clause",
        "elif_clause",
        "except_clause",
        "finally_clause",
        "block",
    ):
        # `if TYPE_CHECKING:`, `try: import x`, version switches: definitions and imports inside count
        before = (len(b.chunks), len(b.imports))
        for child in node.named_children:
            if child.type in _PY_COMPOUND or kind == "block":
                _python_top(b, child, top=False)
        if top and (len(b.chunks), len(b.imports)) == before:
            b.loose(node)
        elif top and len(b.imports) > before[1] and len(b.chunks) == before[0]:
            b.header_node(node)
    elif top:
        if (
            kind == "expression_statement"
            and not b.seen_definition
            and node.named_children[0].type == "string"
        ):
            b.header_node(node)  # the module docstring
        b.loose(node)


def _python_targets(b: _Builder, assignment: Node) -> list[str]:
    names: list[str] = []
    node: Node | None = assignment
    while node is not None and node.type == "assignment":
        left = _field(node, "left")
        if left is not None and left.type == "identifier":
            names.append(b.text(left))
        elif left is not None and left.type in ("pattern_list", "tuple_pattern"):
            names += [b.text(c) for c in left.named_children if c.type == "identifier"]
        node = _field(node, "right")
    return names


def _python_import(b: _Builder, node: Node) -> None:
    line = node.start_point.row
    if node.type == "future_import_statement":
        b.header_node(node)
        return
    if node.type == "import_statement":
        for child in node.children_by_field_name("name"):
            if child.type == "aliased_import":
                module = b.text(_field(child, "name"))
                b.add_import(Import(module, (), b.text(_field(child, "alias")), line), node)
            else:
                module = b.text(child)
                b.add_import(Import(module, (), module.split(".")[0], line), node)
        return
    source = _field(node, "module_name")
    level, module = 0, ""
    if source is not None and source.type == "relative_import":
        for part in source.named_children:
            if part.type == "import_prefix":
                level = b.text(part).count(".")
            else:
                module = b.text(part)
    else:
        module = b.text(source)
    names: list[tuple[str, str]] = []
    if any(c.type == "wildcard_import" for c in node.named_children):
        names.append(("*", "*"))
    for child in node.children_by_field_name("name"):
        if child.type == "aliased_import":
            names.append((b.text(_field(child, "name")), b.text(_field(child, "alias"))))
        else:
            names.append((b.text(child), b.text(child)))
    b.add_import(Import(module, tuple(names), "", line, level), node)


_PY_STATEMENT_BLOCKS = frozenset(
    {
        "block",
        "if_statement",
        "elif_clause",
        "else_clause",
        "for_statement",
        "while_statement",
        "try_statement",
        "except_clause",
        "finally_clause",
        "with_statement",
        "match_statement",
        "case_clause",
        "function_definition",
        "decorated_definition",
        "class_definition",
    }
)


def _python_nested_imports(b: _Builder, block: Node) -> None:
    """Imports inside a function (lazy imports): part of the import graph, not of the header.
    Only statements are visited, never expressions, so this stays cheap."""
    stack = [block]
    while stack:
        node = stack.pop()
        for child in node.named_children:
            if child.type in ("import_statement", "import_from_statement"):
                _python_import(b, child)
            elif child.type in _PY_STATEMENT_BLOCKS:
                stack.append(child)


def _python_definition(b: _Builder, node: Node, scope: str, in_class: bool = False) -> None:
    inner = _field(node, "definition") if node.type == "decorated_definition" else node
    if inner is None:
        return
    name = b.text(_field(inner, "name"))
    body = _field(inner, "body")
    if inner.type == "function_definition":
        b.add("method" if in_class else "function", name, scope, node, body)
        if body is not None:
            _python_nested_imports(b, body)
        return
    qual = f"{scope}.{name}" if scope else name
    elide = []
    members = []
    for member in body.named_children if body is not None else []:
        target = _field(member, "definition") if member.type == "decorated_definition" else member
        if target is None or target.type not in ("function_definition", "class_definition"):
            continue
        members.append(member)
        if target.type == "function_definition":
            cut = b.body_elision(target, _field(target, "body"), python=True)
            if cut is not None:
                elide.append(cut)
    b.add("class", name, scope, node, body, elide)
    for member in members:
        _python_definition(b, member, qual, in_class=True)


# -- JavaScript / TypeScript --------------------------------------------------------------------------

_JS_FUNCTION_VALUES = frozenset({"arrow_function", "function_expression", "function", "generator_function"})
_JS_CLASS_MEMBERS = frozenset(
    {
        "method_definition",
        "method_signature",
        "abstract_method_signature",
        "public_field_definition",
        "field_definition",
    }
)
_JS_CONTAINERS = {
    "class_declaration": "class",
    "abstract_class_declaration": "class",
    "class": "class",
    "interface_declaration": "interface",
}
_JS_SIMPLE = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "function_signature": "function",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
}


def _visit_items(
    item: Callable[[_Builder, Node, str, Node], bool], b: _Builder, root: Node, scope: str, top: bool
) -> None:
    """Outline each child of `root` with `item` (True when it did); the others are loose
    top-level code when `top`."""
    for node in root.named_children:
        if not item(b, node, scope, node) and top:
            b.loose(node)


def _js(b: _Builder, root: Node, scope: str = "", top: bool = True) -> None:
    _visit_items(_js_statement, b, root, scope, top)


def _js_statement(b: _Builder, node: Node, scope: str, outer: Node) -> bool:
    """Outline one statement; `outer` is the node whose extent the chunk takes (an `export`)."""
    kind = node.type
    if kind == "import_statement":
        _js_import(b, node)
        return True
    if kind == "export_statement":
        source = _field(node, "source")
        if source is not None:  # a re-export: `export { a } from './x'`, `export * from './x'`
            names = [
                (b.text(_field(s, "name")), b.text(_field(s, "alias") or _field(s, "name")))
                for c in node.named_children
                if c.type == "export_clause"
                for s in c.named_children
            ]
            module = _string_content(b, source)
            b.add_import(Import(module, tuple(names) or (("*", "*"),), "", node.start_point.row), node)
            return True
        decl = _field(node, "declaration") or _field(node, "value")
        if decl is not None:
            return _js_statement(b, decl, scope, node)
        return False
    if kind in _JS_SIMPLE:
        b.add(_JS_SIMPLE[kind], b.text(_field(node, "name")), scope, outer, _field(node, "body"))
        return True
    if kind in _JS_CONTAINERS:
        _js_container(b, node, scope, outer, _JS_CONTAINERS[kind])
        return True
    if kind in ("lexical_declaration", "variable_declaration"):
        return _js_variables(b, node, scope, outer)
    if kind == "ambient_declaration":
        return any(_js_statement(b, c, scope, outer) for c in node.named_children)
    if kind in ("internal_module", "module"):
        name = b.text(_field(node, "name")).strip("\"'")
        body = _field(node, "body")
        b.add("namespace", name, scope, outer, body)
        if body is not None:
            _js(b, body, f"{scope}.{name}" if scope else name, top=False)
        return True
    if kind == "expression_statement" and node.named_children:
        inner = node.named_children[0]
        if inner.type in ("internal_module", "module"):
            return _js_statement(b, inner, scope, outer)
    return False


def _js_import(b: _Builder, node: Node) -> None:
    module = _string_content(b, _field(node, "source"))
    line = node.start_point.row
    names: list[tuple[str, str]] = []
    local = ""
    for clause in node.named_children:
        if clause.type != "import_clause":
            continue
        for part in clause.named_children:
            if part.type == "identifier":  # default import: assume the local name is the export's
                names.append((b.text(part), b.text(part)))
            elif part.type == "namespace_import":
                local = b.text(part.named_children[0]) if part.named_children else ""
            elif part.type == "named_imports":
                for spec in part.named_children:
                    if spec.type == "import_specifier":
                        name = b.text(_field(spec, "name"))
                        names.append((name, b.text(_field(spec, "alias")) or name))
    b.add_import(Import(module, tuple(names), local, line), node)


def _js_variables(b: _Builder, node: Node, scope: str, outer: Node) -> bool:
    found = False
    for decl in node.named_children:
        if decl.type != "variable_declarator":
            continue
        target, value = _field(decl, "name"), _field(decl, "value")
        if (
            value is not None
            and value.type == "call_expression"
            and b.text(_field(value, "function")) == "require"
        ):
            args = _field(value, "arguments")
            module = _string_content(b, args.named_children[0]) if args and args.named_children else ""
            if target is not None and target.type == "object_pattern":
                names = tuple((b.text(p), b.text(p)) for p in target.named_children)
                b.add_import(Import(module, names, "", node.start_point.row), outer)
            else:
                b.add_import(Import(module, (), b.text(target), node.start_point.row), outer)
            found = True
            continue
        if target is None or target.type != "identifier":
            continue
        vtype = value.type if value is not None else ""
        if vtype == "class":
            _js_container(b, value, scope, outer, "class", b.text(target))  # type: ignore[arg-type]
        else:
            kind = "function" if vtype in _JS_FUNCTION_VALUES else "variable"
            b.add(kind, b.text(target), scope, outer, _field(value, "body") if value is not None else None)
        found = True
    return found


def _js_container(b: _Builder, node: Node, scope: str, outer: Node, kind: str, name: str = "") -> None:
    name = name or b.text(_field(node, "name"))
    body = _field(node, "body")
    members = [
        m
        for m in (body.named_children if body is not None else [])
        if m.type in _JS_CLASS_MEMBERS or m.type in ("method_signature", "property_signature")
    ]
    elide = [cut for m in members if (cut := b.body_elision(m, _field(m, "body"))) is not None]
    b.add(kind, name, scope, outer, body, elide)
    qual = f"{scope}.{name}" if scope else name
    for m in members:
        if m.type in ("method_definition", "method_signature", "abstract_method_signature"):
            b.add("method", b.text(_field(m, "name")), qual, m, _field(m, "body"))


# -- Java ----------------------------------------------------------------------------------------------

_JAVA_TYPES = {
    "class_declaration": "class",
    "interface_declaration": "interface",
    "enum_declaration": "enum",
    "record_declaration": "class",
    "annotation_type_declaration": "interface",
}


def _java(b: _Builder, root: Node) -> None:
    for node in root.named_children:
        if node.type == "package_declaration":
            b.header_node(node)
        elif node.type == "import_declaration":
            dotted = next(
                (b.text(c) for c in node.named_children if c.type in ("scoped_identifier", "identifier")), ""
            )
            line = node.start_point.row
            if any(c.type == "asterisk" for c in node.named_children):
                b.add_import(Import(dotted, (("*", "*"),), "", line), node)
            else:
                module, _, name = dotted.rpartition(".")
                b.add_import(Import(module, ((name, name),), "", line), node)
        elif node.type in _JAVA_TYPES:
            _java_type(b, node, "")
        else:
            b.loose(node)


def _java_type(b: _Builder, node: Node, scope: str) -> None:
    name = b.text(_field(node, "name"))
    body = _field(node, "body")
    members: list[Node] = []
    for child in body.named_children if body is not None else []:
        if child.type == "enum_body_declarations":
            members += child.named_children
        else:
            members.append(child)
    elide = []
    for m in members:
        if m.type in ("method_declaration", "constructor_declaration"):
            cut = b.body_elision(m, _field(m, "body"))
            if cut is not None:
                elide.append(cut)
    b.add(_JAVA_TYPES[node.type], name, scope, node, body, elide)
    qual = f"{scope}.{name}" if scope else name
    for m in members:
        if m.type in ("method_declaration", "constructor_declaration"):
            b.add("method", b.text(_field(m, "name")), qual, m, _field(m, "body"))
        elif m.type in ("field_declaration", "constant_declaration"):
            for decl in m.children_by_field_name("declarator"):
                b.add("field", b.text(_field(decl, "name")), qual, m)
        elif m.type in _JAVA_TYPES:
            _java_type(b, m, qual)


# -- Go --------------------------------------------------------------------------------------------------


def _go(b: _Builder, root: Node) -> None:
    for node in root.named_children:
        kind = node.type
        if kind == "package_clause":
            b.header_node(node)
        elif kind == "import_declaration":
            specs = [c for c in node.named_children if c.type == "import_spec"]
            specs += [
                s
                for c in node.named_children
                if c.type == "import_spec_list"
                for s in c.named_children
                if s.type == "import_spec"
            ]
            for spec in specs:
                path = _string_content(b, _field(spec, "path"))
                alias = b.text(_field(spec, "name"))
                local = alias or path.rstrip("/").split("/")[-1]
                if re.fullmatch(r"v[0-9]+", local) and "/" in path:  # example.com/lib/v2 is package lib
                    local = path.rstrip("/").split("/")[-2]
                b.add_import(Import(path, (), local, spec.start_point.row), node)
        elif kind == "function_declaration":
            b.add("function", b.text(_field(node, "name")), "", node, _field(node, "body"))
        elif kind == "method_declaration":
            receiver = _field(node, "receiver")
            types = [n for n in _descendants(receiver) if n.type == "type_identifier"] if receiver else []
            scope = b.text(types[0]) if types else ""
            b.add("method", b.text(_field(node, "name")), scope, node, _field(node, "body"))
        elif kind == "type_declaration":
            specs = [c for c in node.named_children if c.type in ("type_spec", "type_alias")]
            for spec in specs:
                target = node if len(specs) == 1 else spec
                type_node = _field(spec, "type")
                tkind = {"struct_type": "struct", "interface_type": "interface"}.get(
                    type_node.type if type_node else "", "type"
                )
                b.add(tkind, b.text(_field(spec, "name")), "", target)
        elif kind in ("const_declaration", "var_declaration"):
            specs = [c for c in _descendants(node) if c.type in ("const_spec", "var_spec")]
            small = _end_row(node) - node.start_point.row < 30
            for spec in specs:
                for name in spec.children_by_field_name("name"):
                    b.add("variable", b.text(name), "", node if small else spec)
        else:
            b.loose(node)


def _descendants(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.named_children))


# -- Rust ---------------------------------------------------------------------------------------------

_RUST_SIMPLE = {
    "function_item": "function",
    "function_signature_item": "function",
    "struct_item": "struct",
    "enum_item": "enum",
    "union_item": "struct",
    "const_item": "variable",
    "static_item": "variable",
    "type_item": "type",
    "macro_definition": "macro",
}


def _rust(b: _Builder, root: Node, scope: str = "", top: bool = True) -> None:
    for node in root.named_children:
        kind = node.type
        if kind == "use_declaration":
            entries: list[tuple[str, str, str]] = []
            _rust_use(b, _field(node, "argument"), "", entries)
            by_module: dict[str, list[tuple[str, str]]] = {}
            for module, name, local in entries:
                by_module.setdefault(module, []).append((name, local))
            for module, names in by_module.items():
                b.add_import(Import(module, tuple(names), "", node.start_point.row), node)
        elif kind in _RUST_SIMPLE:
            b.add(_RUST_SIMPLE[kind], b.text(_field(node, "name")), scope, node, _field(node, "body"))
        elif kind in ("impl_item", "trait_item"):
            if kind == "impl_item":
                type_node = _field(node, "type")
                inner = (
                    _field(type_node, "type")
                    if type_node is not None and type_node.type == "generic_type"
                    else None
                )
                name = b.text(inner or type_node).split("::")[-1]
            else:
                name = b.text(_field(node, "name"))
            body = _field(node, "body")
            members = [
                m for m in (body.named_children if body is not None else []) if m.type == "function_item"
            ]
            elide = [cut for m in members if (cut := b.body_elision(m, _field(m, "body"))) is not None]
            b.add("impl" if kind == "impl_item" else "trait", name, scope, node, body, elide)
            qual = f"{scope}.{name}" if scope else name
            for m in body.named_children if body is not None else []:
                if m.type in ("function_item", "function_signature_item"):
                    b.add("method", b.text(_field(m, "name")), qual, m, _field(m, "body"))
        elif kind == "mod_item" and _field(node, "body") is not None:
            name = b.text(_field(node, "name"))
            body = _field(node, "body")
            b.add("module", name, scope, node, body)
            _rust(b, body, f"{scope}.{name}" if scope else name, top=False)  # type: ignore[arg-type]
        elif kind == "mod_item":
            b.header_node(node)  # `mod name;`: a submodule file, part of the header
        elif top:
            b.loose(node)


def _rust_use(b: _Builder, node: Node | None, prefix: str, out: list[tuple[str, str, str]]) -> None:
    """Flatten a `use` tree into (module path, name, local name) entries."""
    if node is None:
        return

    def join(a: str, c: str) -> str:
        return f"{a}::{c}" if a and c else a or c

    kind = node.type
    if kind == "scoped_identifier":
        path = join(prefix, b.text(_field(node, "path")))
        name = b.text(_field(node, "name"))
        out.append((path, name, name))
    elif kind in ("identifier", "crate", "super", "self"):
        name = b.text(node)
        if kind == "self":
            out.append((prefix, "", prefix.split("::")[-1]))
        else:
            out.append((prefix, name, name))
    elif kind == "use_as_clause":
        path_node = _field(node, "path")
        alias = b.text(_field(node, "alias"))
        if path_node is not None and path_node.type == "scoped_identifier":
            out.append(
                (join(prefix, b.text(_field(path_node, "path"))), b.text(_field(path_node, "name")), alias)
            )
        else:
            out.append((prefix, b.text(path_node), alias))
    elif kind == "use_wildcard":
        inner = node.named_children[0] if node.named_children else None
        out.append((join(prefix, b.text(inner)), "*", "*"))
    elif kind == "scoped_use_list":
        _rust_use(b, _field(node, "list"), join(prefix, b.text(_field(node, "path"))), out)
    elif kind == "use_list":
        for child in node.named_children:
            _rust_use(b, child, prefix, out)


# -- C / C++ -------------------------------------------------------------------------------------------

_C_TRANSPARENT = frozenset(
    {
        "preproc_ifdef",
        "preproc_if",
        "preproc_else",
        "preproc_elif",
        "preproc_elifdef",
        "linkage_specification",
        "declaration_list",
    }
)
_C_RECORDS = {
    "struct_specifier": "struct",
    "union_specifier": "struct",
    "enum_specifier": "enum",
    "class_specifier": "class",
}
_C_NAMES = frozenset(
    {
        "identifier",
        "field_identifier",
        "type_identifier",
        "destructor_name",
        "operator_name",
        "qualified_identifier",
        "template_function",
        "namespace_identifier",
    }
)


def _c(b: _Builder, root: Node, scope: str = "", top: bool = True) -> None:
    _visit_items(_c_item, b, root, scope, top)


def _c_item(b: _Builder, node: Node, scope: str, outer: Node) -> bool:
    kind = node.type
    if kind == "preproc_include":
        path = _field(node, "path")
        system = path is not None and path.type == "system_lib_string"
        b.add_import(Import(_string_content(b, path), (), "", node.start_point.row, 0, system), node)
        return True
    if kind in _C_TRANSPARENT:
        body = _field(node, "body") if kind == "linkage_specification" else node
        conditions = {c.id for name in ("name", "condition") for c in node.children_by_field_name(name)}
        for child in body.named_children if body is not None else []:
            if child.id not in conditions and not _c_item(b, child, scope, child):
                b.loose(child)
        return True
    if kind in ("preproc_def", "preproc_function_def"):
        b.add("macro", b.text(_field(node, "name")), scope, node)
        return True
    if kind == "namespace_definition":
        name = b.text(_field(node, "name"))
        body = _field(node, "body")
        if body is not None:
            _c(b, body, f"{scope}.{name}" if scope and name else scope or name, top=True)
        return True
    if kind == "template_declaration":
        inner = next((c for c in node.named_children if c.type not in ("template_parameter_list",)), None)
        return inner is not None and _c_item(b, inner, scope, outer)
    if kind == "function_definition":
        name, owner = _c_declarator_name(b, _field(node, "declarator"))
        owner_scope = ".".join(p for p in (scope, owner) if p)
        b.add("method" if owner else "function", name, owner_scope, outer, _field(node, "body"))
        return True
    if kind in _C_RECORDS and _field(node, "body") is not None:
        _c_record(b, node, scope, outer, b.text(_field(node, "name")))
        return True
    if kind == "type_definition":
        type_node = _field(node, "type")
        name = (
            b.text(node.children_by_field_name("declarator")[-1])
            if node.children_by_field_name("declarator")
            else ""
        )
        if type_node is not None and type_node.type in _C_RECORDS and _field(type_node, "body") is not None:
            _c_record(b, type_node, scope, outer, name)
            tag = b.text(_field(type_node, "name"))
            if tag and tag != name:
                b.add(_C_RECORDS[type_node.type], tag, scope, outer)
        else:
            b.add("type", name, scope, outer)
        return True
    if kind in ("alias_declaration", "type_alias_declaration"):
        b.add("type", b.text(_field(node, "name")), scope, outer)
        return True
    if kind in ("declaration", "field_declaration"):
        type_node = _field(node, "type")
        if type_node is not None and type_node.type in _C_RECORDS and _field(type_node, "body") is not None:
            _c_record(b, type_node, scope, outer, b.text(_field(type_node, "name")))
            return True
        found = False
        for decl in node.children_by_field_name("declarator"):
            name, owner = _c_declarator_name(b, decl)
            is_function = any(n.type == "function_declarator" for n in _descendants(decl))
            b.add(
                "function" if is_function else "variable",
                name,
                ".".join(p for p in (scope, owner) if p),
                outer,
            )
            found = found or bool(name)
        return found
    return False


def _c_record(b: _Builder, node: Node, scope: str, outer: Node, name: str) -> None:
    body = _field(node, "body")
    members = [m for m in (body.named_children if body is not None else [])]
    members = [
        m.named_children[-1] if m.type == "template_declaration" and m.named_children else m for m in members
    ]
    elide = [
        cut
        for m in members
        if m.type == "function_definition" and (cut := b.body_elision(m, _field(m, "body"))) is not None
    ]
    b.add(_C_RECORDS[node.type], name, scope, outer, body, elide)
    if node.type != "class_specifier" and node.type != "struct_specifier":
        return
    qual = f"{scope}.{name}" if scope else name
    for m in members:
        if m.type == "function_definition":
            member, _ = _c_declarator_name(b, _field(m, "declarator"))
            b.add("method", member, qual, m, _field(m, "body"))
        elif m.type == "field_declaration" and any(
            n.type == "function_declarator"
            for d in m.children_by_field_name("declarator")
            for n in _descendants(d)
        ):
            for d in m.children_by_field_name("declarator"):
                b.add("method", _c_declarator_name(b, d)[0], qual, m)
        elif m.type in _C_RECORDS and _field(m, "body") is not None:
            _c_record(b, m, qual, m, b.text(_field(m, "name")))
        elif m.type == "field_declaration":
            record = _field(m, "type")
            if record is not None and record.type in _C_RECORDS and _field(record, "body") is not None:
                _c_record(b, record, qual, m, b.text(_field(record, "name")))


def _c_declarator_name(b: _Builder, node: Node | None) -> tuple[str, str]:
    """(name, owner) of a declarator: `*make(void)` -> (make, ""); `geo::Shape::area()` -> (area,
    geo.Shape)."""
    while node is not None and node.type not in _C_NAMES:
        inner = _field(node, "declarator")
        if inner is None:
            inner = next(
                (c for c in node.named_children if c.type in _C_NAMES or _field(c, "declarator")), None
            )
        node = inner
    if node is None:
        return "", ""
    text = b.text(node)
    if node.type == "qualified_identifier" or "::" in text:
        parts = [p for p in re.sub(r"<[^<>]*>", "", text).split("::") if p]
        return (parts[-1] if parts else text), ".".join(parts[:-1])
    return text, ""


_VISITORS: dict[str, Callable[[_Builder, Node], None]] = {
    "python": _python,
    "javascript": _js,
    "typescript": _js,
    "tsx": _js,
    "java": _java,
    "go": _go,
    "rust": _rust,
    "c": _c,
    "cpp": _c,
}
