"""`splice bench next-edit` and `splice bench edit-context` end to end on a tiny model and a
generated edit history (small form): every step is scored against the next one, and the table
and JSON say how often the window changes and what the model answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from integration.test_bench_edits import history

from splice.training.edit_samples import split_of

BENCH = [sys.executable, "-m", "splice.assistant", "bench"]


def test_next_edit_bench_scores_each_step_against_the_next(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = history(tmp_path)
    split = split_of("gen/m.py")  # the generated history's split, whichever it is
    out = tmp_path / "next.json"
    proc = subprocess.run(
        [*BENCH, "next-edit", "--data", str(data), "--model", str(tiny_model_dir), "--split", split,
         "--limit", "5", "--lines", "2", "--prompt-tokens", "256", "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 2  # 3 steps: steps 1 and 2 have a next step
    for row in rows:
        assert row["exact"] == (row["predicted"] == row["truth"])
        assert row["changes_window"] == (row["truth"] != row["window"])
        if row["no_change_answer"]:
            assert row["predicted"] == row["window"]
    assert result["all"]["steps"] == 2
    assert result["window_changes"]["steps"] + result["window_stays"]["steps"] == 2
    assert "latency per suggestion" in proc.stdout
    # one document cache per history, as in the service: the second step reuses the first's KV
    assert result["document_cache"] is True
    assert rows[1]["encoded_prompt_tokens"] < rows[1]["prompt_tokens"]
    assert 0 < result["encoded_prompt_share"] < 1


def test_edit_context_bench_pairs_with_and_without(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = history(tmp_path)
    out = tmp_path / "ctx.json"
    proc = subprocess.run(
        [*BENCH, "edit-context", "--data", str(data), "--model", str(tiny_model_dir),
         "--split", split_of("gen/m.py"), "--limit", "3", "--prompt-tokens", "256", "--max-tokens", "4",
         "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["steps"] >= 1
    assert all(r["edit_tokens"] > 0 for r in result["rows"])  # the slot held the earlier steps
    assert result["em_gained"] + result["em_lost"] <= result["steps"]


def test_bad_flags_are_clear_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*BENCH, "next-edit", "--data", str(history(tmp_path)), "--lines", "30"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "--lines must be in 0..20" in proc.stderr
