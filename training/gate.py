"""The held-out gate: before/after numbers of an adapter on a repository's held-out files, paired
task by task, with exact p-values.

Tasks (`gate_tasks`): seeded random non-blank lines of the held-out files. Each is asked as the
service asks it (`CompletionEngine.complete` with the document before the line plus its
indentation as prefix and the rest of the file as suffix); the first line of the completion is
compared with the true rest of the line: exact match and edit similarity (1 - Levenshtein /
longer length). The FIM middle loss is the mean token cross-entropy of the true line as the FIM
middle of that prompt (teacher forcing, the training layout).

Paired tests, exact (no normal approximation, no scipy): McNemar's for exact match (the tasks one
side gets right and the other wrong), the sign test for edit similarity and loss (ties dropped).
Tasks from `masked_tests` also carry the repository's tests for their line: the completed line is
put in place and the tests run in the sandbox; the report's `tests_pass_rate` pairs them the same
way (McNemar). An adapter *beats* the current one when its mean middle loss is lower, its mean edit
similarity is not lower, and (when there are tested tasks) its test pass rate is not lower; the
p-values are reported, not required (a short CPU run on a few hundred lines rarely reaches
significance, and the report says so).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from splice.completion.engine import CompletionEngine, CompletionInput, GenerationParams
from splice.completion.postprocess import first_line
from splice.retrieval.languages import language_for_path
from splice.training.fim import IGNORE, FimSample, encode_sample


@dataclass(frozen=True)
class GateTask:
    path: str
    line: int
    prefix: str  # the document up to the line, plus the line's indentation
    target: str  # the rest of the line
    suffix: str  # the document after the line
    tests: tuple[str, ...] = ()  # pytest node ids that check the line (`masked_tests`)


@dataclass(frozen=True)
class TaskScore:
    exact: bool
    similarity: float
    loss: float
    tests_passed: bool | None = None  # the task's tests with the completed line; None: no tests


def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def gate_tasks(
    files: dict[str, str], *, per_file: int | None = None, limit: int = 80, seed: int = 0
) -> list[GateTask]:
    """Up to `per_file` lines from each file (default: enough for `limit` over the files, at least
    4), `limit` in all, the same for the same files and seed."""
    rng = random.Random(seed)
    if per_file is None:
        per_file = max(4, -(-limit // max(len(files), 1)))
    tasks: list[GateTask] = []
    for path in sorted(files):
        lines = files[path].splitlines(keepends=True)
        candidates = [i for i in range(1, len(lines)) if len(lines[i].strip()) >= 4]
        for i in sorted(rng.sample(candidates, min(per_file, len(candidates)))):
            text = lines[i]
            indent = text[: len(text) - len(text.lstrip())]
            tasks.append(
                GateTask(
                    path=path,
                    line=i,
                    prefix="".join(lines[:i]) + indent,
                    target=text.strip(),
                    suffix="".join(lines[i + 1 :]),
                )
            )
    rng.shuffle(tasks)
    return sorted(tasks[:limit], key=lambda t: (t.path, t.line))


@torch.no_grad()
def middle_loss(engine: CompletionEngine, task: GateTask, max_tokens: int = 1536) -> float:
    tokenizer = engine.loaded.tokenizer
    prefix = task.prefix[-max_tokens * 4 :]
    suffix = task.suffix[: max_tokens * 2]
    sample = FimSample(prefix, task.target + "\n", suffix, "psm" if engine.template.is_fim else None)
    encoded = encode_sample(tokenizer, engine.template, sample, loss_on="middle")
    ids = encoded.input_ids[-max_tokens:]
    labels = encoded.labels[-max_tokens:]
    model = engine.loaded.model
    logits = model(input_ids=torch.tensor([ids], device=engine.loaded.device)).logits[0, :-1].float()
    targets = torch.tensor(labels[1:], device=logits.device)
    mask = targets != IGNORE
    return float(F.cross_entropy(logits[mask], targets[mask])) if bool(mask.any()) else 0.0


class TestRunner(Protocol):
    def passes(self, path: str, text: str, nodeids: tuple[str, ...]) -> bool: ...


def score(
    engine: CompletionEngine,
    tasks: list[GateTask],
    max_tokens: int = 32,
    progress: Callable[[int, int], None] | None = None,
    tests: TestRunner | None = None,
) -> list[TaskScore]:
    """Each task's completion scored against the true line; tasks with tests also run them with
    the completed line in place (through `tests`, which every task with tests needs)."""
    scores = []
    for n, task in enumerate(tasks):
        inp = CompletionInput(
            task.prefix, task.suffix, language=language_for_path(task.path), filepath=task.path
        )
        result = engine.complete(inp, GenerationParams(max_tokens=max_tokens))
        line = first_line(result.text)
        got = line.strip()
        loss = middle_loss(engine, task, max_tokens=engine.config.max_prompt_tokens or 1536)
        passed = None
        if task.tests:
            if tests is None:
                raise ValueError(f"{task.path}:{task.line + 1} has tests and no test runner was given")
            passed = tests.passes(task.path, task.prefix + line.rstrip() + "\n" + task.suffix, task.tests)
        scores.append(TaskScore(got == task.target, edit_similarity(got, task.target), loss, passed))
        if progress is not None:
            progress(n + 1, len(tasks))
    return scores


def _binomial_two_sided(k: int, n: int) -> float:
    """P-value of k successes in n fair coin flips, two-sided (exact)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_report(before: list[TaskScore], after: list[TaskScore]) -> dict[str, Any]:
    if len(before) != len(after) or not before:
        raise ValueError("paired scores need the same, non-empty, task list")
    n = len(before)
    gained = sum((not b.exact) and a.exact for b, a in zip(before, after, strict=True))
    lost = sum(b.exact and not a.exact for b, a in zip(before, after, strict=True))

    def sign(diffs: list[float]) -> dict[str, Any]:
        up = sum(d > 1e-12 for d in diffs)
        down = sum(d < -1e-12 for d in diffs)
        return {
            "better": up,
            "worse": down,
            "p_value": round(_binomial_two_sided(min(up, down), up + down), 4),
        }

    es_diff = [a.similarity - b.similarity for b, a in zip(before, after, strict=True)]
    loss_diff = [b.loss - a.loss for b, a in zip(before, after, strict=True)]  # positive: after is lower
    report: dict[str, Any] = {
        "tasks": n,
        "exact_match": {
            "before": round(sum(s.exact for s in before) / n, 4),
            "after": round(sum(s.exact for s in after) / n, 4),
            "gained": gained,
            "lost": lost,
            "p_value": round(_binomial_two_sided(min(gained, lost), gained + lost), 4),
        },
        "edit_similarity": {
            "before": round(sum(s.similarity for s in before) / n, 4),
            "after": round(sum(s.similarity for s in after) / n, 4),
            **sign(es_diff),
        },
        "middle_loss": {
            "before": round(sum(s.loss for s in before) / n, 4),
            "after": round(sum(s.loss for s in after) / n, 4),
            **sign(loss_diff),
        },
    }
    tested = [
        (b.tests_passed, a.tests_passed)
        for b, a in zip(before, after, strict=True)
        if b.tests_passed is not None and a.tests_passed is not None
    ]
    if tested:
        t_gained = sum((not b) and a for b, a in tested)
        t_lost = sum(b and not a for b, a in tested)
        report["tests_pass_rate"] = {
            "tasks": len(tested),
            "before": round(sum(b for b, _ in tested) / len(tested), 4),
            "after": round(sum(a for _, a in tested) / len(tested), 4),
            "gained": t_gained,
            "lost": t_lost,
            "p_value": round(_binomial_two_sided(min(t_gained, t_lost), t_gained + t_lost), 4),
        }
    beats = (
        report["middle_loss"]["after"] < report["middle_loss"]["before"]
        and report["edit_similarity"]["after"] >= report["edit_similarity"]["before"]
        and (not tested or report["tests_pass_rate"]["after"] >= report["tests_pass_rate"]["before"])
    )
    report["beats_current"] = beats
    return report


def scores_to_json(scores: list[TaskScore]) -> list[dict[str, Any]]:
    return [asdict(s) for s in scores]
