"""Training data from one team's repository (a git checkout), with a held-out split that training
never sees.

- **Split by time and by file**: the files changed by the newest commits (`heldout_commits`, and at
  least `heldout_min_files` files) are held out whole: their current text is the gate's evaluation
  set, and no training sample comes from them (no FIM sample, no LintSeq sequence, no history hunk,
  no version of them from any commit).
- **Files** (FIM samples, the pipeline `splice finetune --data` uses) are what the repository index
  would read: `retrieval.files.walk` refuses secrets, vendored, generated, minified, hidden and
  gitignored files, and the same checks run on every blob read from history.
- **LintSeq** sequences (`training.lintseq`): each step is an insertion; it becomes a FIM sample
  whose middle is the inserted block, in the intermediate program around it.
- **Git history**: per commit older than the held-out ones (merges, commits touching more than
  `max_commit_files` files or `max_commit_lines` lines, and unreadable blobs skipped), per file,
  the hunks in order as (before, diff, after) records; each added block becomes a FIM sample in the
  commit's resulting file.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from splice.retrieval.files import WalkConfig, check_content, check_path, walk
from splice.retrieval.languages import language_for_path
from splice.training.lintseq import LintSeqError, edit_sequence, unified_diff
from splice.training.repo_context import RepoSample

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, done, total)


class RepoDataError(ValueError):
    """The path is not a usable git checkout."""


@dataclass(frozen=True)
class HistoryEdit:
    """One file's change in one commit: `before` + `diff` = `after`."""

    commit: str
    time: int
    path: str
    before: str
    after: str
    diff: str


@dataclass
class RepoDataset:
    name: str
    train_files: dict[str, str]  # path -> current text
    heldout_files: dict[str, str]
    heldout_commits: list[str]
    cutoff_time: int  # commits at or after this time are held out
    lintseq: list[RepoSample] = field(default_factory=list)
    history: list[RepoSample] = field(default_factory=list)
    history_edits: int = 0
    accepted: list[RepoSample] = field(default_factory=list)  # completions the team accepted
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "repository": self.name,
            "train_files": len(self.train_files),
            "heldout_files": len(self.heldout_files),
            "heldout_commits": len(self.heldout_commits),
            "cutoff_time": self.cutoff_time,
            "lintseq_samples": len(self.lintseq),
            "history_edits": self.history_edits,
            "history_samples": len(self.history),
            "accepted_samples": len(self.accepted),
            "skipped": dict(self.skipped),
        }


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RepoDataError(f"git {' '.join(args[:2])} failed in {root}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def _blob(root: Path, commit: str, path: str) -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(root), "show", f"{commit}:{path}"], capture_output=True, check=False
    )
    if proc.returncode != 0 or check_content(proc.stdout) is not None:
        return None
    return proc.stdout.decode("utf-8")


@dataclass(frozen=True)
class Commit:
    sha: str
    time: int
    parents: tuple[str, ...]
    files: tuple[str, ...]
    lines: int


def commits(root: Path) -> list[Commit]:
    """The checkout's commits (HEAD's ancestry), oldest first, with the files and lines each changed."""
    out = _git(root, "log", "--reverse", "--numstat", "--format=@@%H %ct %P", "HEAD")
    found: list[Commit] = []
    head: list[str] | None = None
    files: list[str] = []
    lines = 0

    def flush() -> None:
        if head is not None:
            found.append(Commit(head[0], int(head[1]), tuple(head[2:]), tuple(files), lines))

    for line in out.splitlines():
        if line.startswith("@@"):
            flush()
            head, files, lines = line[2:].split(), [], 0
        elif line.strip():
            added, removed, path = line.split("\t", 2)
            if " => " in path:  # a rename: keep the new name
                path = re.sub(r"\{[^{}]* => ([^{}]*)\}", r"\1", path).replace("//", "/")
                path = path.split(" => ")[-1]
            files.append(path)
            lines += (int(added) if added.isdigit() else 0) + (int(removed) if removed.isdigit() else 0)
    flush()
    return found


def split_by_time(
    history: list[Commit], current: set[str], heldout_commits: int, min_files: int
) -> tuple[set[str], list[str], int]:
    """(held-out files, held-out commits, cutoff time): the current files changed by the newest
    commits, taking more commits until at least `min_files` files are held out."""
    held: set[str] = set()
    taken: list[str] = []
    cutoff = history[-1].time + 1 if history else 0
    for commit in reversed(history):
        if len(taken) >= heldout_commits and len(held) >= min_files:
            break
        if len(commit.parents) > 1:
            continue
        changed = {p for p in commit.files if p in current}
        if not changed:
            continue
        held |= changed
        taken.append(commit.sha)
        cutoff = commit.time
    return held, taken, cutoff


def lintseq_samples(
    files: dict[str, str], rng: random.Random, per_file: int, max_lines: int, skipped: dict[str, int]
) -> list[RepoSample]:
    """`per_file` FIM samples per file, drawn from one LintSeq sequence of it."""
    samples: list[RepoSample] = []
    for path, text in files.items():
        language = language_for_path(path)
        if language is None or text.count("\n") > max_lines:
            skipped["lintseq_too_long"] = skipped.get("lintseq_too_long", 0) + 1
            continue
        try:
            steps = edit_sequence(text, language, rng, path=path)
        except LintSeqError:
            skipped["lintseq_not_clean"] = skipped.get("lintseq_not_clean", 0) + 1
            continue
        for step in rng.sample(steps, min(per_file, len(steps))):
            sample = _insertion_sample(path, step.before, step.after)
            if sample is not None:
                samples.append(sample)
    return samples


