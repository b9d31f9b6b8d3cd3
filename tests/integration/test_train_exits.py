"""`splice train exits` end to end on a tiny Qwen2 (real FIM tokens) and a tiny corpus: it writes
heads the engine loads and uses, resumes from its features and checkpoint, and refuses bad input."""

from __future__ import annotations

import gzip
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from splice.completion.adapters import attach_exit_heads
from splice.completion.early_exit import load_exit_heads
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.models import load_model, parse_spec

TRAIN_EXITS = [sys.executable, "-m", "splice.assistant", "train", "exits"]


def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    sources = [inspect.getsource(textwrap), inspect.getsource(json.encoder), inspect.getsource(gzip)]
    for name, texts in (("train", sources[:2]), ("heldout", sources[2:])):
        with gzip.open(folder / f"{name}.jsonl.gz", "wt") as fh:
            fh.writelines(json.dumps({"id": f"{name}{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    return folder


def _train(tmp_path: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        *TRAIN_EXITS,
        "--data",
        str(corpus(tmp_path) if not (tmp_path / "corpus").is_dir() else tmp_path / "corpus"),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(model_dir),
        "--no-adapter",
        "--device",
        "cpu",
        "--samples",
        "6",
        "--heldout-samples",
        "3",
        "--lens-steps",
        "3",
        "--controller-steps",
        "5",
        "--exit-layers",
        "1",
        "--quiet",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_train_exits_writes_heads_the_engine_serves(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    proc = _train(tmp_path, tiny_qwen_dir, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["train_tokens"] > 0 and report["heldout_tokens"] > 0
    assert [row["layer"] for row in report["layers"]] == [1]
    assert all(0.0 <= row["layer_savings"] <= 1.0 for row in report["thresholds"])
    folder = tmp_path / "out" / "exits"
    assert {p.name for p in folder.iterdir()} == {"exit_heads.safetensors", "exit_heads.json", "README.md"}
    assert "Early-exit heads" in (folder / "README.md").read_text()

    loaded = attach_exit_heads(load_model(parse_spec(str(tiny_qwen_dir)), device="cpu"), folder)
    trained = loaded.exit_heads
    assert trained is not None and trained.exit_layers == (1,)
    # The lenses moved away from the identity they start from (least squares + KL steps).
    assert not torch.allclose(trained.lenses[0].weight.float(), torch.eye(trained.hidden_size), atol=1e-3)
    engine = CompletionEngine(loaded, EngineConfig(early_exit=True, drafting="off"))
    result = engine.complete(CompletionInput("def f(x):\n    return ", "\n"), GenerationParams(max_tokens=6))
    assert result.decode_layers <= result.decode_passes * engine.runner.num_layers

    # Running again resumes: features and checkpoint are reused, the heads come out the same.
    again = _train(tmp_path, tiny_qwen_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "exit heads written" in again.stdout
    reloaded = load_exit_heads(folder, loaded)
    torch.testing.assert_close(reloaded.lenses[0].weight, trained.lenses[0].weight)


def test_bad_input_is_a_clear_cli_error(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    beyond = _train(tmp_path, tiny_qwen_dir, "--exit-layers", "99")
    assert beyond.returncode != 0 and "exit layers must be increasing and in [1, " in beyond.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = subprocess.run(
        [*TRAIN_EXITS, "--data", str(empty), "--out", str(tmp_path / "o2"), "--model", str(tiny_qwen_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "splice data corpus" in missing.stderr
    zero = _train(tmp_path, tiny_qwen_dir, "--samples", "0")
    assert zero.returncode != 0 and "samples must be >= 1" in zero.stderr
