"""`splice bench gpu` in its CPU form (tiny shape; kernels in Triton's interpreter): every part runs,
and the kernels' results it reports agree with their references. Timings are not asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splice.assistant.cli import main as cli_main
from splice.kernels import triton_util


@pytest.mark.skipif(not triton_util.interpreting(), reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
def test_bench_gpu_tiny_shape_runs_every_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    code = cli_main(
        [
            "bench", "gpu", "--shape", "tiny", "--device", "cpu", "--contexts", "96", "--batches", "1", "3",
            "--decode-context", "48", "--editors", "3", "--editor-context", "64", "--arrival-window", "0",
            "--repeats", "1", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and result["device"] == "cpu"
    (ttft,) = result["ttft"]
    assert ttft["context"] == 96 and ttft["full_ms"] > 0 and ttft["pie_ms"] > 0
    (rotation,) = result["rotation"]
    assert rotation["moved_tokens"] == 24 and rotation["max_error"] == 0.0  # fp32: bit-identical
    assert [(row["context"], row["batch"]) for row in result["attention"]] == [(96, 1), (96, 3)]
    for row in result["attention"]:
        assert row["split_max_error"] < 1e-5 and row["unified_max_error"] < 1e-5
    assert [row["batch"] for row in result["decode"]] == [1, 3]
    assert [row["batch"] for row in result["editors"]] == [1, 3]
    for editors in result["editors"]:
        assert editors["editors"] == 3 and editors["p99_ms"] >= editors["p50_ms"] > 0
    alone, together = result["editors"]
    assert alone["passes"] == 3 * 15 and together["passes"] < alone["passes"]  # decode steps shared
    printed = capsys.readouterr().out
    for part in (
        "1. time to first token",
        "2. PIE re-rotation",
        "3. decode attention",
        "4. decode step",
        "5. ",
    ):
        assert part in printed  # one table per part


def test_bench_gpu_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "gpu", "--shape", "tiny", "--batches", "0"])
    assert exc.value.code == 2 and "--batches must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "gpu", "--shape", "gpt-5"])
    assert exc.value.code == 2