def _insertion_sample(path: str, before: str, after: str) -> RepoSample | None:
    """The first block `after` adds to `before`, as a FIM sample inside `after`."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    for tag, _i1, _i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag in ("insert", "replace") and "".join(b[j1:j2]).strip():
            return RepoSample(
                repository="", path=path, context="",
                prefix="".join(b[:j1]), middle="".join(b[j1:j2]), suffix="".join(b[j2:]),
            )  # fmt: skip
    return None


def history_edits(
    root: Path,
    history: list[Commit],
    *,
    exclude: set[str],
    exclude_commits: set[str],
    cutoff: int,
    max_commits: int,
    max_commit_files: int,
    max_commit_lines: int,
    max_file_bytes: int,
    skipped: dict[str, int],
    progress: Progress | None = None,
) -> list[HistoryEdit]:
    """(before, diff, after) per file and commit, for the newest `max_commits` usable commits
    older than `cutoff`, never touching an excluded (held-out) path."""
    usable = []
    for commit in history:
        if commit.time >= cutoff or commit.sha in exclude_commits:
            continue
        if len(commit.parents) != 1:
            skipped["history_merge_or_root"] = skipped.get("history_merge_or_root", 0) + 1
        elif len(commit.files) > max_commit_files or commit.lines > max_commit_lines:
            skipped["history_huge_commit"] = skipped.get("history_huge_commit", 0) + 1
        else:
            usable.append(commit)
    usable = usable[-max_commits:]
    edits: list[HistoryEdit] = []
    for n, commit in enumerate(usable):
        if progress is not None:
            progress("history", n, len(usable))
        for path in commit.files:
            if path in exclude or check_path(path) is not None:
                continue
            before = _blob(root, commit.parents[0], path)
            after = _blob(root, commit.sha, path)
            if before is None or after is None or before == after:
                continue
            if max(len(before), len(after)) > max_file_bytes:
                skipped["history_large_file"] = skipped.get("history_large_file", 0) + 1
                continue
            edits.append(
                HistoryEdit(commit.sha, commit.time, path, before, after, unified_diff(before, after, path))
            )
    return edits


def accepted_samples(records: list[dict[str, str]], root: Path, allowed: set[str]) -> list[RepoSample]:
    """Accepted completions (`select` events' {filepath, prefix, suffix, text}) in the `allowed`
    files (the training files: not held out, not refused by the index): prefix, accepted text as
    the middle, suffix."""
    samples = []
    for record in records:
        rel = repository_path(record.get("filepath", ""), root)
        if rel is None or rel not in allowed or not record.get("text", "").strip():
            continue
        samples.append(RepoSample("", rel, "", record["prefix"], record["text"], record["suffix"]))
    return samples


def repository_path(filepath: str, root: Path) -> str | None:
    """`filepath` (a file:// uri, an absolute path, or a path relative to the repository) as a
    POSIX path relative to `root`, if it names a file inside it."""
    if filepath.startswith("file://"):
        filepath = unquote(urlparse(filepath).path)
    path = Path(filepath)
    try:
        rel = path.resolve().relative_to(root.resolve()) if path.is_absolute() else path
    except ValueError:
        return None
    if ".." in rel.parts or not (root / rel).is_file():
        return None
    return rel.as_posix()


def repository_dataset(
    root: Path,
    *,
    heldout_commits: int = 20,
    heldout_min_files: int = 8,
    lintseq_per_file: int = 4,
    lintseq_max_lines: int = 400,
    history_commits: int = 300,
    max_commit_files: int = 20,
    max_commit_lines: int = 800,
    max_file_bytes: int = 200_000,
    seed: int = 0,
    use_lintseq: bool = True,
    use_history: bool = True,
    accepted: list[dict[str, str]] | None = None,
    progress: Progress | None = None,
) -> RepoDataset:
    root = root.resolve()
    if not (root / ".git").exists():
        raise RepoDataError(f"{root} is not a git checkout (no .git)")
    current: dict[str, str] = {}
    for source in walk(root, WalkConfig(max_file_bytes=max_file_bytes)):
        raw = (root / source.path).read_bytes()
        if check_content(raw, max_file_bytes) is None:
            current[source.path] = raw.decode("utf-8")
    if not current:
        raise RepoDataError(f"{root} has no source files the index would read")
    history = commits(root)
    min_files = min(heldout_min_files, max(1, len(current) // 5))  # a small repository keeps most to train
    held, taken, cutoff = split_by_time(history, set(current), heldout_commits, min_files)
    if len(held) >= len(current):
        raise RepoDataError(f"{root}: every file would be held out; the repository is too small")
    data = RepoDataset(
        name=root.name,
        train_files={p: t for p, t in current.items() if p not in held},
        heldout_files={p: current[p] for p in sorted(held)},
        heldout_commits=taken,
        cutoff_time=cutoff,
    )
    rng = random.Random(seed)
    if use_lintseq:
        data.lintseq = lintseq_samples(
            data.train_files, rng, lintseq_per_file, lintseq_max_lines, data.skipped
        )
    if use_history:
        edits = history_edits(
            root, history, exclude=held, exclude_commits=set(taken), cutoff=cutoff,
            max_commits=history_commits,
            max_commit_files=max_commit_files, max_commit_lines=max_commit_lines,
            max_file_bytes=max_file_bytes, skipped=data.skipped, progress=progress,
        )  # fmt: skip
        data.history_edits = len(edits)
        for edit in edits:
            sample = _insertion_sample(edit.path, edit.before, edit.after)
            if sample is not None:
                data.history.append(sample)
    data.accepted = accepted_samples(accepted or [], root, set(data.train_files))
    log.info("repository data: %s", data.summary())
    return data
