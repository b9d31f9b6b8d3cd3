"""`splice` CLI: help everywhere, cursor positions, clear errors, and completions that equal the engine's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splice.assistant.cli import CliError, build_parser, cursor_offset, main

SPLICE = [sys.executable, "-m", "splice.assistant"]


@pytest.mark.parametrize("argv", [[], ["serve"], ["complete"], ["model"], ["model", "pull"]])
def test_help_everywhere(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0


def test_cursor_offset() -> None:
    text = "ab\r\ncd\nef"
    assert cursor_offset(text, 1, 1) == 0
    assert cursor_offset(text, 1, 3) == 2  # end of line 1, before \r\n
    assert cursor_offset(text, 2, 2) == 5
    assert cursor_offset(text, 3, 3) == len(text)
    with pytest.raises(CliError, match="out of range"):
        cursor_offset(text, 4, 1)
    with pytest.raises(CliError, match="out of range"):
        cursor_offset(text, 1, 4)


def test_complete_errors_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["complete", str(tmp_path / "nope.py"), "--line", "1", "--col", "1"]) == 2
    assert "no such file" in capsys.readouterr().err
    binary = tmp_path / "b.py"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main(["complete", str(binary), "--line", "1", "--col", "1"]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    assert main(["complete", str(src), "--line", "9", "--col", "1"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_complete_prints_the_engines_completion(tmp_path: Path, tiny_model_dir: Path) -> None:
    from splice.completion.engine import CompletionEngine, CompletionInput, GenerationParams
    from splice.completion.models import load_model, parse_spec

    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef main():\n    \n\nmain()\n")
    proc = subprocess.run(
        [
            *SPLICE,
            "complete",
            str(src),
            "--line",
            "4",
            "--col",
            "5",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--max-tokens",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"SPLICE_HOME": str(tmp_path), **_env()},
    )
    assert proc.returncode == 0, proc.stderr
    engine = CompletionEngine(
        load_model(parse_spec(str(tiny_model_dir)), home=tmp_path, progress=lambda _: None)
    )
    text = src.read_text()
    offset = cursor_offset(text, 4, 5)
    expected = engine.complete(
        CompletionInput(text[:offset], text[offset:]), GenerationParams(max_tokens=24)
    ).text
    assert proc.stdout == expected


def test_bad_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*SPLICE, "serve", "--model", str(tmp_path / "absent"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"SPLICE_HOME": str(tmp_path), **_env()},
    )
    assert proc.returncode == 1
    assert "model path not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "SPLICE_HOME"}
