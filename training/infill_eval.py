"""HumanEval infilling (Bavarian et al. 2022): functional correctness of generated middles.

Each task gives the text before the hole (`prompt`), after it (`suffix`), the hole itself
(`canonical_solution`), and a `test` defining `check(candidate)`. The middle is generated through
the service's own completion path (`CompletionEngine.complete`: FIM template, token healing,
stop rules and post-processing), then `prompt + middle + suffix + test + check(entry_point)`
runs in the sandbox (`splice.training.sandbox`). pass@1 is greedy decoding's pass rate; exact
match compares the middle with the canonical one line by line, ignoring trailing whitespace
and blank lines at either end. Executions run in parallel with generation.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splice.completion.engine import CompletionEngine, CompletionInput, GenerationParams
from splice.training.sandbox import SandboxLimits, run_program

REQUIRED = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")


class InfillDataError(ValueError):
    """The data file is missing or not in the HumanEval infilling format."""


def set_name(path: Path) -> str:
    """`HumanEval-SingleLineInfilling.jsonl.gz` -> `SingleLine`."""
    name = path.name.split(".")[0]
    return name.removeprefix("HumanEval-").removesuffix("Infilling") or name


def load_tasks(path: Path, limit: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """The tasks of a `.jsonl(.gz)` file; with `limit`, a fixed random sample (by `seed`) in file order."""
    if not path.is_file():
        raise InfillDataError(f"no such data file: {path}")
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    tasks: list[dict[str, str]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InfillDataError(f"{path}:{number}: not JSON ({exc})") from exc
            missing = [k for k in REQUIRED if k not in task]
            if missing:
                raise InfillDataError(
                    f"{path}:{number}: missing {', '.join(missing)} (HumanEval infilling format)"
                )
            tasks.append(task)
    if not tasks:
        raise InfillDataError(f"{path} holds no tasks")
    if limit is not None and limit < len(tasks):
        keep = sorted(random.Random(seed).sample(range(len(tasks)), limit))
        tasks = [tasks[i] for i in keep]
    return tasks


def program_for(task: dict[str, str], middle: str) -> str:
    return f"{task['prompt']}{middle}{task['suffix']}\n\n{task['test']}\n\ncheck({task['entry_point']})\n"


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def exact_match(middle: str, canonical: str) -> bool:
    return _lines(middle) == _lines(canonical)


@dataclass
class TaskResult:
    task_id: str
    middle: str
    passed: bool
    exact: bool
    status: str
    finish_reason: str
    completion_tokens: int
    generate_ms: float


def evaluate(
    engine: CompletionEngine,
    tasks: list[dict[str, str]],
    *,
    max_tokens: int,
    limits: SandboxLimits | None = None,
    workers: int = 2,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[TaskResult]:
    """Generate and execute every task; `progress(done, total, passed)` after each."""
    limits = limits or SandboxLimits()
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    results: list[TaskResult] = []
    pending: list[tuple[dict[str, str], Any, Future[Any]]] = []
    passed = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for task in tasks:
            inp = CompletionInput(
                prefix=task["prompt"], suffix=task["suffix"], language="python", filepath="solution.py"
            )
            result = engine.complete(inp, params)
            future = pool.submit(run_program, program_for(task, result.text), limits)
            pending.append((task, result, future))
            for done in _finished(pending):
                results.append(done)
                passed += done.passed
                if progress is not None:
                    progress(len(results), len(tasks), passed)
        for done in _finished(pending, wait=True):
            results.append(done)
            passed += done.passed
            if progress is not None:
                progress(len(results), len(tasks), passed)
    order = {t["task_id"]: i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[r.task_id])


def _finished(
    pending: list[tuple[dict[str, str], Any, Future[Any]]], wait: bool = False
) -> Iterator[TaskResult]:
    while pending and (wait or pending[0][2].done()):
        task, result, future = pending.pop(0)
        run = future.result()
        yield TaskResult(
            task_id=task["task_id"],
            middle=result.text,
            passed=run.passed,
            exact=exact_match(result.text, task["canonical_solution"]),
            status=run.status,
            finish_reason=result.finish_reason,
            completion_tokens=result.completion_tokens,
            generate_ms=result.timings.total_ms,
        )


def summarise(name: str, results: list[TaskResult], seconds: float, **extra: Any) -> dict[str, Any]:
    n = len(results)
    return {
        "set": name,
        "n": n,
        "pass@1": sum(r.passed for r in results) / n if n else 0.0,
        "exact_match": sum(r.exact for r in results) / n if n else 0.0,
        "timeouts": sum(r.status == "timeout" for r in results),
        "mean_completion_tokens": sum(r.completion_tokens for r in results) / n if n else 0.0,
        "seconds": round(seconds, 1),
        **extra,
    }


def run_eval(
    engine: CompletionEngine,
    data: Path,
    *,
    limit: int | None,
    max_tokens: int,
    seed: int = 0,
    workers: int = 2,
    timeout_s: float = 10.0,
    samples_out: Path | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    tasks = load_tasks(data, limit, seed)
    start = time.perf_counter()
    results = evaluate(
        engine,
        tasks,
        max_tokens=max_tokens,
        limits=SandboxLimits(timeout_s=timeout_s),
        workers=workers,
        progress=progress,
    )
    report = summarise(set_name(data), results, time.perf_counter() - start, **(extra or {}))
    if samples_out is not None:
        samples_out.parent.mkdir(parents=True, exist_ok=True)
        with samples_out.open("w") as f:
            for r in results:
                f.write(json.dumps(r.__dict__) + "\n")
    return report
