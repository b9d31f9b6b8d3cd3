"""`splice eval infill` from the command line: a report in [0, 1] from a tiny model, clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from splice.assistant.cli import main

TASKS = [
    {
        "task_id": f"Tiny/{i}",
        "prompt": "def add(a, b):\n",
        "suffix": "\n",
        "canonical_solution": "    return a + b\n",
        # task 0 can never pass: its test always fails, whatever the tiny model writes
        "test": "def check(f):\n    raise AssertionError\n" if i == 0 else "def check(f):\n    pass\n",
        "entry_point": "add",
    }
    for i in range(2)
]


def test_eval_infill_reports_fractions(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "HumanEval-TinyInfilling.jsonl.gz"
    with gzip.open(data, "wt") as f:
        f.writelines(json.dumps(t) + "\n" for t in TASKS)
    out = tmp_path / "report.json"
    code = main(
        ["eval", "infill", "--data", str(data), "--model", str(tiny_model_dir), "--no-adapter",
         "--max-tokens", "4", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n"] == 2 and report["adapter"] is None
    assert report["pass@1"] in (0.0, 0.5)  # the sandbox ran the failing test
    assert 0.0 <= report["exact_match"] <= 1.0
    assert report["set"] and set(report) >= {"set", "n", "pass@1", "exact_match"}


def test_eval_infill_bad_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    assert main(["eval", "infill", "--data", str(bad), "--no-adapter"]) == 2
    assert "missing" in capsys.readouterr().err
