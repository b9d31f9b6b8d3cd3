"""`splice bench edits`: KV reuse methods compared on real edit histories, side by side.

For every edit history (original file + ordered unified diffs), each step's hunks are applied
as editor edits, then a completion is asked for one line (--task): `edit-line`, the step's first
added non-blank line (the edit sits right before the cursor); `next-line`, the first non-blank
line --lines-after lines below the step's last change (the edit sits inside the prompt and
everything after it has moved, as in the PIE paper's setup). The prompt is the text before
that line plus its indentation (the last --context-tokens tokens), the suffix is the rest.
Every method keeps its own document cache across the steps of a history, so approximation
errors accumulate as they would in an editor session. Each history's caches start from the
file before its first edit, encoded with prefix and suffix around the first step's cursor
offset. The model is the one `splice serve` serves: the default model with its shipped FIM
adapter (`--adapter none`: without it, prefix-only prompts).

Methods: full (recompute), prefix (common-prefix reuse), naive (splice without fixing
positions), pie, pie+refresh. Per method: exact match and edit similarity of the first line
against the true line, agreement with `full`, time to first token p50/p90, prompt tokens
encoded per step and the ratio of each to `full`.

    splice bench edits --data ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        [--task edit-line|next-line] [--model default] [--adapter default] [--limit 40] \\
        [--context-tokens 2048] [--json OUT]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from splice.completion.adapters import load_served_model
from splice.completion.document_cache import DocumentKey
from splice.completion.drift import distance_after_edit, kv_deviation, next_token_drift
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.kv_format import KV_FORMATS
from splice.completion.models import LoadedModel, ModelLoadError, parse_spec
from splice.completion.pie import encode_full
from splice.completion.pie_plan import REUSE_METHODS, ReuseMethod
from splice.completion.token_edits import diff_tokens
from splice.training.gate import edit_similarity
from splice.training.lintseq import HUNK, apply_unified_diff

# edit-line: complete the step's first added line (the edit sits right before the cursor).
# next-line: complete the first non-blank line `lines_after` lines below the step's last change
# (the edit sits inside the prompt and everything after it moves, as in the PIE paper's setup).
Task = Literal["edit-line", "next-line"]
TASKS: tuple[Task, ...] = ("edit-line", "next-line")


@dataclass(frozen=True)
class Step:
    history: str
    before: str  # the file before the step
    after: str  # the file after it
    prefix: str  # prompt text: up to the target line's indentation
    suffix: str  # the rest of the file after the target line
    target: str  # the target line, without its indentation


def _new_file_lines(diff: str) -> Iterator[tuple[str, str, int]]:
    """(tag, content, 0-based line in the new file) for every body line of a unified diff;
    for a "-" line, the new-file line it was removed before."""
    new_line = 0
    for line in diff.splitlines():
        m = HUNK.match(line)
        if m:
            new_line = int(m.group(3)) - 1
            continue
        if line.startswith(("+++", "---")) or line[:1] not in ("+", "-", " "):
            continue
        yield line[:1], line[1:], new_line
        if line[:1] in ("+", " "):
            new_line += 1


def first_added_line(diff: str) -> int | None:
    """0-based line number, in the new file, of the step's first added non-blank line."""
    return next((at for tag, text, at in _new_file_lines(diff) if tag == "+" and text.strip()), None)


def last_changed_line(diff: str) -> int | None:
    """0-based line number, in the new file, just after the step's last added or removed line."""
    last = None
    for tag, _, at in _new_file_lines(diff):
        if tag == "+":
            last = at + 1
        elif tag == "-":
            last = at
    return last


def target_line(diff: str, after: str, task: Task, lines_after: int) -> int | None:
    """The line to complete after the step: see `Task`."""
    if task == "edit-line":
        return first_added_line(diff)
    changed = last_changed_line(diff)
    if changed is None:
        return None
    lines = after.splitlines()
    for i in range(changed + lines_after, len(lines)):
        if lines[i].strip():
            return i
    return None


