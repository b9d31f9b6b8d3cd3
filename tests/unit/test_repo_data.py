"""Training data from a team repository: a real git repository built in the test, with a history.
The newest commits' files are held out whole (never in any training sample), secrets and files the
index refuses never reach training, history edits rebuild each commit's file, and LintSeq and
history samples are FIM samples of real program states."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from splice.training.lintseq import apply_unified_diff
from splice.training.repo_data import RepoDataError, commits, history_edits, repository_dataset

SECRET = "AKIA" + "Q" * 16  # an AWS access key id shape


def _git(root: Path, *args: str, when: int = 0) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_AUTHOR_DATE": f"{1_700_000_000 + when} +0000",
        "GIT_COMMITTER_DATE": f"{1_700_000_000 + when} +0000",
    }
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def _commit(root: Path, files: dict[str, str], when: int, message: str = "change") -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message, when=when)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "team"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    _commit(root, {
        "pkg/core.py": "def add(a, b):\n    return a + b\n",
        "pkg/util.py": "import os\n\n\ndef home():\n    return os.environ.get('HOME', '')\n",
        "pkg/config.py": f"AWS_KEY = '{SECRET}'\n",
        "vendor/lib.py": "def vendored():\n    return 1\n",
        "docs/conf.py": "project = 'team'\n",
    }, when=0)  # fmt: skip
    for i in range(1, 6):  # older history on core.py and util.py
        _commit(root, {
            "pkg/core.py": "def add(a, b):\n    return a + b\n" + "".join(
                f"\n\ndef f{k}(x):\n    return x * {k}\n" for k in range(i)
            ),
        }, when=100 * i)  # fmt: skip
    _commit(
        root, {"pkg/util.py": "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n"}, when=1000
    )
    test = "from pkg.core import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    _commit(root, {"tests/test_core.py": test}, when=2000)
    return root


def test_newest_commits_files_are_held_out_and_never_trained_on(repo: Path) -> None:
    data = repository_dataset(repo, heldout_commits=2, heldout_min_files=2, lintseq_per_file=3)
    assert set(data.heldout_files) == {"pkg/util.py", "tests/test_core.py"}
    assert "pkg/core.py" in data.train_files
    assert not set(data.heldout_files) & set(data.train_files)
    for sample in data.lintseq + data.history:
        assert sample.path not in data.heldout_files, sample.path
    assert data.history and all(s.path == "pkg/core.py" for s in data.history)
    assert data.lintseq and {s.path for s in data.lintseq} <= set(data.train_files)


def test_secrets_and_refused_files_never_reach_training(repo: Path) -> None:
    data = repository_dataset(repo, heldout_commits=1, heldout_min_files=1)
    every = list(data.train_files.values()) + list(data.heldout_files.values())
    every += [s.prefix + s.middle + s.suffix for s in data.lintseq + data.history]
    assert not any(SECRET in text for text in every)
    assert "pkg/config.py" not in data.train_files
    assert "vendor/lib.py" not in data.train_files


def test_history_edits_rebuild_each_commits_file(repo: Path) -> None:
    history = commits(repo)
    assert [len(c.parents) for c in history][:2] == [0, 1]
    edits = history_edits(
        repo, history, exclude=set(), exclude_commits=set(), cutoff=10**12, max_commits=100,
        max_commit_files=20, max_commit_lines=800, max_file_bytes=100_000, skipped={},
    )  # fmt: skip
    assert len(edits) >= 6
    for edit in edits:
        assert apply_unified_diff(edit.before, edit.diff) == edit.after


def test_history_samples_are_insertions_in_the_commits_file(repo: Path) -> None:
    data = repository_dataset(repo, heldout_commits=1, heldout_min_files=1)
    assert data.history
    for sample in data.history:
        assert sample.middle.strip()
        assert "def f" in sample.middle or "expanduser" in sample.middle  # what the commits added


def test_huge_commits_are_skipped(repo: Path) -> None:
    _commit(repo, {f"gen/m{i}.py": f"X{i} = {i}\n" for i in range(30)}, when=3000)
    _commit(repo, {"docs/conf.py": "project = 'team-b'\n"}, when=4000)
    data = repository_dataset(repo, heldout_commits=1, heldout_min_files=1, max_commit_files=20)
    assert data.skipped.get("history_huge_commit", 0) >= 1
    assert not any(s.path.startswith("gen/") for s in data.history)


def test_not_a_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepoDataError, match="not a git checkout"):
        repository_dataset(tmp_path)
