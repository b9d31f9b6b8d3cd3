"""Edit-aware training samples (`training.edit_samples`): the cursor after a step, the window as
the next step leaves it, and samples whose prompts are the ones the service builds."""

from __future__ import annotations

import random
from pathlib import Path

from splice.completion.next_edit import CURRENT, DIVIDER, UPDATED, rewrite_input, window_around
from splice.retrieval.context import RenderStyle
from splice.training.edit_samples import (
    added_line_sample,
    cursor_after,
    edit_samples,
    git_history_texts,
    next_edit_sample,
    sequence_samples,
    split_of,
    true_window,
)
from splice_testkit.gitrepo import team_repository

V0 = "def area(width, height):\n    return width * height\n\n\ndef other():\n    pass\n"
V1 = V0.replace("area(width,", "area(w,")
V2 = V1.replace("return width *", "return w *")
V3 = V2.replace("    pass\n", "    return 1\n")


def test_the_cursor_is_at_the_end_of_the_last_changed_line() -> None:
    assert cursor_after(V0, V1) == V1.index("\n")  # end of line 0
    assert cursor_after(V0, V0) is None
    deleted = V0.replace("    return width * height\n", "")
    assert cursor_after(V0, deleted) == deleted.index("\n") + 1  # start of the line after the deletion


def test_the_true_window_takes_only_changes_inside_it() -> None:
    w = window_around(V1, cursor_after(V0, V1) or 0, 0, 1)  # lines 0..1
    assert true_window(w, V1, V2) == "def area(w, height):\n    return w * height\n"
    w2 = window_around(V2, cursor_after(V1, V2) or 0, 1, 0)
    assert true_window(w2, V2, V3) == w2.text  # the next step is elsewhere: no change here


def test_a_next_edit_sample_is_the_served_prompt_with_the_true_window_as_middle() -> None:
    w = window_around(V1, 3, 1, 1)
    sample = next_edit_sample("geo.py", "ctx", w, true_window(w, V1, V2))
    served = rewrite_input(w, "python", "geo.py", "ctx")
    assert sample is not None
    assert sample.prefix.endswith(CURRENT + w.text + DIVIDER + w.anchor)
    assert served.prefix.endswith(sample.prefix)  # the same prompt (the sample keeps fewer lines far away)
    assert sample.suffix.startswith(UPDATED)
    assert w.anchor == "def area(w, height):\n"
    assert (
        sample.middle == "    return w * height\n"
    )  # the window after its anchor, as the next step leaves it
    renamed_again = V1.replace("def area(w,", "def area(x,")
    assert next_edit_sample("geo.py", "", w, true_window(w, V1, renamed_again)) is None  # the anchor changed


def test_samples_from_a_sequence_show_the_steps_so_far() -> None:
    style = RenderStyle.for_language("python", "<file_sep>")
    samples = sequence_samples("geo.py", [V0, V1, V2, V3], random.Random(0), style, lambda t: len(t.split()))
    rewrites = [s for s in samples if CURRENT in s.prefix]
    fims = [s for s in samples if CURRENT not in s.prefix]
    assert len(rewrites) == 2 and len(fims) == 2  # one of each per step with a next step
    assert (
        "-def area(width, height):" in rewrites[0].context and "+def area(w, height):" in rewrites[0].context
    )
    assert fims[0].middle == "return w * height\n"  # the line step 2 adds, after its indent
    assert fims[0].prefix.endswith("    ")


def test_added_line_sample_needs_an_added_line() -> None:
    assert added_line_sample("a.py", "", V0, V0.replace("    pass\n", ""), random.Random(0)) is None


def test_the_split_is_stable_and_holds_out_about_one_in_five() -> None:
    ids = [f"history-{i}" for i in range(1000)]
    held = [i for i in ids if split_of(i) == "heldout"]
    assert 150 < len(held) < 250
    assert [split_of(i) for i in ids] == [split_of(i) for i in ids]


def test_git_history_gives_each_files_versions_and_holds_out_the_newest_commits(tmp_path: Path) -> None:
    root = team_repository(tmp_path / "team", functions=5)
    found = dict(git_history_texts(root, heldout_commits=2, min_heldout_files=1))
    assert set(found) == {"pkg/core.py"}  # the only file changed by 3+ older commits
    texts = found["pkg/core.py"]
    # its versions after each non-merge, non-root commit, oldest first: one function more each time
    assert [t.count("def f") for t in texts] == [1, 2, 3, 4, 5]
    assert len(git_history_texts(root, heldout_commits=2, min_heldout_files=1, versions=3)[0][1]) == 3
    # the files of the newest commits (pkg/util.py, tests/test_core.py) never appear
    assert not any("expanduser" in t or "test_add" in t for ts in found.values() for t in ts)
    style = RenderStyle.for_language("python", "<file_sep>")
    samples, stats = edit_samples(
        None,
        [],
        style,
        lambda t: len(t.split()),
        seed=0,
        repositories=[root],
        heldout_commits=2,
        min_heldout_files=1,
    )
    assert stats["git_files"] == 1 and stats["git_samples"] == len(samples) > 0
    assert stats["history_samples"] == stats["lintseq_samples"] == 0
