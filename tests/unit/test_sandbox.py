"""The sandbox for generated code: runaway programs are stopped, nothing they start survives, and the
harness keeps going. Times are bounds on when a kill must have happened, not speed claims."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from splice.training.infill_eval import InfillDataError, exact_match, load_tasks, program_for, set_name
from splice.training.sandbox import SandboxLimits, run_program, sandbox_interpreter

LIMITS = SandboxLimits(timeout_s=3.0)
SLACK_S = 6.0  # process start and the group kill; far below the hang it prevents


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies still count for killpg; only live members matter
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _run_reporting_pgid(source: str, limits: SandboxLimits = LIMITS) -> tuple[object, int]:
    """Run `source` after it writes its process group id to stdout (flushed at once)."""
    prefix = "import os, sys\nprint(os.getpgid(0), flush=True)\n"
    result = run_program(prefix + source, limits)
    return result, int(result.stdout.split()[0])


def test_passing_and_failing_programs() -> None:
    assert run_program("assert sum([1, 2]) == 3\nprint('ok')", LIMITS).status == "passed"
    failed = run_program("def check(f):\n    assert f(2) == 5\ncheck(lambda x: x + 1)", LIMITS)
    assert failed.status == "failed" and "AssertionError" in failed.stderr


def test_infinite_loop_is_killed_within_the_timeout() -> None:
    start = time.monotonic()
    result, pgid = _run_reporting_pgid("while True:\n    pass\n")
    assert result.status == "timeout"  # type: ignore[attr-defined]
    assert time.monotonic() - start < LIMITS.timeout_s + SLACK_S
    assert not _group_alive(pgid)


def test_sleeping_program_is_killed_within_the_timeout() -> None:
    result, pgid = _run_reporting_pgid("import time\ntime.sleep(3600)\n")
    assert result.status == "timeout" and result.seconds < LIMITS.timeout_s + SLACK_S  # type: ignore[attr-defined]
    assert not _group_alive(pgid)


def test_fork_bomb_is_stopped_and_leaves_nothing_behind() -> None:
    start = time.monotonic()
    result, pgid = _run_reporting_pgid("while True:\n    os.fork()\n")
    assert result.status in ("failed", "timeout")  # type: ignore[attr-defined]
    assert time.monotonic() - start < LIMITS.timeout_s + SLACK_S
    assert not _group_alive(pgid)


def test_unguarded_fork_bomb_is_killed_with_its_whole_group() -> None:
    """`posix.fork` gets past the prelude; the process limit and the group kill must stop it."""
    as_nobody = os.geteuid() == 0
    if as_nobody and sandbox_interpreter(True) == "":
        pytest.skip("root, and no interpreter that `nobody` may run: no process limit can apply")
    source = "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    result, pgid = _run_reporting_pgid(source)
    assert result.status == "timeout"  # type: ignore[attr-defined]
    assert time.monotonic() - start < LIMITS.timeout_s + SLACK_S
    assert not _group_alive(pgid)


def test_a_daemonised_child_does_not_outlive_the_run() -> None:
    source = "import posix, time\nif posix.fork() == 0:\n    time.sleep(3600)\n"
    result, pgid = _run_reporting_pgid(source)
    assert result.status == "passed"  # type: ignore[attr-defined]
    assert not _group_alive(pgid)


def test_network_memory_and_output_are_limited() -> None:
    assert (
        run_program("import socket\nsocket.create_connection(('127.0.0.1', 6379))", LIMITS).status == "failed"
    )
    memory = run_program("x = bytearray(8 << 30)", SandboxLimits(timeout_s=5.0, memory_bytes=1 << 30))
    assert memory.status == "failed" and "MemoryError" in memory.stderr
    flood = run_program(
        "while True:\n    print('x' * 4096)", SandboxLimits(timeout_s=5.0, file_bytes=1 << 16)
    )
    assert flood.status in ("failed", "timeout")
    crash = run_program(
        "import ctypes\nctypes.string_at(0)", LIMITS
    )  # a segfault is a failure, not a harness crash
    assert crash.status == "failed" and crash.returncode is not None and crash.returncode < 0


def test_raw_sockets_find_no_network_in_a_new_namespace() -> None:
    """Past the prelude (`_socket`), only the network namespace stops a connection; it needs root."""
    interfaces = run_program("print(open('/proc/net/dev').read())", LIMITS).stdout
    names = [line.split(":")[0].strip() for line in interfaces.splitlines() if ":" in line]
    if names != ["lo"]:
        pytest.skip(f"no network namespace here (interfaces {names}): not root, or the container forbids it")
    raw = run_program("import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))", LIMITS)
    assert raw.status == "failed" and "unreachable" in raw.stderr


def test_files_outside_the_temp_dir_are_safe(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("data")
    os.chmod(tmp_path, 0o755)
    result = run_program(f"import os\nos.remove({str(victim)!r})", LIMITS)
    assert result.status == "failed" and victim.read_text() == "data"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        SandboxLimits(timeout_s=0)


# --- the infilling harness around it ---


def _task(**overrides: str) -> dict[str, str]:
    task = {
        "task_id": "T/0",
        "entry_point": "add",
        "prompt": "def add(a, b):\n",
        "suffix": "",
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    }
    task.update(overrides)
    return task


def test_program_for_runs_the_canonical_solution() -> None:
    task = _task()
    assert run_program(program_for(task, task["canonical_solution"]), LIMITS).passed
    assert not run_program(program_for(task, "    return a - b\n"), LIMITS).passed


def test_exact_match_ignores_trailing_whitespace_and_edge_blank_lines() -> None:
    assert exact_match("    return a + b  \n\n", "    return a + b\n")
    assert not exact_match("return a + b\n", "    return a + b\n")  # indentation matters


def test_load_tasks_validates_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "HumanEval-SingleLineInfilling.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(20):
            f.write(json.dumps(_task(task_id=f"T/{i}")) + "\n")
    assert set_name(path) == "SingleLine"
    sample = load_tasks(path, limit=5, seed=1)
    assert len(sample) == 5 and sample == load_tasks(path, limit=5, seed=1)  # a fixed sample
    assert [t["task_id"] for t in sample] == sorted((t["task_id"] for t in sample), key=lambda s: int(s[2:]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x"}) + "\n")
    with pytest.raises(InfillDataError, match="missing"):
        load_tasks(bad)
    with pytest.raises(InfillDataError, match="no such data file"):
        load_tasks(tmp_path / "nope.jsonl.gz")
