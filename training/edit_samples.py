"""Training samples for the two edit-aware prompts the service builds, from sequences of one
file's versions (real edit histories, LintSeq insertion sequences):

- **edit-context FIM**: the recent-edits slot (the steps so far as unified diffs, rendered as the
  service renders them: `RecentEdits`, `render_context`) before a FIM sample whose middle is a
  line the next step adds, so the model learns to read the slot;
- **next edit**: after each step, the window of lines around where that step ended, as the
  merge-conflict rewrite prompt of `completion.next_edit`, whose middle is the window as the
  next step leaves it: the window itself when the next step does not touch it, so "no change"
  (a copy, then the end token) is learnt as well as the edits.

Sources: the `tune` split of the real edit histories (the benchmarks score the `heldout` split,
`split_of`), LintSeq insertion sequences of corpus files, and a team repository's git history
(`git_history_texts`: a file's versions over the commits that changed it; the newest commits and
every file they touched are held out, as `splice finetune --repo` holds them out).
"""

from __future__ import annotations

import difflib
import functools
import gzip
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from splice.completion.next_edit import CURRENT, DIVIDER, UPDATED, Window, window_around
from splice.completion.recent_edits import RecentEdits
from splice.retrieval.context import RenderStyle, render_context
from splice.retrieval.files import check_path
from splice.training.lintseq import LintSeqError, apply_unified_diff, edit_sequence
from splice.training.repo_context import RepoSample
from splice.training.repo_data import _blob, _git, commits, split_by_time

MAX_FILE_CHARS = 200_000  # larger versions are generated or data, not edited code
AROUND_LINES = 40  # document lines kept before and after the window in a sample (rows are short)


