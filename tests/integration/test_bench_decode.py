"""`splice bench decode` end to end on a tiny model, a generated edit history and two generated
HumanEval-style tasks (small form): every method in one run, lossless methods equal greedy."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from integration.test_bench_edits import history

BENCH_DECODE = [sys.executable, "-m", "splice.assistant", "bench", "decode"]


def humaneval(tmp_path: Path) -> Path:
    path = tmp_path / "HumanEval-SingleLineInfilling.jsonl.gz"
    rows = [
        {
            "task_id": f"Gen/{i}",
            "entry_point": "f",
            "prompt": f"def f(x):\n    y = x + {i}\n    z = y * 2\n",
            "suffix": "    return z\n",
            "canonical_solution": "    z = z + 1\n",
            "test": f"def check(c):\n    assert c(1) == {2 * (1 + i) + 1}\n",
        }
        for i in range(2)
    ]
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_bench_decode_runs_every_method(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [
        *BENCH_DECODE,
        "--edits",
        str(history(tmp_path)),
        "--humaneval",
        str(humaneval(tmp_path)),
        "--model",
        str(tiny_model_dir),
        "--adapter",
        "none",
        "--device",
        "cpu",
        "--limit",
        "2",
        "--max-tokens",
        "12",
        "--context-tokens",
        "256",
        "--draft-sizes",
        "2",
        "6",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tasks"] == {"edits": 2, "SingleLine": 2}
    methods = {key.rsplit("/", 1)[1] for key in result["rows"]}
    assert methods == {"greedy", "hf-generate", "lookup-2", "lookup-6"}
    for key, row in result["rows"].items():
        if key.endswith("hf-generate"):
            assert row["tokens_per_s"] and row["tokens_per_s"] > 0
            continue
        assert row["identical_to_greedy"] == 1.0, key  # lossless by construction
        assert 0 < row["passes_per_token"] <= 1.0 + 1e-9
        if key.startswith("SingleLine"):
            assert row["pass@1"] is not None and 0.0 <= row["pass@1"] <= 1.0
        else:
            assert 0.0 <= row["edit_similarity"] <= 1.0
    assert "| lookup-6 |" in proc.stdout and "identical" in proc.stdout


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    missing = subprocess.run(
        [*BENCH_DECODE, "--edits", str(tmp_path / "none.jsonl.gz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
    nothing = subprocess.run(BENCH_DECODE, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "--edits and/or --humaneval" in nothing.stderr
    bad = subprocess.run(
        [*BENCH_DECODE, "--edits", str(history(tmp_path)), "--draft-sizes", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "max_tokens must be in [1, 64]" in bad.stderr
