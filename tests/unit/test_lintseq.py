"""LintSeq: every intermediate state of a sampled sequence lints clean, and applying the diffs in
order to an empty file rebuilds the file exactly. Property-tested on many real files (the Python
standard library's own modules, which every machine has) and on other languages via tree-sitter."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splice.training.lintseq import (
    LintSeqError,
    apply_unified_diff,
    edit_sequence,
    lint_python,
    linter_for,
    sample_states,
)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if 20 <= text.count("\n") <= 250 and not lint_python(text.splitlines(keepends=True)):
            files.append(path)
    return files


STDLIB = _stdlib_files()

JS = """import { join } from "path";

export function greet(name) {
  const parts = ["hello", name];
  if (parts.length > 1) {
    return join(...parts);
  }
  return name;
}

class Box {
  constructor(value) {
    this.value = value;
  }
  get() {
    return this.value;
  }
}
"""


def _check(text: str, language: str, seed: int) -> None:
    steps = edit_sequence(text, language, random.Random(seed))
    lint = linter_for(language)
    assert steps and steps[0].before == ""
    state = ""
    for step in steps:
        assert not lint(step.after.splitlines(keepends=True)), step.after
        assert step.after.count("\n") > step.before.count("\n")  # insertions only
        assert not any(line.startswith("-") and not line.startswith("---") for line in step.diff.splitlines())
        state = apply_unified_diff(state, step.diff)
        assert state == step.after
    assert state == text if text.endswith("\n") else text + "\n"


def test_there_are_many_real_files_to_sample() -> None:
    assert len(STDLIB) >= 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=10_000), seed=st.integers(min_value=0, max_value=2**31))
def test_python_states_lint_clean_and_diffs_rebuild_the_file(index: int, seed: int) -> None:
    path = STDLIB[index % len(STDLIB)]
    _check(path.read_text(encoding="utf-8", errors="replace"), "python", seed)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31))
def test_javascript_states_parse_without_errors(seed: int) -> None:
    _check(JS, "javascript", seed)


def test_deleting_a_definition_deletes_its_uses() -> None:
    """The linter's part: a state never keeps a use of a name whose definition was deleted."""
    text = "import os\n\n\ndef home():\n    return os.environ['HOME']\n\n\nprint(home())\n"
    for seed in range(30):
        for state in sample_states(text, "python", random.Random(seed)):
            if "import os" not in state:
                assert "os.environ" not in state, state
            if "def home" not in state:
                assert "print(home())" not in state, state


def test_a_file_that_does_not_lint_clean_is_refused() -> None:
    with pytest.raises(LintSeqError, match="lint clean"):
        sample_states("print(undefined_name)\n", "python", random.Random(0))
    with pytest.raises(LintSeqError, match="no linter"):
        linter_for("cobol")


def test_a_file_without_a_final_newline_gets_one() -> None:
    steps = edit_sequence("x = 1\ny = x", "python", random.Random(3))
    assert steps[-1].after == "x = 1\ny = x\n"


def test_a_diff_whose_context_does_not_match_is_an_error() -> None:
    steps = edit_sequence("a = 1\nb = 2\nc = a + b\n", "python", random.Random(1))
    with pytest.raises(ValueError, match="does not match"):
        apply_unified_diff("zzz\nyyy\nxxx\n", steps[-1].diff)
