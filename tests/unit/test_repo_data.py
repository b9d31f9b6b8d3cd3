"""Training data from a team repository: a real git repository built in the test, with a history.
The newest commits' files are held out whole (never in any training sample), secrets and files the
index refuses never reach training, history edits rebuild each commit's file, and LintSeq and
history samples are FIM samples of real program states."""

from __future__ import annotations

from pathlib import Path

import pytest

from splice.training.lintseq import apply_unified_diff
from splice.training.repo_data import RepoDataError, commits, history_edits, repository_dataset
from splice_testkit.gitrepo import SECRET, commit, team_repository


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return team_repository(tmp_path / "team")


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
    commit(repo, {f"gen/m{i}.py": f"X{i} = {i}\n" for i in range(30)}, when=3000)
    commit(repo, {"docs/conf.py": "project = 'team-b'\n"}, when=4000)
    data = repository_dataset(repo, heldout_commits=1, heldout_min_files=1, max_commit_files=20)
    assert data.skipped.get("history_huge_commit", 0) >= 1
    assert not any(s.path.startswith("gen/") for s in data.history)


def test_not_a_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepoDataError, match="not a git checkout"):
        repository_dataset(tmp_path)


def test_accepted_completions_in_the_repository_become_samples(repo: Path) -> None:
    core = repo / "pkg" / "core.py"
    records = [
        {"filepath": core.as_uri(), "prefix": "def add(a, b):\n    ", "suffix": "\n", "text": "return a + b"},
        {"filepath": "pkg/core.py", "prefix": "x = ", "suffix": "", "text": "1"},
        {"filepath": "/elsewhere/core.py", "prefix": "", "suffix": "", "text": "outside"},  # not in the repo
        {"filepath": "../team/pkg/core.py", "prefix": "", "suffix": "", "text": "climbs out"},
        {"filepath": "tests/test_core.py", "prefix": "", "suffix": "", "text": "held out"},
        {"filepath": "pkg/config.py", "prefix": "", "suffix": "", "text": "a secret file"},
    ]
    data = repository_dataset(repo, heldout_commits=1, heldout_min_files=1, accepted=records)
    assert "tests/test_core.py" in data.heldout_files
    assert [(s.path, s.middle) for s in data.accepted] == [
        ("pkg/core.py", "return a + b"),
        ("pkg/core.py", "1"),
    ]
    assert data.summary()["accepted_samples"] == 2
