"""ruff, mypy and the package dependency direction, enforced in CI.

Dependency direction (ARCHITECTURE.md): kernels <- completion <- assistant; retrieval <- assistant;
training may use completion (and kernels, and retrieval's file rules) but never assistant;
assistant's CLI drives training; nothing imports assistant.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("assistant", "completion", "retrieval", "training", "kernels", "bench")
ALLOWED = {
    "kernels": set(),
    "completion": {"kernels"},
    "retrieval": set(),
    "training": {"completion", "kernels", "retrieval"},
    "bench": {"completion", "kernels", "retrieval", "training"},
    "assistant": {"completion", "retrieval", "kernels", "bench", "training"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "splice" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) - ALLOWED[package] - {package}
        assert not bad, (
            f"{path.relative_to(ROOT)} imports splice.{sorted(bad)}; allowed: {sorted(ALLOWED[package])}"
        )


def test_packaging_lists_every_subpackage() -> None:
    """Every folder holding Python modules is installed (setuptools lists them explicitly).

    They are namespace packages (no `__init__.py`, see tests/unit/test_no_shadowing.py), so the
    list is checked against the folders that hold `.py` files.
    """
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {
        "splice." + ".".join(p.parent.relative_to(ROOT).parts)
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert present == listed


def test_ruff_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean(tmp_path: Path) -> None:
    # mypy cannot follow setuptools' editable-install finder, so present the sources to it
    # under their installed names through a tree of symlinks.
    tree = tmp_path / "splice"
    tree.mkdir()
    for pkg in PACKAGES:
        (tree / pkg).symlink_to(ROOT / pkg)
    if (
        shutil.which("mypy") is None
        and subprocess.run([sys.executable, "-m", "mypy", "--version"]).returncode
    ):
        pytest.fail("mypy is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "splice",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The README's second command is what CI runs (after installing its system packages)."""
    root = Path(__file__).resolve().parents[2]
    blocks = [b.split("```", 1)[0].strip() for b in (root / "README.md").read_text().split("```bash\n")[1:]]
    ci_lines = [line for line in (root / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert blocks[1] == ci_lines[-1], "README's test command and .ci/run's last line differ"