Sample = Literal["spread", "file"]
SAMPLES: tuple[Sample, ...] = ("spread", "file")


def _history_steps(row: dict[str, object], task: Task, lines_after: int) -> list[Step]:
    text = str(row["original"])
    steps: list[Step] = []
    for diff in row["steps"]:  # type: ignore[attr-defined]
        try:
            after = apply_unified_diff(text, diff)
        except ValueError:
            break
        target = target_line(diff, after, task, lines_after)
        if target is not None:
            lines = after.splitlines(keepends=True)
            line = lines[target].rstrip("\r\n")
            indent = line[: len(line) - len(line.lstrip())]
            head = "".join(lines[:target])
            steps.append(
                Step(
                    str(row["id"]),
                    text,
                    after,
                    head + indent,
                    "\n" + "".join(lines[target + 1 :]),
                    line.strip(),
                )
            )
        text = after
    return steps


def load_steps(
    path: Path,
    limit: int | None,
    task: Task = "edit-line",
    lines_after: int = 20,
    *,
    sample: Sample = "spread",
    per_history: int = 3,
) -> Iterator[tuple[str, str, list[Step]]]:
    """Yield (history id, original text, its steps), stopping after `limit` steps in total.

    `spread` (the default) visits the histories in the order of a hash of their id and takes at
    most `per_history` consecutive steps from each, so a small `limit` still samples every
    repository in the file (the public file is sorted by repository: its first 20 steps are all
    astropy). `file` takes every step in file order, as the benchmarks did before.
    """
    if sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose from {', '.join(SAMPLES)}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows: Iterable[dict[str, object]] = (json.loads(raw) for raw in fh)
        if sample == "spread":
            rows = sorted(rows, key=lambda r: hashlib.sha1(str(r["id"]).encode()).hexdigest())
        count = 0
        for row in rows:
            steps = _history_steps(row, task, lines_after)
            if sample == "spread":
                steps = steps[:per_history]
            take = steps if limit is None else steps[: max(0, limit - count)]
            if take:
                yield str(row["id"]), str(row["original"]), take
                count += len(take)
            if limit is not None and count >= limit:
                return


@dataclass
class MethodStats:
    em: list[float] = field(default_factory=list)
    es: list[float] = field(default_factory=list)
    agree: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    encoded: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # next-token KL(full || method) per step
    top1: list[float] = field(default_factory=list)  # next-token top-1 equal to full's
    refreshed: list[int] = field(default_factory=list)  # kept tokens re-encoded against drift
    forced_full: list[float] = field(default_factory=list)  # steps the drift bound forced a full encode

    def summary(self) -> dict[str, float]:
        q = statistics.quantiles(self.ttft_ms, n=10) if len(self.ttft_ms) > 1 else self.ttft_ms * 9
        return {
            "em": statistics.fmean(self.em),
            "es": statistics.fmean(self.es),
            "agree_full": statistics.fmean(self.agree),
            "kl_full_mean": statistics.fmean(self.kl) if self.kl else float("nan"),
            "kl_full_p90": _p90(self.kl),
            "top1_full": statistics.fmean(self.top1) if self.top1 else float("nan"),
            "refreshed_mean": statistics.fmean(self.refreshed),
            "forced_full_rate": statistics.fmean(self.forced_full),
            "ttft_ms_p50": statistics.median(self.ttft_ms),
            "ttft_ms_p90": q[8],
            "tokens_encoded_mean": statistics.fmean(self.encoded),
        }


def _p90(values: list[float]) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=10)[8] if len(values) > 1 else values[0]


DISTANCE_BINS: tuple[tuple[str, int, int], ...] = (
    ("0-7", 0, 8),
    ("8-31", 8, 32),
    ("32-127", 32, 128),
    ("128-511", 128, 512),
    ("512+", 512, 1 << 30),
)
HEAD_TOKENS = 4  # the window's first tokens (attention sinks)
TAIL_TOKENS = 16  # the tokens nearest the end of the prompt


