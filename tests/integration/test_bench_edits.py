"""`splice bench edits` end to end on a tiny model and a generated edit history (small form)."""

from __future__ import annotations

import difflib
import gzip
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from splice.bench.edits import apply_unified_diff, first_added_line, load_steps

BENCH_EDITS = [sys.executable, "-m", "splice.assistant", "bench", "edits"]


def history_row(history_id: str = "gen/m.py") -> dict[str, object]:
    original = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(60))
    texts = [original]
    for step in range(3):
        lines = texts[-1].splitlines(keepends=True)
        at = 20 + 30 * step
        lines[at:at] = [f"def added_{step}(y):\n", f"    return y * {step}\n", "\n"]
        texts.append("".join(lines))
    steps = [
        "".join(
            difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), "a/m.py", "b/m.py")
        )
        for a, b in itertools.pairwise(texts)
    ]
    repo, _, path = history_id.partition("/")
    return {
        "id": history_id,
        "repo": repo,
        "path": path,
        "original": original,
        "steps": steps,
        "final": texts[-1],
    }


def history(tmp_path: Path, ids: tuple[str, ...] = ("gen/m.py",)) -> Path:
    path = tmp_path / "edits.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for history_id in ids:
            fh.write(json.dumps(history_row(history_id)) + "\n")
    return path


def test_spread_sampling_reaches_every_repository_and_caps_steps_per_history(tmp_path: Path) -> None:
    # The file is sorted by repository, like the public one: the first 6 steps are all repo a's.
    ids = tuple(f"{repo}/f{i}.py" for repo in "abcd" for i in range(4))
    data = history(tmp_path, ids)
    in_file_order = list(load_steps(data, 6, "edit-line", sample="file"))
    assert [h for h, _, _ in in_file_order] == ["a/f0.py", "a/f1.py"]
    assert [len(steps) for _, _, steps in in_file_order] == [3, 3]
    spread = list(load_steps(data, 4, "edit-line", per_history=1))
    assert len(spread) == 4 and all(len(steps) == 1 for _, _, steps in spread)
    assert len({h.split("/")[0] for h, _, _ in spread}) > 1  # not just the file's first repository
    assert spread == list(load_steps(data, 4, "edit-line", per_history=1))  # deterministic
    capped = list(load_steps(data, None, "edit-line", per_history=2))
    assert len(capped) == 16 and all(len(steps) == 2 for _, _, steps in capped)
    assert sorted(h for h, _, _ in capped) == sorted(ids)
    try:
        list(load_steps(data, 8, "edit-line", sample="random"))  # type: ignore[arg-type]
    except ValueError as exc:
        assert "unknown sample" in str(exc)
    else:
        raise AssertionError("an unknown sample was accepted")


def test_unified_diff_application_and_target_line(tmp_path: Path) -> None:
    with gzip.open(history(tmp_path), "rt") as fh:
        row = json.loads(fh.read())
    text = row["original"]
    for diff in row["steps"]:
        text = apply_unified_diff(text, diff)
        line = first_added_line(diff)
        assert line is not None and text.splitlines()[line].startswith("def added_")
    assert text == row["final"]


def test_next_line_task_puts_the_edit_inside_the_prompt(tmp_path: Path) -> None:
    ((_, _, edit_line),) = load_steps(history(tmp_path), None, "edit-line")
    ((_, _, next_line),) = load_steps(history(tmp_path), None, "next-line", lines_after=10)
    assert len(edit_line) == len(next_line) == 3
    for step, edit, nxt in zip(range(3), edit_line, next_line, strict=True):
        assert edit.target == f"def added_{step}(y):"  # the edit is the completed line
        assert f"def added_{step}(y):" in nxt.prefix  # the edit is in the prompt, 10+ lines up
        assert nxt.prefix.count("\n") >= edit.prefix.count("\n") + 10
        assert nxt.target and nxt.target in nxt.after.splitlines()[nxt.prefix.count("\n")]