def git_history_texts(
    root: Path,
    *,
    heldout_commits: int = 20,
    min_heldout_files: int = 8,
    versions: int = 6,
    max_files: int = 200,
) -> list[tuple[str, list[str]]]:
    """(path, texts) per Python file of the checkout at `root` changed by at least 3 commits: its
    versions after each of the last `versions` non-merge commits that changed it, oldest first.
    The newest `heldout_commits` commits and every file they touched are left out (the held-out
    set of a team's fine-tune and of its gate); the most edited files come first."""
    history = commits(root)
    current = set(_git(root, "ls-files").splitlines())
    held, _, cutoff = split_by_time(history, current, heldout_commits, min_heldout_files)
    per_path: dict[str, list[str]] = defaultdict(list)
    for commit in history:
        if commit.time >= cutoff or len(commit.parents) != 1:
            continue
        for path in commit.files:
            if path.endswith(".py") and path not in held and check_path(path) is None:
                per_path[path].append(commit.sha)
    found: list[tuple[str, list[str]]] = []
    for path, shas in sorted(per_path.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(found) >= max_files or len(shas) < 3:
            break
        texts: list[str] = []
        for sha in shas[-versions:]:
            text = _blob(root, sha, path)
            if text is not None and (not texts or text != texts[-1]) and len(text) < MAX_FILE_CHARS:
                texts.append(text)
        if len(texts) >= 3:
            found.append((path, texts))
    return found


def split_of(history_id: str) -> str:
    """`heldout` for one history in five (by a hash of its id), `tune` for the others."""
    return "heldout" if int(hashlib.sha1(history_id.encode()).hexdigest(), 16) % 5 == 0 else "tune"


def history_texts(path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(id, file path, texts) of each edit history: the file before it and after each step."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for row in map(json.loads, fh):
            texts = [row["original"]]
            for diff in row["steps"]:
                try:
                    texts.append(apply_unified_diff(texts[-1], diff))
                except ValueError:
                    break
            yield row["id"], row.get("path") or "file.py", texts


def cursor_after(before: str, after: str) -> int | None:
    """Where an editor's cursor is after a change: the end of its last changed line in `after`
    (None when nothing changed)."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if not ops:
        return None
    _, _, _, j1, j2 = ops[-1]
    if j2 > j1:  # the last added line, at its end
        return sum(map(len, new[: j2 - 1])) + len(new[j2 - 1].rstrip("\r\n"))
    return sum(map(len, new[:j1]))  # a deletion: the start of the line after it


def true_window(window: Window, before: str, after: str) -> str:
    """The window as `after` leaves it: the line changes whose old lines lie inside the window,
    applied to it; changes elsewhere (or straddling its edge) are not its."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    lines = old[window.start_line : window.end_line]
    out: list[str] = []
    at = window.start_line
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal" or not (window.start_line <= i1 and i2 <= window.end_line):
            continue
        if tag == "insert" and i1 == window.end_line and window.end_line < len(old):
            continue  # an insertion below the window's last line belongs to the lines after it
        out.extend(lines[at - window.start_line : i1 - window.start_line])
        out.extend(new[j1:j2])
        at = i2
    out.extend(lines[at - window.start_line :])
    return "".join(out)


def _around(before: str, after: str) -> tuple[str, str]:
    head = before.split("\n")
    tail = after.split("\n")
    return "\n".join(head[-AROUND_LINES:]), "\n".join(tail[:AROUND_LINES])


def next_edit_sample(path: str, context: str, window: Window, truth: str) -> RepoSample | None:
    """The rewrite prompt of `completion.next_edit.rewrite_input` as a training sample (None when
    the truth changes the window's anchor line, which the prompt holds fixed)."""
    body = window.text if window.text.endswith("\n") or not window.text else window.text + "\n"
    middle = truth if truth.endswith("\n") or not truth else truth + "\n"
    if not middle.startswith(window.anchor):
        return None
    before, after = _around(window.before, window.after)
    return RepoSample(
        repository="",
        path=path,
        context=context,
        prefix=before + CURRENT + body + DIVIDER + window.anchor,
        middle=middle[len(window.anchor) :],
        suffix=UPDATED + after,
    )


def added_line_sample(
    path: str, context: str, before: str, after: str, rng: random.Random
) -> RepoSample | None:
    """A FIM sample in `after` whose middle is a line `after` adds to `before` (None: none added)."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    added = [
        j
        for tag, _i1, _i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
        if tag in ("insert", "replace")
        for j in range(j1, j2)
        if new[j].strip()
    ]
    if not added:
        return None
    j = rng.choice(added)
    line = new[j]
    indent = line[: len(line) - len(line.lstrip())]
    prefix, suffix = _around("".join(new[:j]) + indent, "".join(new[j + 1 :]))
    return RepoSample(
        repository="", path=path, context=context, prefix=prefix, middle=line[len(indent) :], suffix=suffix
    )


def sequence_samples(
    path: str,
    texts: Sequence[str],
    rng: random.Random,
    style: RenderStyle,
    count_tokens: Callable[[str], int],
    *,
    edit_tokens: int = 128,
    lines: tuple[int, int] = (2, 5),
) -> list[RepoSample]:
    """Per step of `texts` with a next step: one next-edit sample and one edit-context FIM sample
    of a line the next step adds (when it adds one)."""
    samples: list[RepoSample] = []
    edits = RecentEdits()
    edits.open(path, texts[0])
    show = functools.partial(_shown_path, path)
    for i in range(1, len(texts) - 1):
        edits.change(path, texts[i])
        diff = edits.render(edit_tokens, count_tokens, show)
        context = render_context([], style, path, diff) if diff else ""
        cursor = cursor_after(texts[i - 1], texts[i])
        if cursor is not None:
            n = rng.randint(*lines)
            window = window_around(texts[i], cursor, n, n)
            sample = next_edit_sample(path, context, window, true_window(window, texts[i], texts[i + 1]))
            if sample is not None:
                samples.append(sample)
        fim = added_line_sample(path, context, texts[i], texts[i + 1], rng)
        if fim is not None:
            samples.append(fim)
    return samples


def _shown_path(path: str, _uri: str) -> str:
    return path


def edit_samples(
    histories: Path | None,
    corpus_texts: Sequence[tuple[str, str]],
    style: RenderStyle,
    count_tokens: Callable[[str], int],
    *,
    seed: int,
    lintseq_files: int = 200,
    max_lintseq_steps: int = 8,
    repositories: Sequence[Path] = (),
    heldout_commits: int = 20,
    min_heldout_files: int = 8,
) -> tuple[list[RepoSample], dict[str, int]]:
    """Samples from the `tune` split of the edit histories, from LintSeq sequences of
    `lintseq_files` corpus files ((path, text) pairs) and from the git history of `repositories`
    (checkouts), with counts per source."""
    rng = random.Random(f"{seed}:edit-samples")
    samples: list[RepoSample] = []
    stats = {
        "history_samples": 0,
        "lintseq_samples": 0,
        "git_samples": 0,
        "histories": 0,
        "lintseq_files": 0,
        "git_files": 0,
    }
    for root in repositories:
        held_out = {"heldout_commits": heldout_commits, "min_heldout_files": min_heldout_files}
        for path, texts in git_history_texts(root, **held_out):
            new = sequence_samples(path, texts, rng, style, count_tokens)
            samples += new
            stats["git_samples"] += len(new)
            stats["git_files"] += 1
    if histories is not None:
        for history, path, texts in history_texts(histories):
            if split_of(history) != "tune" or len(texts) < 3:
                continue
            new = sequence_samples(path, texts, rng, style, count_tokens)
            samples += new
            stats["history_samples"] += len(new)
            stats["histories"] += 1
    files = list(corpus_texts)
    rng.shuffle(files)
    for path, text in files:
        if stats["lintseq_files"] >= lintseq_files:
            break
        if not 20 <= text.count("\n") <= 400:
            continue
        try:
            steps = edit_sequence(text, "python", rng, path=path)
        except LintSeqError:
            continue
        if len(steps) < 3:
            continue
        start = rng.randrange(max(1, len(steps) - max_lintseq_steps))  # a late part: a file being written
        part = steps[start : start + max_lintseq_steps]
        texts = [part[0].before, *(s.after for s in part)]
        new = sequence_samples(path, texts, rng, style, count_tokens)
        samples += new
        stats["lintseq_samples"] += len(new)
        stats["lintseq_files"] += 1
    rng.shuffle(samples)
    return samples, stats
