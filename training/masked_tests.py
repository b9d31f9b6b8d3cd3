"""The gate's functional check: pass rate of the repository's own tests on masked lines of tested
functions in the held-out files.

A task masks one line of a function that the repository's tests exercise; the model completes the
line as the service would; the completed line is put back into a copy of the repository and the
tests that exercise the function run in the sandbox (`training.sandbox`: its own process group,
resource limits, no network). A task is kept only when its tests pass on the original file **and
fail with the line replaced by `pass`**, so that a pass means the completion did what the line
did, not that the tests never look at it.

Which tests exercise a function is read statically: a test (`test_*` function, or method of a
`Test*` class, in `test_*.py`/`*_test.py` files) exercises a function when its body names it, or
names the class whose method it is. The mutation check above removes the false positives that
matter (tests that name it but do not depend on the line).

Tests run with this interpreter by default; a repository whose tests need other packages brings
its own (`python=`, e.g. its virtualenv's interpreter). Tests that cannot run here (a missing
dependency, a server on localhost inside the sandbox's empty network namespace) fail on the
original file and never become tasks.
"""

from __future__ import annotations

import ast
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from splice.training.gate import GateTask
from splice.training.sandbox import SandboxLimits, run_program, world_executable

_RUNNER = """\
import os, sys
sys.dont_write_bytecode = True
os.chdir({root!r})
sys.path[:0] = {paths!r}
import pytest
sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", *{nodeids!r}]))
"""


def is_test_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _names(node: ast.AST) -> set[str]:
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
    return found


def tests_by_name(files: dict[str, str]) -> dict[str, list[str]]:
    """Name → pytest node ids of the tests whose bodies use it, over the test files in `files`."""
    index: dict[str, list[str]] = {}
    for path in sorted(p for p in files if is_test_file(p)):
        try:
            tree = ast.parse(files[path])
        except (SyntaxError, ValueError):
            continue
        tests: list[tuple[str, ast.AST]] = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
                tests.append((f"{path}::{node.name}", node))
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith(
                        "test"
                    ):
                        tests.append((f"{path}::{node.name}::{item.name}", item))
        for nodeid, body in tests:
            for name in _names(body):
                index.setdefault(name, []).append(nodeid)
    return index


@dataclass(frozen=True)
class MaskCandidate:
    path: str
    function: str  # Class.method or function
    line: int  # 0-based
    references: tuple[str, ...]  # the names tests would use: the function's, its class's


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[int]:
    """0-based lines of the function's one-line simple statements (not in nested functions or
    classes; no docstrings, `pass` or `...`)."""
    lines: list[int] = []

    def visit(statements: list[ast.stmt]) -> None:
        for stmt in statements:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            blocks = [getattr(stmt, field, None) for field in ("body", "orelse", "finalbody")]
            handlers = getattr(stmt, "handlers", None) or []
            if any(isinstance(block, list) and block for block in blocks) or handlers:
                for block in blocks:
                    if isinstance(block, list):
                        visit(block)
                for handler in handlers:
                    visit(handler.body)
                continue
            if isinstance(stmt, ast.Pass) or stmt.lineno != stmt.end_lineno:
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # docstrings and bare constants
            lines.append(stmt.lineno - 1)

    visit(function.body)
    return lines


def mask_candidates(path: str, text: str) -> list[MaskCandidate]:
    """Every maskable line of every function and method in one source file."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    out: list[MaskCandidate] = []

    def add(function: ast.FunctionDef | ast.AsyncFunctionDef, owner: str | None) -> None:
        refs = [n for n in (function.name, owner) if n and not _is_dunder(n)]
        name = f"{owner}.{function.name}" if owner else function.name
        for line in _body_lines(function):
            out.append(MaskCandidate(path, name, line, tuple(refs)))

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            add(node, None)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    add(item, node.name)
    return out


def import_roots(root: Path) -> list[str]:
    """Where the repository's packages import from: `src/` when it has one, and the root."""
    paths = [str(root / "src")] if (root / "src").is_dir() else []
    return [*paths, str(root)]


