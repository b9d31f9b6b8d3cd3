"""`splice bench decode` end to end on a tiny model, a generated edit history and two generated
HumanEval-style tasks (small form): every method in one run, lossless methods equal greedy."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from integration.test_bench_edits import history

BENCH_DECODE = [sys.executable, "-m", "splice.assistant", "bench", "decode"]
NO_ADAPTER = ["--adapter", "none", "--device", "cpu", "--exit-heads"]  # + a heads folder


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


def exit_heads(tmp_path: Path, model_dir: Path) -> Path:
    """Random early-exit heads for the tiny model, saved as `splice train exits` saves them."""
    from splice.completion.early_exit import ExitHeads, model_identity, save_exit_heads
    from splice.completion.models import load_model, parse_spec

    loaded = load_model(parse_spec(str(model_dir)), device="cpu")
    torch.manual_seed(0)
    heads = ExitHeads(loaded.model.config.hidden_size, (1,), controller_hidden=8)
    with torch.no_grad():  # a controller that exits about half the time
        heads.controller[-1].weight.mul_(10.0)
    folder = tmp_path / "exits"
    save_exit_heads(heads, folder, model_identity(loaded), {})
    return folder


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
        "--exit-heads",
        str(exit_heads(tmp_path, tiny_model_dir)),
        "--exit-thresholds",
        "0.5",
        "0.9",
        "--stop-thresholds",
        "0.6",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tasks"] == {"edits": 2, "SingleLine": 2}
    methods = {key.rsplit("/", 1)[1] for key in result["rows"]}
    lossless = {"greedy", "lookup-2", "lookup-6", "self-4"}
    assert methods == {"hf-generate", *lossless, "exit-0.5", "exit-0.9", "stop-0.6", "lookup-6+exit-0.9"}
    layers = result["layers"]
    for key, row in result["rows"].items():
        method = key.rsplit("/", 1)[1]
        if method == "hf-generate":
            assert row["tokens_per_s"] and row["tokens_per_s"] > 0
            continue
        if not method.startswith("stop"):  # (a Stop's pass yields no token)
            assert 0 < row["passes_per_token"] <= 1.0 + 1e-9
        if method in lossless:
            assert row["identical_to_greedy"] == 1.0, key  # lossless by construction
            assert row["early_stop_rate"] == 0.0
        if method == "greedy":
            assert row["layers_per_token"] == layers
        if method.startswith("exit"):
            assert row["layers_per_token"] < layers, key  # some tokens left at layer 1
        if key.startswith("SingleLine"):
            assert row["pass@1"] is not None and 0.0 <= row["pass@1"] <= 1.0
        else:
            assert 0.0 <= row["edit_similarity"] <= 1.0
    assert all(row["early_stop_rate"] is not None for key, row in result["rows"].items() if "stop-" in key)
    assert "| lookup-6 |" in proc.stdout and "identical" in proc.stdout and "| exit-0.5 |" in proc.stdout


def test_lookup_min_ngrams_give_one_method_each() -> None:
    from splice.bench.decode import methods_for
    from splice.completion.engine import EngineConfig

    base = EngineConfig(drafting="off")
    default = methods_for(base, [8], [], [])
    assert default["lookup-8"].draft.min_ngram == 1 and default["lookup-8"].drafting == "lookup"
    both = methods_for(base, [8], [], [], [], [1, 3])
    assert [m for m in both if m.startswith("lookup")] == ["lookup-8-n1", "lookup-8-n3"]
    assert (both["lookup-8-n1"].draft.min_ngram, both["lookup-8-n3"].draft.min_ngram) == (1, 3)
    assert both["lookup-8-n3"].draft.max_tokens == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--edits", "{missing}"], "no such file"),
        ([], "--edits and/or --humaneval"),
        (["--edits", "{history}", "--draft-sizes", "0"], "max_tokens must be in [1, 64]"),
        (["--edits", "{history}", "--exit-thresholds", "1.5"], "threshold must be in (0, 1]"),
        (["--edits", "{history}", "--lookup-min-ngrams", "0"], "1 <= min_ngram <= max_ngram"),
    ],
    ids=["missing-file", "no-tasks", "draft-size", "threshold", "min-ngram"],
)
def test_bad_arguments_are_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    paths = {"{missing}": str(tmp_path / "none.jsonl.gz"), "{history}": str(history(tmp_path))}
    proc = subprocess.run(
        [*BENCH_DECODE, *(paths.get(a, a) for a in args)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_exit_heads_of_another_model_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    heads = exit_heads(tmp_path, tiny_model_dir)
    meta = json.loads((heads / "exit_heads.json").read_text())
    (heads / "exit_heads.json").write_text(json.dumps(meta | {"base_model_id": "someone/else"}))
    proc = subprocess.run(
        [
            *BENCH_DECODE,
            "--edits",
            str(history(tmp_path)),
            "--model",
            str(tiny_model_dir),
            *NO_ADAPTER,
            str(heads),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        proc.returncode == 2 and "trained for another model" in proc.stderr and "someone/else" in proc.stderr
    )
