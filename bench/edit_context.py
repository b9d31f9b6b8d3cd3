"""`splice bench edit-context`: completions with and without the recent-edits slot, paired, on
real edit histories.

Each history's steps are replayed into `RecentEdits` as the service records an editor's changes
(the file before a step, then, for `next-line`, after it); at each step one line is completed as
in `splice bench edits` (`edit-line`: the step's first added line; `next-line`: a line below the
step's last change), once with the recent edits rendered into the prompt as the service renders
them, and once without, at the same prompt budget (`--prompt-tokens`, the document's prefix is
cut to fit). Steps with no earlier edit to show are skipped (both arms would be the same prompt).

Histories are split by a hash of their id: `--split heldout` (one in five) for the numbers
reported, `tune` for choosing settings. Exact match and edit similarity of the first line are
paired per step: McNemar's exact test for exact match, the sign test for edit similarity.

    splice bench edit-context --data ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        [--task next-line] [--split heldout] [--limit 200] [--edit-tokens 256] [--model default] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from splice.bench.edits import TASKS, load_steps
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.fim import repository_separator
from splice.completion.recent_edits import RecentEdits
from splice.retrieval.context import RenderStyle, render_context
from splice.training.edit_samples import split_of
from splice.training.gate import _binomial_two_sided, edit_similarity


def _same_path(path: str, _uri: str) -> str:
    return path


def history_paths(data: Path) -> dict[str, str]:
    """History id -> the edited file's path in its repository."""
    with gzip.open(data, "rt", encoding="utf-8") as fh:
        return {row["id"]: row.get("path") or "file.py" for row in map(json.loads, fh)}


def load_engine(args: argparse.Namespace) -> tuple[CompletionEngine, RenderStyle, Callable[[str], int]]:
    """The served model of `--model`/`--adapter`, the prompt's context style and a token counter."""
    from splice.completion.adapters import load_served_model
    from splice.completion.models import parse_spec

    loaded = load_served_model(parse_spec(args.model), args.adapter, dtype=args.dtype)
    engine = CompletionEngine(loaded, EngineConfig(max_prompt_tokens=args.prompt_tokens))
    tokenizer = engine.tokenizer
    style = RenderStyle.for_language("python", repository_separator(tokenizer, engine.template))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return engine, style, count