class DriftBreakdown:
    """Where a method's reused caches deviate from full encodings: mean relative key and value
    deviation (averaged over layers) per token group, and per layer over all tokens."""

    def __init__(self) -> None:
        self.groups: dict[str, list[float]] = {}  # group -> [key sum, value sum, tokens]
        self.layers: list[list[float]] | None = None  # per layer [key sum, value sum, tokens]

    def _add(self, group: str, keys: torch.Tensor, values: torch.Tensor) -> None:
        if keys.numel() == 0:
            return
        acc = self.groups.setdefault(group, [0.0, 0.0, 0])
        acc[0] += float(keys.sum())
        acc[1] += float(values.sum())
        acc[2] += keys.numel()

    def add(self, keys: torch.Tensor, values: torch.Tensor, distance: list[int | None]) -> None:
        """`keys`/`values`: [layers, tokens] deviations; `distance`: tokens after the nearest edit
        before each token (None: before the first edit)."""
        if self.layers is None:
            self.layers = [[0.0, 0.0, 0] for _ in range(keys.shape[0])]
        for layer, acc in enumerate(self.layers):
            acc[0] += float(keys[layer].sum())
            acc[1] += float(values[layer].sum())
            acc[2] += keys.shape[1]
        k, v = keys.mean(0), values.mean(0)  # [tokens]
        n = k.shape[0]
        head = [i for i in range(min(HEAD_TOKENS, n)) if distance[i] is not None]
        self._add(f"window head (first {HEAD_TOKENS}), after an edit", k[head], v[head])
        self._add(f"last {TAIL_TOKENS} tokens", k[-TAIL_TOKENS:], v[-TAIL_TOKENS:])
        body = range(HEAD_TOKENS, max(HEAD_TOKENS, n - TAIL_TOKENS))
        before = [i for i in body if distance[i] is None]
        self._add("before the first edit", k[before], v[before])
        for name, lo, hi in DISTANCE_BINS:
            at = [i for i in body if distance[i] is not None and lo <= distance[i] < hi]  # type: ignore[operator]
            self._add(f"{name} tokens after an edit", k[at], v[at])

    def summary(self) -> dict[str, object]:
        def mean(acc: list[float]) -> dict[str, float]:
            return {
                "key_dev": acc[0] / max(acc[2], 1),
                "value_dev": acc[1] / max(acc[2], 1),
                "tokens": acc[2],
            }

        return {
            "groups": {g: mean(a) for g, a in self.groups.items()},
            "layers": [mean(a) for a in self.layers or []],
        }


POLICY_KEYS = {
    "k": "refresh_first_k",
    "ratio": "refresh_ratio",
    "threshold": "refresh_threshold",
    "layer": "refresh_probe_layer",
    "bound": "drift_full_bound",
}


def parse_method(spec: str) -> tuple[ReuseMethod, dict[str, object]]:
    """`pie+refresh` or `pie+refresh:k=8,ratio=0.1,threshold=0.05,layer=1,bound=0.05` (a drift
    policy variant; unset fields take the model family's default); `kv=int8` (any method) stores
    idle caches quantized (kv_format.py)."""
    method, _, rest = spec.partition(":")
    if method not in REUSE_METHODS:
        raise ValueError(f"unknown method {method!r} in {spec!r}; choose from {', '.join(REUSE_METHODS)}")
    overrides: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if eq and key == "kv":
            if value not in KV_FORMATS:
                raise ValueError(f"bad kv format {value!r} in {spec!r}; choose from {', '.join(KV_FORMATS)}")
            overrides["kv_format"] = value
            continue
        if not eq or key not in POLICY_KEYS:
            raise ValueError(
                f"bad policy field {item!r} in {spec!r}; use {', '.join(POLICY_KEYS)} or kv as key=value"
            )
        if method != "pie+refresh":
            raise ValueError(f"only pie+refresh takes policy fields: {spec!r}")
        try:
            overrides[POLICY_KEYS[key]] = int(value) if key in ("k", "layer") else float(value)
        except ValueError:
            raise ValueError(f"bad number {value!r} in {spec!r}") from None
    return method, overrides


