"""`splice bench next-edit`: next-edit suggestions on real edit histories, against the next step.

Each history's steps are replayed as an editor would send them (`RecentEdits`, as the service
records a tenant's changes). After step i, the cursor is where that step's last change ended,
and the suggestion rewrites the window of ±`--lines` lines around it, with the recent edits in
the prompt as the service renders them (`completion.next_edit`, the prompt and minimal edit
that `POST /v1/next-edit` uses). The truth is what step i+1 does to that window: the line
changes of step i+1 whose old lines lie inside it, applied to it (none: "no change" is right).

Reported, over the steps (and separately over those where the next step changes the window):
exact match of the predicted window with the true one, edit similarity of the two windows next
to the "no change" baseline's (the window as it is), how often the answer is "no change", how
often a suggested edit is exactly right, and the latency of a suggestion (p50/p90, CPU). As in
the service, each history's steps share one document cache (PIE reuse of the KV of what did not
change; `--no-cache` encodes every prompt in full).

Histories are split by a hash of their id (`--split heldout`, one in five, for the numbers
reported; `tune` for choosing settings), as in `splice bench edit-context`.

    splice bench next-edit --data ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        [--split heldout] [--limit 150] [--lines 5] [--edit-tokens 256] [--model default] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from typing import Any

from tqdm import tqdm

from splice.bench.edit_context import _same_path, check_history_args, history_parser, load_engine
from splice.completion.document_cache import DocumentKey
from splice.completion.next_edit import rewrite_input, rewrite_params, suggested_edit, window_around
from splice.completion.recent_edits import RecentEdits
from splice.retrieval.context import render_context
from splice.training.edit_samples import cursor_after, history_texts, split_of, true_window
from splice.training.gate import edit_similarity


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine, style, count = load_engine(args)

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=args.limit, desc="next-edit", disable=args.quiet)
    for history, path, texts in history_texts(args.data):
        if split_of(history) != args.split or len(texts) < 3:
            continue
        edits = RecentEdits()
        edits.open(history, texts[0])
        key = None if args.no_cache else DocumentKey("bench", history, engine.loaded.model_id)
        for i in range(1, len(texts) - 1):
            edits.change(history, texts[i])
            cursor = cursor_after(texts[i - 1], texts[i])
            if cursor is None:
                continue
            window = window_around(texts[i], cursor, args.lines, args.lines)
            truth = true_window(window, texts[i], texts[i + 1])
            diff = edits.render(args.edit_tokens, count, functools.partial(_same_path, path))
            context = render_context([], style, path, diff) if diff else ""
            inp = rewrite_input(window, "python", path, context)
            params = rewrite_params(window, count(window.text))
            t0 = time.perf_counter()
            result = engine.complete(inp, params, document=key)
            ms = (time.perf_counter() - t0) * 1000
            edit = suggested_edit(window, result.text, result.finish_reason)
            predicted = window.text
            if edit is not None:
                s, e = edit.start - window.start, edit.end - window.start
                predicted = window.text[:s] + edit.text + window.text[e:]
            rows.append(
                {
                    "history": history,
                    "step": i,
                    "changes_window": truth != window.text,
                    "no_change_answer": edit is None,
                    "exact": predicted == truth,
                    "es": edit_similarity(predicted, truth),
                    "es_copy": edit_similarity(window.text, truth),
                    "ms": ms,
                    "generated_tokens": result.completion_tokens,
                    "encoded_prompt_tokens": result.encoded_prompt_tokens,
                    "prompt_tokens": result.prompt_tokens,
                    "accepted_draft_tokens": result.accepted_draft_tokens,
                    "finish_reason": result.finish_reason,
                    "window": window.text,
                    "truth": truth,
                    "predicted": predicted,
                }
            )
            bar.update(1)
            if len(rows) >= args.limit:
                break
        if len(rows) >= args.limit:
            break
    bar.close()
    if not rows:
        raise SystemExit("splice bench next-edit: no step with a next step in this split")
    return summarize(rows, args)


def _part(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"steps": 0}
    edits = [r for r in rows if not r["no_change_answer"]]
    return {
        "steps": len(rows),
        "exact": round(statistics.fmean(r["exact"] for r in rows), 4),
        "es": round(statistics.fmean(r["es"] for r in rows), 4),
        "es_no_change_baseline": round(statistics.fmean(r["es_copy"] for r in rows), 4),
        "no_change_answers": round(statistics.fmean(r["no_change_answer"] for r in rows), 4),
        "suggested_edits": len(edits),
        "suggested_edits_exact": round(statistics.fmean(r["exact"] for r in edits), 4) if edits else None,
    }


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ms = [r["ms"] for r in rows]
    p90 = statistics.quantiles(ms, n=10)[-1] if len(ms) > 1 else ms[0]
    return {
        "split": args.split,
        "model": args.model,
        "adapter": args.adapter,
        "lines": args.lines,
        "edit_tokens": args.edit_tokens,
        "prompt_tokens": args.prompt_tokens,
        "histories": len({r["history"] for r in rows}),
        "all": _part(rows),
        "window_changes": _part([r for r in rows if r["changes_window"]]),
        "window_stays": _part([r for r in rows if not r["changes_window"]]),
        "ms_p50": round(statistics.median(ms), 1),
        "ms_p90": round(p90, 1),
        "generated_tokens_mean": round(statistics.fmean(r["generated_tokens"] for r in rows), 1),
        "document_cache": not args.no_cache,
        "encoded_prompt_share": round(
            sum(r["encoded_prompt_tokens"] for r in rows) / max(1, sum(r["prompt_tokens"] for r in rows)), 4
        ),
        "accepted_draft_share": round(
            sum(r["accepted_draft_tokens"] for r in rows) / max(1, sum(r["generated_tokens"] for r in rows)),
            4,
        ),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"next edit ({result['split']} split, {result['all']['steps']} steps of {result['histories']} "
        f"histories), window ±{result['lines']} lines, recent edits ≤ {result['edit_tokens']} tokens, "
        f"prompt {result['prompt_tokens']} tokens"
    )
    print(
        f"{'steps':24} {'n':>5} {'exact':>7} {'ES':>7} {'ES no-change':>13} "
        f"{'no-change ans':>14} {'edits exact':>12}"
    )
    for name, key in (
        ("all", "all"),
        ("next step changes it", "window_changes"),
        ("window stays", "window_stays"),
    ):
        part = result[key]
        if not part["steps"]:
            continue
        exact_edits = "-" if part["suggested_edits_exact"] is None else f"{part['suggested_edits_exact']:.3f}"
        print(
            f"{name:24} {part['steps']:5d} {part['exact']:7.3f} {part['es']:7.3f} "
            f"{part['es_no_change_baseline']:13.3f} {part['no_change_answers']:14.3f} "
            f"{exact_edits:>8} ({part['suggested_edits']})"
        )
    print(
        f"latency per suggestion: p50 {result['ms_p50']:.0f} ms, p90 {result['ms_p90']:.0f} ms; "
        f"{result['generated_tokens_mean']:.0f} tokens generated on average, "
        f"{100 * result['accepted_draft_share']:.0f}% of them from verified drafts; "
        + (
            f"document cache on (each history's steps reuse its KV): "
            f"{100 * result['encoded_prompt_share']:.0f}% of prompt tokens encoded"
            if result["document_cache"]
            else "no document cache: every prompt encoded in full"
        )
    )


def main(argv: list[str] | None = None) -> int:
    prog = "splice bench next-edit"
    parser = history_parser(prog, __doc__, 150)
    parser.add_argument("--lines", type=int, default=5, help="window lines above and below the cursor's")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="encode every prompt in full (default: a document cache per history)",
    )
    args = parser.parse_args(argv)
    if not check_history_args(prog, args):
        return 2
    if not 0 <= args.lines <= 20:
        print(f"{prog}: --lines must be in 0..20", file=sys.stderr)
        return 2
    result = run(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
