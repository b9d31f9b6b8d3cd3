"""The import graph: which indexed files an import statement refers to, per language.

Resolution is by path, from what the chunker recorded (`Import.module`, names, level): Python
dotted and relative modules (a package indexed by its own folder, e.g. `site-packages/httpx`,
resolves `httpx._models` too), JS/TS relative specifiers with their extension and `index`
rules, Java packages, Go import paths by directory suffix, Rust `crate::`/`super::` paths, C/C++
includes relative to the including file then anywhere. Imports of code outside the repository
resolve to nothing.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict

from .store import IndexStore, StoredImport

_JS_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")


class Resolver:
    """Built from the store's file list; rebuild (cheap) after files are added or removed."""

    def __init__(self, store: IndexStore, root_name: str = "") -> None:
        states = store.file_states()
        self.paths = set(states)
        self.language = {p: s.language for p, s in states.items()}
        self.modules: dict[str, list[str]] = defaultdict(list)
        for p, s in states.items():
            if s.language == "python":
                self.modules[s.module].append(p)
        self.by_dir: dict[str, list[str]] = defaultdict(list)
        self.by_name: dict[str, list[str]] = defaultdict(list)
        for p in sorted(self.paths):
            self.by_dir[posixpath.dirname(p)].append(p)
            self.by_name[posixpath.basename(p)].append(p)
        # A package indexed by its own folder imports itself by the folder's name.
        self.root_package = root_name if "__init__.py" in self.paths else ""

    def resolve(self, from_path: str, language: str, imp: StoredImport) -> list[str]:
        """Indexed files that `imp` (in `from_path`) imports from; [] when outside the repository."""
        if language == "python":
            return self._python(from_path, imp)
        if language in ("javascript", "typescript", "tsx"):
            return self._js(from_path, imp.module)
        if language == "java":
            return self._java(imp)
        if language == "go":
            return self._go(imp.module)
        if language == "rust":
            return self._rust(from_path, imp)
        if language in ("c", "cpp"):
            return self._include(from_path, imp.module)
        return []

    # -- per language ---------------------------------------------------------------------

    def _python_module(self, dotted: str) -> list[str]:
        found = self.modules.get(dotted, [])
        if not found and self.root_package:
            if dotted == self.root_package:
                found = self.modules.get("", [])
            elif dotted.startswith(self.root_package + "."):
                found = self.modules.get(dotted[len(self.root_package) + 1 :], [])
        return list(found)

    def _python(self, from_path: str, imp: StoredImport) -> list[str]:
        if imp.level > 0:
            base = posixpath.dirname(from_path)
            for _ in range(imp.level - 1):
                base = posixpath.dirname(base)
            parts = [p for p in (base.replace("/", "."), imp.module) if p]
            dotted = ".".join(parts)
            # modules are stored without a leading src./lib. folder
            for prefix in ("src.", "lib."):
                if dotted.startswith(prefix) and dotted not in self.modules:
                    dotted = dotted[len(prefix) :]
        else:
            dotted = imp.module
        found = self._python_module(dotted)
        if imp.name and imp.name != "*":
            # `from pkg import submodule` names a module rather than a symbol
            found += self._python_module(f"{dotted}.{imp.name}" if dotted else imp.name)
        return found

    def _js(self, from_path: str, spec: str) -> list[str]:
        if not spec.startswith("."):
            return []
        target = posixpath.normpath(posixpath.join(posixpath.dirname(from_path), spec))
        candidates = [target] + [target + e for e in _JS_EXTS] + [f"{target}/index{e}" for e in _JS_EXTS]
        stem, ext = posixpath.splitext(target)
        if ext in (".js", ".mjs", ".cjs", ".jsx"):  # TS sources imported by their compiled name
            candidates += [stem + e for e in (".ts", ".tsx", ".mts", ".cts")]
        return [c for c in candidates if c in self.paths][:1]

    def _java(self, imp: StoredImport) -> list[str]:
        folder = imp.module.replace(".", "/")
        if imp.name in ("", "*"):
            return [p for d, ps in self.by_dir.items() if d == folder or d.endswith("/" + folder) for p in ps]
        # `import a.b.C.Inner` records module a.b.C: try both the class file and its package
        out = []
        for name in (imp.name, posixpath.basename(folder)):
            for p in self.by_name.get(name + ".java", []):
                d = posixpath.dirname(p)
                if d.endswith(folder) or d.endswith(posixpath.dirname(folder)):
                    out.append(p)
        return sorted(set(out))

    def _go(self, import_path: str) -> list[str]:
        best: list[str] = []
        best_len = 0
        for d, ps in self.by_dir.items():
            if not d:
                continue
            if (import_path == d or import_path.endswith("/" + d)) and len(d) > best_len:
                go = [p for p in ps if p.endswith(".go") and not p.endswith("_test.go")]
                if go:
                    best, best_len = go, len(d)
        return best

    def _rust(self, from_path: str, imp: StoredImport) -> list[str]:
        parts = [p for p in imp.module.split("::") if p]
        if not parts:
            return []
        here = posixpath.dirname(from_path)
        if parts[0] == "crate":
            parts = parts[1:]
        elif parts[0] == "self":
            parts = [*here.split("/")[1:], *parts[1:]] if "/" in here else parts[1:]
        elif parts[0] == "super":
            parts = parts[1:]
        if imp.name and imp.name != "*":
            parts = [*parts, imp.name]
        out: list[str] = []
        # longest module path that names a file: a::b::C -> a/b.rs or a/b/mod.rs (C an item)
        for n in range(len(parts), 0, -1):
            rel = "/".join(parts[:n])
            for p in self.paths:
                if not p.endswith(".rs"):
                    continue
                stem = p[: -len(".rs")]
                if stem.endswith("/mod") or stem.endswith("/lib"):
                    stem = posixpath.dirname(stem)
                if stem == rel or stem.endswith("/" + rel):
                    out.append(p)
            if out:
                return sorted(out)
        return out

    def _include(self, from_path: str, header: str) -> list[str]:
        local = posixpath.normpath(posixpath.join(posixpath.dirname(from_path), header))
        if local in self.paths:
            return [local]
        base = posixpath.basename(header)
        return [p for p in self.by_name.get(base, []) if p == header or p.endswith("/" + header)]