def run(
    loaded: LoadedModel,
    data: Path,
    *,
    methods: tuple[str, ...],
    limit: int | None,
    context_tokens: int,
    refresh_first_k: int | None = None,
    refresh_ratio: float | None = None,
    max_tokens: int = 32,
    progress: bool = True,
    task: Task = "edit-line",
    lines_after: int = 20,
    drift_report: bool = False,
    sample: Sample = "spread",
    per_history: int = 3,
) -> dict[str, object]:
    engines: dict[str, CompletionEngine] = {}
    for m in methods:
        method, overrides = parse_method(m)
        config = {"refresh_first_k": refresh_first_k, "refresh_ratio": refresh_ratio, **overrides}
        engines[m] = CompletionEngine(
            loaded,
            EngineConfig(max_prompt_tokens=context_tokens, reuse_method=method, **config),  # type: ignore[arg-type]
        )
    policies = {
        m: e.drift_policy.describe() for m, e in engines.items() if e.config.reuse_method == "pie+refresh"
    }
    stats = {m: MethodStats() for m in methods}
    breakdown = {m: DriftBreakdown() for m in methods if m != "full"}
    params = GenerationParams(max_tokens=max_tokens, stop=("\n",))
    n_steps = 0
    rows: list[dict[str, object]] = []  # per step: each method's line, KL, top-1 and tokens encoded
    started = time.perf_counter()
    for history, original, steps in load_steps(
        data, limit, task, lines_after, sample=sample, per_history=per_history
    ):
        key = DocumentKey("bench", history, loaded.model_id)
        # Prime every method's cache with the file before its first edit, split at the first
        # step's cursor offset (prefix and suffix, as the editor's last completion there would
        # have been), encoded once: the state is the same for all methods, and reuse never writes
        # into a cache it reads.
        any_engine = next(iter(engines.values()))
        cut = len(steps[0].prefix)
        primer = any_engine.prepare(CompletionInput(original[:cut], original[cut:]), params.max_tokens)
        primed = encode_full(loaded.model, primer.input_ids)
        for engine in engines.values():
            engine.kv.store(key, primed)
        for step in steps:
            n_steps += 1
            texts: dict[str, str] = {}
            stale: dict[str, float | None] = {}
            before = {m: engine.kv.peek(key) for m, engine in engines.items()}
            for m, engine in engines.items():
                result = engine.complete(CompletionInput(step.prefix, step.suffix), params, document=key)
                line = result.text.split("\n", 1)[0].strip()
                texts[m] = line
                stale[m] = result.stale_deviation
                s = stats[m]
                s.em.append(float(line == step.target))
                s.es.append(edit_similarity(line, step.target))
                s.ttft_ms.append(result.timings.first_token_ms)
                s.encoded.append(result.encoded_prompt_tokens)
                s.refreshed.append(result.refreshed_prompt_tokens)
                s.forced_full.append(float(result.forced_full_encode))
            for m in methods:
                stats[m].agree.append(float(texts[m] == texts.get("full", texts[m])))
            row: dict[str, object] = {"history": history, "target": step.target, "methods": {}}
            rows.append(row)
            full_doc = engines["full"].kv.peek(key) if "full" in engines else None
            for m, engine in engines.items():
                row["methods"][m] = {  # type: ignore[index]
                    "line": texts[m],
                    "encoded": stats[m].encoded[-1],
                    "stale_deviation": stale[m],
                    "forced_full": bool(stats[m].forced_full[-1]),
                }
                doc = engine.kv.peek(key)
                if full_doc is None or doc is None or doc.ids != full_doc.ids:
                    continue
                if doc.logits is not None and full_doc.logits is not None:
                    drift = next_token_drift(full_doc.logits, doc.logits)
                    stats[m].kl.append(drift.kl)
                    stats[m].top1.append(float(drift.top1_agree))
                    row["methods"][m].update(kl=drift.kl, top1=drift.top1_agree)  # type: ignore[index]
                prev = before[m]
                if drift_report and m in breakdown and prev is not None:
                    script = diff_tokens(prev.ids, doc.ids)
                    keys, values = kv_deviation(full_doc, doc)
                    breakdown[m].add(keys, values, distance_after_edit(script, len(doc.ids)))
            if progress:
                elapsed = time.perf_counter() - started
                eta = elapsed / n_steps * ((limit or n_steps) - n_steps)
                print(
                    f"\r  step {n_steps}/{limit or '?'}  {elapsed:.0f}s elapsed, ETA {eta:.0f}s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    if not n_steps:
        raise SystemExit("no usable steps in the data")
    summary = {m: s.summary() for m, s in stats.items()}
    base = summary.get("full")
    for entry in summary.values():
        if base:
            entry["ttft_ratio_to_full"] = entry["ttft_ms_p50"] / base["ttft_ms_p50"]
            entry["tokens_ratio_to_full"] = entry["tokens_encoded_mean"] / base["tokens_encoded_mean"]
    return {
        "model": loaded.model_id,
        "adapter": loaded.adapter_name,
        "steps": n_steps,
        "task": task,
        "sample": sample_label(sample, per_history),
        "context_tokens": context_tokens,
        "policies": policies,
        "device": str(loaded.device),
        "threads": torch.get_num_threads(),
        "methods": summary,
        **({"drift": {m: b.summary() for m, b in breakdown.items()}} if drift_report else {}),
        "per_step": rows,
    }


def sample_label(sample: Sample, per_history: int) -> str:
    return sample if sample == "file" else f"spread, {per_history} per history"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --adapter and --device: the model a bench measures, as `splice serve` serves it."""
    parser.add_argument("--model", default="default", help="'default', a local folder or .gguf, or a hub id")
    parser.add_argument(
        "--adapter",
        default="default",
        help="'default' (the shipped FIM adapter for the default model, none for others: the "
        "model as `splice serve` serves it), a folder, or 'none'",
    )
    parser.add_argument("--device", default="auto")


def load_bench_model(args: argparse.Namespace) -> LoadedModel:
    """The model of `add_model_arguments`' options, its adapter merged (raises ModelLoadError)."""
    return load_served_model(
        parse_spec(args.model), args.adapter, device=args.device, progress=lambda m: print(m, file=sys.stderr)
    )


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """--sample and --per-history: how the edit histories' steps are picked (load_steps)."""
    parser.add_argument(
        "--sample",
        choices=SAMPLES,
        default="spread",
        help="spread (default): histories in hash order, at most --per-history steps each, so a "
        "small --limit covers every repository; file: every step in file order (older tables)",
    )
    parser.add_argument(
        "--per-history", type=int, default=3, help="spread: steps taken per history (default 3)"
    )


def print_table(result: dict[str, object]) -> None:
    methods = result["methods"]
    assert isinstance(methods, dict)
    print(
        f"\n{result['model']} (adapter: {result.get('adapter') or 'none'}), {result['task']}, "
        f"{result['steps']} steps, "
        f"{result['context_tokens']} context tokens, {result['sample']}, "
        f"{result['device']}"
    )
    width = max(12, *(len(name) for name in methods))
    head = f"{'method':<{width}} {'EM':>6} {'ES':>6} {'=full':>6} {'TTFT p50':>9} {'p90':>8} "
    head += f"{'encoded':>8} {'vs full':>8} {'refresh':>7} {'forced':>6} {'KL':>8} {'KL p90':>8} {'top-1':>6}"
    print(head)
    print("-" * len(head))
    for name, s in methods.items():
        ratio = s.get("ttft_ratio_to_full", 1.0)
        print(
            f"{name:<{width}} {s['em']:>6.3f} {s['es']:>6.3f} {s['agree_full']:>6.3f} "
            f"{s['ttft_ms_p50']:>7.0f}ms "
            f"{s['ttft_ms_p90']:>6.0f}ms {s['tokens_encoded_mean']:>8.0f} {ratio:>7.3f}x "
            f"{s['refreshed_mean']:>7.0f} {s['forced_full_rate']:>6.2f} "
            f"{s['kl_full_mean']:>8.4f} {s['kl_full_p90']:>8.4f} {s['top1_full']:>6.3f}"
        )
    policies = result.get("policies")
    if isinstance(policies, dict):
        for name, policy in policies.items():
            print(f"  {name}: {policy}")
    drift = result.get("drift")
    if isinstance(drift, dict):
        for name, report in drift.items():
            print(f"\n{name}: mean relative deviation from full (keys / values, averaged over layers)")
            for group, g in report["groups"].items():
                print(f"  {group:<34} {g['key_dev']:>8.4f} {g['value_dev']:>8.4f}  ({g['tokens']} tokens)")
            layers = report["layers"]
            if layers:
                line = "  ".join(
                    f"L{i}:{x['key_dev']:.3f}/{x['value_dev']:.3f}" for i, x in enumerate(layers)
                )
                print(f"  per layer  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="splice bench edits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="edit histories (.jsonl.gz)")
    add_model_arguments(parser)
    parser.add_argument("--limit", type=int, default=40, help="steps in total (default 40)")
    parser.add_argument("--context-tokens", type=int, default=2048)
    add_sample_arguments(parser)
    parser.add_argument(
        "--refresh-first-k",
        type=int,
        help="pie+refresh: tokens re-encoded per edit (default: the model family's drift policy)",
    )
    parser.add_argument(
        "--refresh-ratio",
        type=float,
        help="pie+refresh: fraction of the most deviant kept tokens re-encoded (CacheBlend-style; "
        "default: the model family's drift policy)",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="edit-line",
        help="edit-line: complete the edited line; next-line: complete a line below the edit",
    )
    parser.add_argument(
        "--lines-after", type=int, default=20, help="next-line: distance from the edit (lines)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(REUSE_METHODS),
        metavar="METHOD",
        help=f"{', '.join(REUSE_METHODS)}; a drift policy variant as pie+refresh:k=8,ratio=0.1,"
        "threshold=0.05,layer=1,bound=0.05 (unset fields: the model family's default)",
    )
    parser.add_argument(
        "--drift-report",
        action="store_true",
        help="also break each method's K/V deviation from full down by token group and layer",
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"splice bench edits: error: no such file: {args.data}", file=sys.stderr)
        return 2
    if args.per_history < 1:
        print("splice bench edits: error: --per-history must be >= 1", file=sys.stderr)
        return 2
    try:
        for m in args.methods:
            parse_method(m)
    except ValueError as exc:
        print(f"splice bench edits: error: {exc}", file=sys.stderr)
        return 2
    try:
        loaded = load_bench_model(args)
    except ModelLoadError as exc:
        print(f"splice bench edits: error: {exc}", file=sys.stderr)
        return 2
    methods = tuple(args.methods)
    if "full" in methods:  # full first, so agreement is measured against it
        methods = ("full", *(m for m in methods if m != "full"))
    result = run(
        loaded,
        args.data,
        methods=methods,
        limit=args.limit,
        context_tokens=args.context_tokens,
        refresh_first_k=args.refresh_first_k,
        refresh_ratio=args.refresh_ratio,
        task=args.task,
        lines_after=args.lines_after,
        drift_report=args.drift_report,
        sample=args.sample,
        per_history=args.per_history,
    )
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
