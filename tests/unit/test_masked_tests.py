"""The gate's masked-line test check: which tests exercise which function, which lines can be
masked, and the sandboxed runs of a real repository's real pytest suite that keep a task only when
its tests pass on the original and fail without the line; then a whole team job on a tiny model
whose gate reports the test pass rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from splice.training import masked_tests
from splice.training.gate import TaskScore, paired_report
from splice.training.masked_tests import RepoTestRunner, mask_candidates, masked_line_tasks, masked_text
from splice.training.team import TeamJobSpec, run_team_job
from splice_testkit.gitrepo import commit, git
from splice_testkit.tiny import save_model_dir

CORE = '''\
"""Arithmetic."""


def add(a, b):
    """Sum."""
    unused = 0
    total = a + b
    return total


def scale(
    x,
    k,
):
    if k < 0:
        raise ValueError("negative")
    return x * k


def lonely(x):
    return x - 1


class Box:
    def __init__(self, x):
        self.x = x

    def double(self):
        return self.x * 2
'''

TESTS = """\
from pkg.core import Box, add, scale


def test_add():
    assert add(2, 3) == 5


class TestBox:
    def test_double(self):
        assert Box(4).double() == 8


def test_scale():
    assert scale(2, 3) == 6
"""


def _repo(root: Path) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    helper = "def helper(x):\n    return x\n" + "".join(
        f"\n\ndef h{k}(x):\n    return x + {k}\n" for k in range(6)
    )
    commit(root, {"pkg/__init__.py": "", "pkg/helpers.py": helper, "tests/test_core.py": TESTS}, when=0)
    commit(root, {"pkg/core.py": CORE}, when=100)
    return root


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.py") if ".git" not in p.parts}


def test_the_index_maps_names_to_the_tests_that_use_them() -> None:
    index = masked_tests.tests_by_name({"tests/test_core.py": TESTS, "pkg/core.py": CORE})
    assert index["add"] == ["tests/test_core.py::test_add"]
    assert index["double"] == ["tests/test_core.py::TestBox::test_double"]
    assert index["Box"] == ["tests/test_core.py::TestBox::test_double"]
    assert "lonely" not in index  # core.py is not a test file; nothing tests it


def test_maskable_lines_are_one_line_statements_of_functions() -> None:
    lines = CORE.splitlines()
    got = {(c.function, lines[c.line].strip()) for c in mask_candidates("pkg/core.py", CORE)}
    assert ("add", "total = a + b") in got and ("add", "unused = 0") in got
    assert ("scale", 'raise ValueError("negative")') in got and ("scale", "return x * k") in got
    assert ("Box.double", "return self.x * 2") in got and ("Box.__init__", "self.x = x") in got
    texts = {text for _, text in got}
    assert '"""Sum."""' not in texts and "x," not in texts and "if k < 0:" not in texts
    init = next(c for c in mask_candidates("pkg/core.py", CORE) if c.function == "Box.__init__")
    assert init.references == ("Box",)  # a dunder is found through its class


def test_tasks_keep_only_lines_their_tests_depend_on(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo")
    files = _files(root)
    with RepoTestRunner(root, timeout_s=60) as runner:
        tasks = masked_line_tasks(files, {"pkg/core.py": files["pkg/core.py"]}, runner, limit=10, seed=1)
        assert runner.runs >= len(tasks) + 1
        assert tasks, "add, scale, Box.double and Box.__init__ all have tests that depend on lines"
        functions = set()
        for task in tasks:
            assert task.tests and all(t.startswith("tests/test_core.py::") for t in task.tests)
            assert task.target not in {"unused = 0", "return x - 1", 'raise ValueError("negative")'}
            original = task.prefix + task.target + "\n" + task.suffix
            assert original == files["pkg/core.py"]
            # the true line passes, a wrong one fails, and the copy is restored between runs
            assert runner.passes(task.path, original, task.tests)
            assert not runner.passes(task.path, masked_text(original, task.line, "return None"), task.tests)
            assert runner.passes(task.path, original, task.tests)
            functions.add(task.line)
        assert len(functions) == len(tasks)  # one line per function
    assert (root / "pkg/core.py").read_text() == CORE  # the checkout itself is never written


def test_tests_that_cannot_run_here_give_no_task(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo")
    broken = TESTS.replace("from pkg.core", "import not_installed_anywhere\nfrom pkg.core")
    (root / "tests/test_core.py").write_text(broken)
    files = _files(root)
    with RepoTestRunner(root) as runner:
        assert masked_line_tasks(files, {"pkg/core.py": CORE}, runner, limit=4) == []


def test_the_report_pairs_test_results_and_a_lower_pass_rate_does_not_beat() -> None:
    before = [TaskScore(False, 0.5, 2.0, True), TaskScore(False, 0.5, 2.0, True), TaskScore(True, 1.0, 1.0)]
    after = [TaskScore(False, 0.6, 1.0, False), TaskScore(False, 0.6, 1.0, True), TaskScore(True, 1.0, 0.5)]
    report = paired_report(before, after)
    tests = report["tests_pass_rate"]
    assert (tests["tasks"], tests["before"], tests["after"], tests["lost"], tests["gained"]) == (
        2,
        1.0,
        0.5,
        1,
        0,
    )
    assert not report["beats_current"]  # loss and similarity improved; the tests did not
    assert paired_report(before, before)["tests_pass_rate"]["p_value"] == 1.0
    assert "tests_pass_rate" not in paired_report(before[2:], after[2:])


def test_a_team_job_gates_on_the_repositorys_tests(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo")
    model = save_model_dir(tmp_path / "tiny", "starcoder", "llama", max_position_embeddings=1024)
    spec = TeamJobSpec(
        repo=str(root), out=str(tmp_path / "job"), model=str(model), base_adapter=None, max_steps=2,
        batch_size=2, seq_len=128, gate_tasks=3, gate_test_tasks=3, heldout_commits=1, lr=5e-3,
    )  # fmt: skip
    phases: list[str] = []
    report = run_team_job(spec, progress=lambda p: phases.append(p["phase"]))
    tests = report["gate"]["tests_pass_rate"]
    assert "gate_tests" in phases and 1 <= tests["tasks"] <= 3
    assert 0.0 <= tests["before"] <= 1.0 and 0.0 <= tests["after"] <= 1.0
    assert (tmp_path / "job" / "gate-tested.json").is_file()


def test_bad_gate_test_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gate_test_tasks"):
        TeamJobSpec(repo=str(tmp_path), out=str(tmp_path / "o"), gate_test_tasks=-1)