def history_parser(prog: str, doc: str | None, limit: int) -> argparse.ArgumentParser:
    """The flags every edit-history benchmark takes (data, split, budgets, model, output)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="edit histories (.jsonl.gz)")
    parser.add_argument("--split", choices=("heldout", "tune"), default="heldout")
    parser.add_argument("--limit", type=int, default=limit, help=f"steps (default {limit})")
    parser.add_argument("--edit-tokens", type=int, default=256, help="the recent-edits slot's budget")
    parser.add_argument("--prompt-tokens", type=int, default=2048, help="prompt budget")
    parser.add_argument("--model", default="default")
    parser.add_argument("--adapter", default="default", help="SPLICE_ADAPTER value (default, none, a folder)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="write the result (with every step) here")
    parser.add_argument("--quiet", action="store_true")
    return parser


def check_history_args(prog: str, args: argparse.Namespace) -> bool:
    """False (after saying why) when the shared flags are unusable."""
    if not args.data.is_file():
        print(f"{prog}: {args.data} does not exist", file=sys.stderr)
        return False
    if args.limit < 1 or args.edit_tokens < 1 or args.prompt_tokens < 64:
        print(f"{prog}: --limit and --edit-tokens must be ≥ 1, --prompt-tokens ≥ 64", file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine, style, count = load_engine(args)

    params = GenerationParams(max_tokens=args.max_tokens, stop=("\n",))
    paths = history_paths(args.data)
    rows: list[dict[str, Any]] = []
    skipped = 0
    histories = load_steps(args.data, None, args.task, args.lines_after)
    bar = tqdm(total=args.limit, desc=f"edit-context {args.task}", disable=args.quiet)
    for history, original, steps in histories:
        if split_of(history) != args.split:
            continue
        path = paths.get(history, "file.py")
        edits = RecentEdits()
        edits.open(history, original)
        for step in steps:
            edits.change(history, step.before)  # every earlier step (those without a target too)
            if args.task == "next-line":
                edits.change(history, step.after)  # the step itself is above the cursor
            diff = edits.render(args.edit_tokens, count, functools.partial(_same_path, path))
            if not diff:
                skipped += 1
                continue
            outs = []
            for context in (render_context([], style, path, diff), ""):
                inp = CompletionInput(step.prefix, step.suffix, "python", path, context=context)
                t0 = time.perf_counter()
                text = engine.complete(inp, params).text.split("\n")[0].strip()
                outs.append((text, (time.perf_counter() - t0) * 1000))
            (with_, ms_with), (without, ms_without) = outs
            rows.append(
                {
                    "history": history,
                    "target": step.target,
                    "with": with_,
                    "without": without,
                    "em_with": with_ == step.target,
                    "em_without": without == step.target,
                    "es_with": edit_similarity(with_, step.target),
                    "es_without": edit_similarity(without, step.target),
                    "ms_with": ms_with,
                    "ms_without": ms_without,
                    "edit_tokens": count(diff),
                }
            )
            bar.update(1)
            if len(rows) >= args.limit:
                break
        if len(rows) >= args.limit:
            break
    bar.close()
    if not rows:
        raise SystemExit("splice bench edit-context: no step with an earlier edit in this split")
    return summarize(rows, skipped, args)


def summarize(rows: list[dict[str, Any]], skipped: int, args: argparse.Namespace) -> dict[str, Any]:
    n = len(rows)
    gained = sum(r["em_with"] and not r["em_without"] for r in rows)
    lost = sum(r["em_without"] and not r["em_with"] for r in rows)
    better = sum(r["es_with"] > r["es_without"] + 1e-12 for r in rows)
    worse = sum(r["es_with"] < r["es_without"] - 1e-12 for r in rows)
    return {
        "task": args.task,
        "split": args.split,
        "model": args.model,
        "adapter": args.adapter,
        "steps": n,
        "skipped_no_earlier_edit": skipped,
        "histories": len({r["history"] for r in rows}),
        "edit_tokens": args.edit_tokens,
        "prompt_tokens": args.prompt_tokens,
        "em_with": round(sum(r["em_with"] for r in rows) / n, 4),
        "em_without": round(sum(r["em_without"] for r in rows) / n, 4),
        "em_gained": gained,
        "em_lost": lost,
        "em_p": round(_binomial_two_sided(min(gained, lost), gained + lost), 4),
        "es_with": round(statistics.fmean(r["es_with"] for r in rows), 4),
        "es_without": round(statistics.fmean(r["es_without"] for r in rows), 4),
        "es_better": better,
        "es_worse": worse,
        "es_p": round(_binomial_two_sided(min(better, worse), better + worse), 4),
        "edit_tokens_mean": round(statistics.fmean(r["edit_tokens"] for r in rows), 1),
        "ms_p50_with": round(statistics.median(r["ms_with"] for r in rows), 1),
        "ms_p50_without": round(statistics.median(r["ms_without"] for r in rows), 1),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['task']} ({result['split']} split, {result['steps']} steps of "
        f"{result['histories']} histories; "
        f"{result['skipped_no_earlier_edit']} steps without an earlier edit skipped), "
        f"recent edits ≤ {result['edit_tokens']} tokens (mean {result['edit_tokens_mean']}), "
        f"prompt {result['prompt_tokens']} tokens"
    )
    print(f"{'':18} {'without':>8} {'with':>8} {'with wins':>10} {'loses':>6} {'p':>7}")
    print(
        f"{'exact match':18} {result['em_without']:8.3f} {result['em_with']:8.3f} "
        f"{result['em_gained']:10d} {result['em_lost']:6d} {result['em_p']:7.4f}"
    )
    print(
        f"{'edit similarity':18} {result['es_without']:8.3f} {result['es_with']:8.3f} "
        f"{result['es_better']:10d} {result['es_worse']:6d} {result['es_p']:7.4f}"
    )
    print(f"{'completion ms p50':18} {result['ms_p50_without']:8.0f} {result['ms_p50_with']:8.0f}")


def main(argv: list[str] | None = None) -> int:
    prog = "splice bench edit-context"
    parser = history_parser(prog, __doc__, 200)
    parser.add_argument("--task", choices=TASKS, default="next-line")
    parser.add_argument("--lines-after", type=int, default=20, help="next-line: distance from the edit")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if not check_history_args(prog, args):
        return 2
    result = run(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