def test_bench_edits_compares_every_method(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            *BENCH_EDITS,
            "--data",
            str(history(tmp_path)),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--limit",
            "3",
            "--context-tokens",
            "256",
            "--drift-report",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["steps"] == 3
    methods = result["methods"]
    assert set(methods) == {"full", "prefix", "naive", "pie", "pie+refresh"}
    for row in methods.values():
        for rate in ("em", "es", "agree_full"):
            assert 0.0 <= row[rate] <= 1.0
        assert row["ttft_ms_p50"] > 0 and row["ttft_ms_p90"] >= row["ttft_ms_p50"]
    assert methods["full"]["agree_full"] == 1.0
    assert methods["prefix"]["agree_full"] == 1.0  # prefix reuse is exact
    # PIE reuses the kept tokens: it encodes fewer than prefix reuse, which encodes fewer than full
    assert methods["pie"]["tokens_encoded_mean"] < methods["prefix"]["tokens_encoded_mean"]
    assert methods["prefix"]["tokens_encoded_mean"] < methods["full"]["tokens_encoded_mean"]
    assert "pie" in proc.stdout and "TTFT" in proc.stdout
    # next-token drift against full: none for full and for exact prefix reuse
    assert methods["full"]["kl_full_mean"] == 0.0 and methods["full"]["top1_full"] == 1.0
    assert methods["prefix"]["kl_full_mean"] < 1e-6 and methods["prefix"]["top1_full"] == 1.0
    assert methods["naive"]["kl_full_mean"] >= methods["pie"]["kl_full_mean"] >= 0.0
    drift = result["drift"]
    assert set(drift) == {"prefix", "naive", "pie", "pie+refresh"}
    assert len(drift["pie"]["layers"]) == 2  # the tiny model's layers
    assert drift["prefix"]["groups"]["before the first edit"]["key_dev"] < 1e-5
    assert drift["pie"]["layers"][0]["key_dev"] < 1e-4  # layer-0 keys see no context: exact after PIE
    assert "mean relative deviation" in proc.stdout


def test_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*BENCH_EDITS, "--data", str(tmp_path / "none.jsonl.gz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no such file" in proc.stderr


def bench_ws(
    tmp_path: Path, model_dir: Path, *options: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`splice bench ws` on the generated history with a tiny model: (the process, its JSON)."""
    out = tmp_path / "ws.json"
    args = ["--data", str(history(tmp_path)), "--model", str(model_dir), "--device", "cpu"]
    args += ["--limit", "3", "--context-tokens", "256", *options, "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "splice.assistant", "bench", "ws", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_bench_ws_types_edits_and_kept_tokens_tokenize_less(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc, result = bench_ws(tmp_path, tiny_model_dir, "--max-tokens", "4")
    whole, kept = result["variants"]["whole"], result["variants"]["kept"]
    assert whole["completions"] == kept["completions"] == 2  # the first completion of a history is not timed
    assert result["identical_completions"] == "3/3"
    # The whole text before the cursor (this model's prompt has no suffix) goes through the
    # tokenizer without kept tokens; with them, a window around the edit and the lines the
    # cursor moved over (the steps' edits are 30 lines apart).
    assert whole["tokenized_chars_mean"] > whole["document_chars_mean"] / 4
    assert kept["tokenized_chars_mean"] < 0.6 * whole["tokenized_chars_mean"]
    assert kept["encoded_tokens_mean"] == whole["encoded_tokens_mean"]
    assert "| kept |" in proc.stdout


def test_bench_ws_types_suggestions_through_with_and_without_their_drafts(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    proc, result = bench_ws(tmp_path, tiny_model_dir, "--max-tokens", "6", "--type-through", "2")
    variants = result["variants"]
    plain, decode, drafted = variants["n-gram"], variants["suggestion-decode"], variants["suggestion"]
    # up to 2 characters typed per step, a completion timed after each: the same ones in all three
    assert 0 < plain["completions"] == decode["completions"] == drafted["completions"] <= 6
    assert result["identical_completions"] == f"{plain['completions']}/{plain['completions']}"
    assert "| suggestion-decode |" in proc.stdout and "typing 2 characters through" in proc.stdout


def test_primer_holds_the_suffix_so_a_first_step_reencodes_only_its_edit(
    tmp_path: Path, tiny_qwen_dir: Path
) -> None:
    # Qwen's PSM layout puts the suffix in the middle of the prompt. A cache primed from the
    # prefix alone would make every history's first step encode the whole suffix as new tokens
    # (and leave nothing of it stale), which is not what an editor that completed there before sees.
    from splice.bench.edits import run
    from splice.completion.models import load_model, parse_spec

    loaded = load_model(parse_spec(str(tiny_qwen_dir)), device="cpu", progress=lambda _m: None)
    result = run(
        loaded,
        history(tmp_path),
        methods=("full", "pie"),
        limit=1,
        context_tokens=256,
        task="edit-line",
        progress=False,
    )
    first = result["per_step"][0]["methods"]  # type: ignore[index]
    assert first["full"]["encoded"] == 256  # the window is full: the suffix has ~1/4 of it
    # the step inserted two short lines right at the cursor: that, and the last token, are new
    assert 2 <= first["pie"]["encoded"] <= 24, first["pie"]["encoded"]


def test_bench_edits_refuses_a_missing_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = subprocess.run(
        [
            *BENCH_EDITS,
            "--data",
            str(history(tmp_path)),
            "--model",
            str(tiny_model_dir),
            "--adapter",
            str(tmp_path / "no-such-adapter"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "splice bench edits: error:" in proc.stderr and "no-such-adapter" in proc.stderr