class RepoTestRunner:
    """Runs tests of one repository in a private copy (made on first use, removed when the `with`
    ends), with one file replaced at a time."""

    def __init__(
        self,
        repo: Path,
        *,
        python: str | None = None,
        timeout_s: float = 60.0,
        memory_bytes: int = 4 << 30,
    ) -> None:
        self.repo = repo
        self.python = python or sys.executable
        self.limits = SandboxLimits(
            timeout_s=timeout_s,
            memory_bytes=memory_bytes,
            max_processes=64,
            file_bytes=64 << 20,
            guard=False,  # pytest needs the file functions the guard takes away; the limits stay
            # as root, become nobody when nobody can run this Python (not one under /root): the
            # repository's own tests with one generated line; the limits, the process-group kill
            # and the empty network namespace hold either way
            drop_privileges=world_executable(self.python),
        )
        self._copy: Path | None = None
        self.runs = 0

    def __enter__(self) -> RepoTestRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy.parent, ignore_errors=True)
            self._copy = None

    def _make_copy(self) -> Path:
        parent = Path(tempfile.mkdtemp(prefix="splice-gate-tests-"))
        copy = parent / "repo"
        ignore = shutil.ignore_patterns(".git", "node_modules", ".venv", "__pycache__", ".tox")
        shutil.copytree(self.repo, copy, ignore=ignore, symlinks=True)
        # the sandbox may run as `nobody`: the copy is private to this run, open it to that user
        for dirpath, _dirs, filenames in os.walk(parent):
            os.chmod(dirpath, 0o777)
            for name in filenames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o666)
        return copy

    def passes(self, path: str, text: str, nodeids: tuple[str, ...]) -> bool:
        """Whether `nodeids` pass with `path` replaced by `text` (the copy is restored after)."""
        if self._copy is None:  # made on first use, removed when the `with` ends
            self._copy = self._make_copy()
        target = self._copy / path
        original = target.read_bytes()
        try:
            target.write_text(text)
            source = _RUNNER.format(
                root=str(self._copy), paths=import_roots(self._copy), nodeids=list(nodeids)
            )
            self.runs += 1
            return run_program(source, self.limits, interpreter=self.python).passed
        finally:
            target.write_bytes(original)


def masked_text(text: str, line: int, replacement: str) -> str:
    """`text` with its 0-based `line` replaced: the line's indentation, then `replacement`."""
    lines = text.splitlines(keepends=True)
    old = lines[line]
    indent = old[: len(old) - len(old.lstrip())]
    lines[line] = indent + replacement.strip() + "\n"
    return "".join(lines)


def masked_line_tasks(
    files: dict[str, str],
    heldout: dict[str, str],
    runner: RepoTestRunner,
    *,
    limit: int = 12,
    max_tests: int = 4,
    max_attempts: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[GateTask]:
    """Up to `limit` masked-line tasks (one per function) from the held-out source files, each with
    the tests that pass on the original and fail without the line (`GateTask.tests`)."""
    rng = random.Random(seed)
    index = tests_by_name(files)
    by_function: dict[tuple[str, str], list[MaskCandidate]] = {}
    for path in sorted(heldout):
        if path.endswith(".py") and not is_test_file(path):
            for cand in mask_candidates(path, heldout[path]):
                if any(ref in index for ref in cand.references):
                    by_function.setdefault((cand.path, cand.function), []).append(cand)
    functions = sorted(by_function)
    rng.shuffle(functions)
    attempts = max_attempts if max_attempts is not None else 4 * limit
    tasks: list[GateTask] = []
    original_ok: dict[tuple[str, tuple[str, ...]], bool] = {}
    for tried, key in enumerate(functions[:attempts]):
        if len(tasks) >= limit:
            break
        cand = rng.choice(by_function[key])
        nodeids = sorted({n for ref in cand.references for n in index.get(ref, [])})
        tests = tuple(sorted(rng.sample(nodeids, min(max_tests, len(nodeids)))))
        text = heldout[cand.path]
        if (cand.path, tests) not in original_ok:
            original_ok[(cand.path, tests)] = runner.passes(cand.path, text, tests)
        if original_ok[(cand.path, tests)] and not runner.passes(
            cand.path, masked_text(text, cand.line, "pass"), tests
        ):
            lines = text.splitlines(keepends=True)
            old = lines[cand.line]
            indent = old[: len(old) - len(old.lstrip())]
            tasks.append(
                GateTask(
                    path=cand.path,
                    line=cand.line,
                    prefix="".join(lines[: cand.line]) + indent,
                    target=old.strip(),
                    suffix="".join(lines[cand.line + 1 :]),
                    tests=tests,
                )
            )
        if progress is not None:
            progress(tried + 1, min(attempts, len(functions)))
    return sorted(tasks, key=lambda t: (t.path, t.line))
