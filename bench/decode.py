"""`splice bench decode`: decoding methods side by side, on the model as served.

Tasks: next-line completions after real edits (`--edits`, edit histories: the first non-blank
line 20 lines below each step's last change, as `splice bench edits --task next-line` makes
them) and HumanEval infilling sets (`--humaneval`, e.g. SingleLine and MultiLine). Each task's
prompt is encoded once and shared by every method through one document cache, so each method
times its decoding only.

Methods: `greedy` (one token a forward pass, as before drafting), `greedy-unpacked` (the same
with MKL's `F.linear` instead of the packed oneDNN weights a CPU decodes with,
kernels/cpu_linear.py: the service before packing; only where packing is on), `hf-generate` (transformers'
`generate`, greedy, the same number of new tokens: the library's own per-token overhead),
`lookup-K` (lookup drafting, K tokens drafted a pass, splice.completion.drafting; `lookup-K-nM` with
`--lookup-min-ngrams`: drafting only from matches of at least M tokens), and where the
model has exit heads (splice.completion.early_exit): `exit-T` (early exit at Exit threshold T),
`self-K` (self-speculative drafting: up to K tokens drafted by the layers up to the deepest exit
layer and its lens, verified by the layers above in one pass, lossless), `stop-S` (the
controller's Stop alone, at threshold S: how often it ends a completion and what that removes)
and `lookup-K+exit-T` (drafts verified at full depth, other steps exit early).

Per method and task set: decode ms per token and tokens/s (tokens after the first / decode
time), time to the first full line (request start until the stream holds a newline, or the end),
forward passes per token, mean accepted draft length per verification, decoder layers run per
token fed to the model (greedy: all of them), completions ended by Stop, identical-to-greedy rate
(the whole completion text), and quality: exact match and edit similarity of the completed line
(edit histories), pass@1 through the sandbox (HumanEval).

Held-out: tasks are split by a hash of their id into a tuning half (`tune`, used to pick the
default K) and a held-out half (`held-out`); both rows are printed, the defaults come from tune.

    splice bench decode --edits ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        --humaneval ../shared/data/humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz \\
                    ../shared/data/humaneval-infilling/HumanEval-MultiLineInfilling.jsonl.gz \\
        [--limit 40] [--model default] [--context-tokens 1024] [--max-tokens 64] [--json OUT] \\
        [--draft-sizes 4 8 16] [--exit-thresholds 0.8 0.9 0.95] [--stop-thresholds 0.9]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from splice.bench.edits import (
    Sample,
    add_model_arguments,
    add_sample_arguments,
    load_bench_model,
    load_steps,
    sample_label,
)
from splice.completion.document_cache import DocumentKey
from splice.completion.drafting import DraftConfig
from splice.completion.early_exit import ExitThresholds
from splice.completion.engine import (
    CompletionEngine,
    CompletionInput,
    CompletionResult,
    EngineConfig,
    GenerationParams,
)
from splice.completion.models import LoadedModel
from splice.kernels.cpu_linear import packed_bytes, plain_linears
from splice.training.gate import edit_similarity


@dataclass(frozen=True)
class Task:
    id: str
    kind: str  # "edits", or the HumanEval set ("SingleLine", "MultiLine", ...)
    inp: CompletionInput
    target: str = ""  # edits: the true line
    program: tuple[str, str] = ("", "")  # humaneval: (text before the middle, text after it + test)

    @property
    def split(self) -> str:
        return "tune" if hashlib.sha256(self.id.encode()).digest()[0] % 2 == 0 else "held-out"


@dataclass
class Row:
    decode_ms: float = 0.0
    decoded: int = 0
    passes: int = 0
    tokens: int = 0
    verifications: int = 0
    accepted: int = 0
    layers: int = 0  # decoder layers run in full over the decode passes
    fed: int = 0  # tokens fed to the model in decode passes (a verification feeds several)
    early_stops: int = 0
    removed: int = 0  # max_tokens - generated, summed over completions ended by Stop
    line_ms: list[float] = field(default_factory=list)
    identical: list[float] = field(default_factory=list)
    em: list[float] = field(default_factory=list)
    es: list[float] = field(default_factory=list)
    passed: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        def mean(xs: list[float]) -> float | None:
            return statistics.fmean(xs) if xs else None

        return {
            "ms_per_token": self.decode_ms / self.decoded if self.decoded else None,
            "tokens_per_s": 1000.0 * self.decoded / self.decode_ms if self.decode_ms else None,
            "first_line_ms_p50": statistics.median(self.line_ms) if self.line_ms else None,
            "passes_per_token": self.passes / self.tokens if self.tokens else None,
            "accepted_per_verification": self.accepted / self.verifications if self.verifications else None,
            "layers_per_token": self.layers / self.fed if self.fed else None,
            "early_stop_rate": self.early_stops / len(self.identical) if self.identical else None,
            "early_stop_removed_tokens": self.removed,
            "identical_to_greedy": mean(self.identical),
            "exact_match": mean(self.em),
            "edit_similarity": mean(self.es),
            "pass@1": mean(self.passed),
            "tasks": len(self.identical),
        }


def load_tasks(
    edits: Path | None,
    humaneval: list[Path],
    limit: int,
    *,
    sample: Sample = "spread",
    per_history: int = 3,
) -> list[Task]:
    tasks: list[Task] = []
    if edits is not None:
        for history, _, steps in load_steps(
            edits, limit, "next-line", 20, sample=sample, per_history=per_history
        ):
            for i, step in enumerate(steps):
                inp = CompletionInput(step.prefix, step.suffix, "python")
                tasks.append(Task(f"{history}#{i}", "edits", inp, target=step.target))
    from splice.training.infill_eval import load_tasks as load_infill
    from splice.training.infill_eval import set_name

    for path in humaneval:
        for row in load_infill(path, limit=limit, seed=0):
            inp = CompletionInput(row["prompt"], row["suffix"], "python", "solution.py")
            after = f"{row['suffix']}\n\n{row['test']}\n\ncheck({row['entry_point']})\n"
            tasks.append(Task(row["task_id"], set_name(path), inp, program=(row["prompt"], after)))
    return tasks


def methods_for(
    base: EngineConfig,
    draft_sizes: list[int],
    exit_thresholds: list[float],
    stop_thresholds: list[float],
    self_sizes: list[int] = [],  # noqa: B006 (read only)
    min_ngrams: list[int] = [],  # noqa: B006 (read only)
) -> dict[str, EngineConfig]:
    """Engine settings per method (hf-generate runs the model's own `generate`). `min_ngrams`:
    lookup's shortest match, one method per value (`lookup-K-nM`; none given: the default)."""
    methods = {"greedy": base, "hf-generate": base}
    for k in draft_sizes:
        for m in min_ngrams or [0]:  # 0: the drafter's default, named plainly
            draft = DraftConfig(max_tokens=k, min_ngram=m or DraftConfig.min_ngram)
            methods[f"lookup-{k}-n{m}" if m else f"lookup-{k}"] = replace(
                base, drafting="lookup", draft=draft
            )
    for k in self_sizes:
        methods[f"self-{k}"] = replace(base, drafting="self", draft=DraftConfig(max_tokens=k))
    for t in exit_thresholds:
        methods[f"exit-{t:g}"] = replace(base, early_exit=True, exit_thresholds=ExitThresholds(exit=t))
    for s in stop_thresholds:
        stop_only = ExitThresholds(exit=1.0, stop=s)
        methods[f"stop-{s:g}"] = replace(base, early_exit=True, exit_thresholds=stop_only)
    if draft_sizes and exit_thresholds:  # the combination: the middle threshold, lookup-8 or the nearest
        k = min(draft_sizes, key=lambda x: abs(x - 8))
        t = sorted(exit_thresholds)[len(exit_thresholds) // 2]
        methods[f"lookup-{k}+exit-{t:g}"] = replace(
            base,
            drafting="lookup",
            draft=DraftConfig(max_tokens=k),
            early_exit=True,
            exit_thresholds=ExitThresholds(exit=t),
        )
    return methods


def _first_line_ms(
    engine: CompletionEngine, task: Task, params: GenerationParams
) -> tuple[CompletionResult, float]:
    start = time.perf_counter()
    seen: list[str] = []
    line_at: list[float] = []

    def on_text(delta: str) -> None:
        seen.append(delta)
        if not line_at and "\n" in "".join(seen):
            line_at.append((time.perf_counter() - start) * 1000.0)

    result = engine.complete(task.inp, params, on_text=on_text, document=_key(task, engine))
    return result, line_at[0] if line_at else result.timings.total_ms


def _key(task: Task, engine: CompletionEngine) -> DocumentKey:
    return DocumentKey("bench", task.id, engine.loaded.model_id)


@torch.inference_mode()
def _hf_generate(engine: CompletionEngine, task: Task, new_tokens: int) -> float:
    """Decode ms of transformers' greedy `generate` for `new_tokens` tokens: from the first token's
    selection (after the prompt's pass) to the last one's, timed by a logits processor that
    `generate` calls once per token; the fastest of three runs."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Clock(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            self.times.append(time.perf_counter())
            return scores

    ids = torch.tensor([engine.prepare(task.inp, new_tokens).input_ids], device=engine.device)
    best = math.inf
    for _ in range(3):
        clock = Clock()
        engine.model.generate(  # type: ignore[operator]  # (transformers' stubs type it as a Tensor)
            ids,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            logits_processor=LogitsProcessorList([clock]),
        )
        best = min(best, (clock.times[-1] - clock.times[0]) * 1000.0)
    return best


def run(
    loaded: LoadedModel,
    tasks: list[Task],
    *,
    draft_sizes: list[int],
    context_tokens: int,
    max_tokens: int,
    exit_thresholds: list[float] = [],  # noqa: B006 (read only)
    stop_thresholds: list[float] = [],  # noqa: B006
    self_sizes: list[int] = [],  # noqa: B006
    min_ngrams: list[int] = [],  # noqa: B006
    progress: bool = True,
) -> dict[str, object]:
    from splice.training.sandbox import run_program

    base = EngineConfig(max_prompt_tokens=context_tokens, drafting="off")
    if loaded.exit_heads is None:
        # no heads: no early exit, no self-drafting
        exit_thresholds, stop_thresholds, self_sizes = [], [], []
    methods = methods_for(base, draft_sizes, exit_thresholds, stop_thresholds, self_sizes, min_ngrams)
    engines = {name: CompletionEngine(loaded, config) for name, config in methods.items()}
    if packed_bytes(loaded.model):  # the engines packed the linear layers: greedy's engine again, with MKL
        engines = {"greedy": engines["greedy"], "greedy-unpacked": engines["greedy"], **engines}
    shared = engines["greedy"].kv
    for engine in engines.values():
        engine.kv = shared  # one prompt encoding per task, reused by every method
    params = GenerationParams(max_tokens=max_tokens)
    rows: dict[tuple[str, str, str], Row] = {}
    started = time.perf_counter()
    for n, task in enumerate(tasks, 1):
        shared.encode(
            engines["greedy"].prepare(task.inp, max_tokens).input_ids, _key(task, engines["greedy"])
        )
        greedy_text, greedy_tokens = "", 0
        for name, engine in engines.items():
            row = rows.setdefault((task.kind, task.split, name), Row())
            if name == "hf-generate":
                count = max(greedy_tokens, 4)  # (fewer: the decode time is within the timer's noise)
                row.decode_ms += _hf_generate(engine, task, count)
                row.decoded += count - 1
                row.passes += count
                row.tokens += count
                continue
            with plain_linears() if name == "greedy-unpacked" else contextlib.nullcontext():
                result, line_ms = _first_line_ms(engine, task, params)
            if name == "greedy":
                greedy_text = result.text
                greedy_tokens = result.completion_tokens
            row.decode_ms += result.timings.decode_ms
            row.decoded += result.timings._decoded
            row.passes += result.decode_passes + 1  # + the prompt's pass, which gave the first token
            row.tokens += result.completion_tokens
            row.verifications += result.verify_passes
            row.accepted += result.accepted_draft_tokens
            row.layers += result.decode_layers
            row.fed += result.decode_passes + result.accepted_draft_tokens
            row.early_stops += result.finish_reason == "early_stop"
            row.removed += result.early_stop_removed
            row.line_ms.append(line_ms)
            row.identical.append(float(result.text == greedy_text))
            if task.kind == "edits":
                line = result.text.split("\n", 1)[0].strip()
                row.em.append(float(line == task.target))
                row.es.append(edit_similarity(line, task.target))
            else:
                before, after = task.program
                row.passed.append(float(run_program(before + result.text + after).passed))
        shared.close(_key(task, engines["greedy"]))
        if progress:
            elapsed = time.perf_counter() - started
            eta = elapsed / n * (len(tasks) - n)
            print(
                f"\r  task {n}/{len(tasks)}  {elapsed:.0f}s elapsed, ETA {eta:.0f}s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if progress:
        print(file=sys.stderr)
    table = {"/".join(k): r.summary() for k, r in rows.items()}
    return {
        "model": loaded.model_id,
        "device": str(loaded.device),
        "threads": torch.get_num_threads(),
        "context_tokens": context_tokens,
        "max_tokens": max_tokens,
        "layers": engines["greedy"].runner.num_layers,
        "exit_layers": list(loaded.exit_heads.exit_layers) if loaded.exit_heads is not None else None,
        "tasks": {kind: sum(t.kind == kind for t in tasks) for kind in dict.fromkeys(t.kind for t in tasks)},
        "rows": table,
    }


def print_table(result: dict[str, object]) -> None:
    rows = result["rows"]
    assert isinstance(rows, dict)

    def fmt(value: object, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    print(
        f"\n{result['model']} on {result['device']} ({result['threads']} threads), "
        f"prompts ≤ {result['context_tokens']} tokens, ≤ {result['max_tokens']} new tokens"
        + (f", edit steps: {result['edits_sample']}" if "edits_sample" in result else "")
        + "\n"
    )
    print(
        "| tasks | split | method | n | ms/token | tokens/s | × greedy | first line ms p50 | passes/token "
        "| accepted/verify | layers/token | early stops | identical | EM | ES | pass@1 |"
    )
    print("|" + "---|" * 16)
    for key, row in rows.items():
        kind, split, method = key.split("/")
        greedy = rows.get(f"{kind}/{split}/greedy", {})
        speedup = (
            row["tokens_per_s"] / greedy["tokens_per_s"]
            if row["tokens_per_s"] and greedy.get("tokens_per_s")
            else None
        )
        print(
            f"| {kind} | {split} | {method} | {row['tasks'] or '-'} | {fmt(row['ms_per_token'], 1)} "
            f"| {fmt(row['tokens_per_s'], 1)} | {fmt(speedup, 2)} | {fmt(row['first_line_ms_p50'], 0)} "
            f"| {fmt(row['passes_per_token'])} | {fmt(row['accepted_per_verification'], 2)} "
            f"| {fmt(row['layers_per_token'], 1)} | {fmt(row['early_stop_rate'], 2)} "
            f"| {fmt(row['identical_to_greedy'])} | {fmt(row['exact_match'])} "
            f"| {fmt(row['edit_similarity'])} | {fmt(row['pass@1'])} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="splice bench decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=Path, help="edit histories (.jsonl.gz): next-line tasks")
    parser.add_argument(
        "--humaneval", type=Path, nargs="+", default=[], help="HumanEval infilling sets (.jsonl.gz)"
    )
    parser.add_argument("--limit", type=int, default=40, help="tasks per set (default 40)")
    add_sample_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--draft-sizes", type=int, nargs="+", default=[4, 8, 16], help="lookup-K methods")
    parser.add_argument(
        "--lookup-min-ngrams",
        type=int,
        nargs="*",
        default=[],
        metavar="M",
        help="lookup's shortest match, one lookup-K-nM method per value (default: the drafter's own)",
    )
    parser.add_argument(
        "--exit-thresholds", type=float, nargs="*", default=[0.8, 0.9, 0.95], help="exit-T methods"
    )
    parser.add_argument("--exit-heads", type=Path, help="exit heads folder (default: the adapter's own)")
    parser.add_argument(
        "--self-draft-sizes", type=int, nargs="*", default=[4], help="self-K (self-speculative) methods"
    )
    parser.add_argument("--stop-thresholds", type=float, nargs="*", default=[0.9], help="stop-S methods")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    prog = "splice bench decode"
    if args.edits is None and not args.humaneval:
        parser.error("give --edits and/or --humaneval")
    for path in (args.edits, *args.humaneval):
        if path is not None and not path.is_file():
            print(f"{prog}: error: no such file: {path}", file=sys.stderr)
            return 2
    if args.limit < 1 or args.max_tokens < 2 or args.context_tokens < 64 or args.per_history < 1:
        parser.error("--limit and --per-history must be >= 1, --max-tokens >= 2, --context-tokens >= 64")
    try:
        for k in [*args.draft_sizes, *args.self_draft_sizes]:
            DraftConfig(max_tokens=k)
        for m in args.lookup_min_ngrams:
            DraftConfig(min_ngram=m)
        for t in [*args.exit_thresholds, *args.stop_thresholds]:
            ExitThresholds(exit=t)  # raises for a threshold out of range
    except ValueError as exc:
        parser.error(str(exc))
    from splice.completion.adapters import attach_exit_heads
    from splice.completion.models import ModelLoadError

    try:
        loaded = load_bench_model(args)
        if args.exit_heads is not None:
            loaded = attach_exit_heads(loaded, args.exit_heads)
    except ModelLoadError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    tasks = load_tasks(
        args.edits, args.humaneval, args.limit, sample=args.sample, per_history=args.per_history
    )
    result = run(
        loaded,
        tasks,
        draft_sizes=args.draft_sizes,
        context_tokens=args.context_tokens,
        max_tokens=args.max_tokens,
        exit_thresholds=args.exit_thresholds,
        stop_thresholds=args.stop_thresholds,
        self_sizes=args.self_draft_sizes,
        min_ngrams=args.lookup_min_ngrams,
    )
    if args.edits is not None:
        result["edits_sample"] = sample_label(args.sample, args.per_history)
    if loaded.exit_heads is None and (args.exit_thresholds or args.stop_thresholds):
        print(f"{prog}: note: {loaded.model_id} has no exit heads; no early-exit methods", file=sys.stderr)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
