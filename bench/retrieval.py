"""Retrieval evaluation on a repository's own cross-file references.

Tasks: a line of file A that uses a name defined at the top level of exactly one other file B
(so the answer is unambiguous, and found without the resolver under test) and that A neither
defines nor binds (parameters, assignments); occurrences in strings, comments, import lines and
attribute accesses on anything but an imported module are not tasks. The prompt is A up to that
line (and the line's indentation), with nothing after it. For each task:

- recall@k: whether the defining chunk in B is among the first k snippets the context assembler
  ranks for that cursor; `recall@budget` is the same over the snippets that fit the context
  budget (what the model sees);
- exact match of the completed line, generated greedily by the default model through the
  service's completion path, with the assembled context and without it, at the same total prompt
  budget.

The index is built from scratch in a temporary folder (timed: files/s), and single-file updates
are timed on a sample of files as an editor buffer update (parse + store).

    splice eval retrieval --repo PATH [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from splice.retrieval.context import (
    ContextAssembler,
    ContextSlots,
    RenderStyle,
    Snippet,
    approx_tokens,
    render_context,
    render_snippet,
)
from splice.retrieval.files import WalkConfig
from splice.retrieval.indexer import RepositoryIndex
from splice.retrieval.languages import expand_languages
from splice.retrieval.tasks import Task, build_tasks

if TYPE_CHECKING:
    from splice.completion.engine import CompletionEngine

KS = (1, 5, 10)


def _hit(snippets: list[Snippet], task: Task) -> int | None:
    """1-based rank of the defining chunk among `snippets`, or None."""
    for rank, s in enumerate(snippets, 1):  # a definitions snippet shows several chunks
        if task.chunk_id in s.chunk_ids:
            return rank
    return None


def update_times(index: RepositoryIndex, n: int = 100, seed: int = 0) -> list[float]:
    """Milliseconds to re-index one file from an editor buffer (parse + store), on `n` files."""
    paths = index.store.paths()
    random.Random(seed).shuffle(paths)
    times = []
    for rel in paths[:n]:
        try:
            text = (index.root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        t0 = time.perf_counter()
        index.update_buffer(rel, text + "\n")
        times.append((time.perf_counter() - t0) * 1000.0)
        index.buffers.discard(rel)
    return times


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(
    repo: Path,
    *,
    limit: int = 100,
    model: str | None = "default",
    adapter: str | None = "default",
    context_tokens: int = 512,
    context_snippets: int = 5,
    commented: bool = False,
    prompt_tokens: int = 2048,
    languages: list[str] | None = None,
    index_dir: Path | None = None,
    per_file: int = 3,
    dtype: str = "auto",
    samples: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, object]:
    """The evaluation; `model=None` skips exact match (retrieval numbers only). The context of a
    task is chosen and laid out as the service does (`ContextSlots`: budget in the model's
    tokens, at most `context_snippets` snippets, the best nearest the document). `adapter` is
    a `SPLICE_ADAPTER` value (`default`: the model's shipped adapter; `none`; a folder). Snippets
    are rendered as the service renders them for that model (between file separators when its
    template has one the tokenizer knows). `samples` gets one JSON line per task."""
    engine = _engine(model, prompt_tokens, adapter, dtype) if model is not None else None
    count: Callable[[str], int] = approx_tokens
    file_sep: str | None = None
    if engine is not None:
        from splice.completion.fim import repository_separator

        tokenizer = engine.tokenizer
        file_sep = repository_separator(tokenizer, engine.template)

        def count(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

    with tempfile.TemporaryDirectory(prefix="splice-eval-") as tmp:
        index = RepositoryIndex(
            repo, index_dir or Path(tmp), WalkConfig(languages=expand_languages(languages))
        )
        try:
            report = index.build(show_progress=progress)
            log(f"indexed {report.files_indexed} files ({report.chunks} chunks) in {report.seconds:.1f} s")
            tasks = build_tasks(index, limit, per_file=per_file)
            if not tasks:
                raise ValueError(f"no cross-file tasks found in {repo}")
            assembler = ContextAssembler(index)
            slots = ContextSlots(max_snippets=context_snippets)
            ranks: list[int | None] = []
            in_budget: list[bool] = []
            contexts: list[str] = []
            for i, task in enumerate(tqdm(tasks, desc="retrieval", disable=not progress, unit="task")):
                style = RenderStyle.for_language(task.language, file_sep, commented=commented)
                ranked = assembler.candidates(task.path, task.prefix, "", task.language)
                ranks.append(_hit(ranked, task))
                chosen = slots.arrange(f"task-{i}", ranked, context_tokens, _cost(count, style))
                in_budget.append(_hit(chosen, task) is not None)
                contexts.append(render_context(chosen, style, task.path))
            times = update_times(index)
        finally:
            index.close()

    n = len(tasks)
    result: dict[str, object] = {"repo": str(repo), "tasks": n}
    for k in KS:
        result[f"recall@{k}"] = round(sum(1 for r in ranks if r is not None and r <= k) / n, 4)
    result["recall@budget"] = round(sum(in_budget) / n, 4)
    result["by_directory"] = recall_by_directory(tasks, ranks)
    result["em_with"] = None
    result["em_without"] = None
    if engine is not None:
        outputs = _complete(engine, tasks, contexts, progress)
        hit_with = [o[0].split("\n")[0].strip() == t.target for o, t in zip(outputs, tasks, strict=True)]
        hit_without = [o[1].split("\n")[0].strip() == t.target for o, t in zip(outputs, tasks, strict=True)]
        result["em_with"] = round(sum(hit_with) / n, 4)
        result["em_without"] = round(sum(hit_without) / n, 4)
        only_with = sum(a and not b for a, b in zip(hit_with, hit_without, strict=True))
        only_without = sum(b and not a for a, b in zip(hit_with, hit_without, strict=True))
        result["em_only_with"], result["em_only_without"] = only_with, only_without
        result["em_mcnemar_p"] = round(mcnemar_p(only_with, only_without), 4)
        if samples is not None:
            samples.parent.mkdir(parents=True, exist_ok=True)
            with samples.open("w") as f:
                rows = zip(tasks, ranks, contexts, outputs, strict=True)
                for task, rank, ctx, (out_with, out_without) in rows:
                    record = {
                        "path": task.path,
                        "line": task.line + 1,
                        "name": task.name,
                        "defined_in": task.defined_in,
                        "target": task.target,
                        "rank": rank,
                        "with": out_with,
                        "without": out_without,
                        "context_tokens": count(ctx),
                    }
                    f.write(json.dumps(record) + "\n")
    result["index_files_per_s"] = round(report.files_per_s, 1)
    result["index_files"] = report.files_indexed
    result["index_seconds"] = round(report.seconds, 2)
    result["update_ms_p50"] = round(_percentile(times, 0.5), 2)
    result["update_ms_p99"] = round(_percentile(times, 0.99), 2)
    result["context_tokens"] = context_tokens
    result["context_snippets"] = context_snippets
    result["context_commented"] = commented
    result["prompt_tokens"] = prompt_tokens
    result["per_file"] = per_file
    result["file_sep"] = file_sep
    result["adapter"] = engine.loaded.adapter_name if engine is not None else None
    return result


def top_directory(path: str) -> str:
    """The first folder of a repository path (`tests`, `src`, `docs`, `examples`), `.` at the root."""
    return path.split("/", 1)[0] if "/" in path else "."


def recall_by_directory(
    tasks: list[Task], ranks: list[int | None], k: int = 5
) -> dict[str, dict[str, float]]:
    """recall@k per top folder of the task's file (where the cursor is), and per top folder of the
    defining file (where the answer is)."""
    out: dict[str, dict[str, float]] = {}
    for side, key in (("task", lambda t: t.path), ("defined", lambda t: t.defined_in)):
        groups: dict[str, list[bool]] = {}
        for task, rank in zip(tasks, ranks, strict=True):
            groups.setdefault(f"{side}:{top_directory(key(task))}", []).append(rank is not None and rank <= k)
        for name, hits in sorted(groups.items()):
            out[name] = {"tasks": len(hits), f"recall@{k}": round(sum(hits) / len(hits), 4)}
    return out


def _cost(count: Callable[[str], int], style: RenderStyle) -> Callable[[Snippet], int]:
    """What a snippet costs in the prompt: the tokens of its rendering."""
    return lambda snippet: count(render_snippet(snippet, style))


def _engine(
    model: str, prompt_tokens: int, adapter: str | None = "default", dtype: str = "auto"
) -> CompletionEngine:
    from splice.completion.adapters import load_served_model
    from splice.completion.engine import CompletionEngine, EngineConfig
    from splice.completion.models import parse_spec

    loaded = load_served_model(
        parse_spec(model), adapter, dtype=dtype, progress=lambda m: print(m, file=sys.stderr)
    )
    return CompletionEngine(loaded, EngineConfig(max_prompt_tokens=prompt_tokens))


def _complete(
    engine: CompletionEngine, tasks: list[Task], contexts: list[str], progress: bool
) -> list[tuple[str, str]]:
    """The completed line of each task, through the service's completion path (templates,
    token healing, post-processing), with the task's context and without it."""
    from splice.completion.engine import CompletionInput, GenerationParams

    params = GenerationParams(max_tokens=48, stop=("\n",))
    outputs = []
    for task, context in tqdm(
        list(zip(tasks, contexts, strict=True)), desc="completions", disable=not progress
    ):
        pair = []
        for ctx in (context, ""):
            inp = CompletionInput(task.prefix, "", task.language, task.path, context=ctx)
            pair.append(engine.complete(inp, params).text)
        outputs.append((pair[0], pair[1]))
    return outputs


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: the binomial probability of a split of the `b + c`
    discordant pairs at least as uneven as (b, c) when either arm is as likely to win."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def print_table(result: dict[str, object]) -> None:
    keys = ["tasks", "recall@1", "recall@5", "recall@10", "recall@budget", "em_with", "em_without"]
    keys += [k for k in ("em_only_with", "em_only_without", "em_mcnemar_p") if k in result]
    keys += ["index_files_per_s", "update_ms_p50", "update_ms_p99"]
    print(f"| {result['repo']} | " + " | ".join(f"{k}={result[k]}" for k in keys) + " |")
    groups = result.get("by_directory")
    if isinstance(groups, dict) and groups:
        cells = [f"{name} {g['recall@5']:.2f} ({g['tasks']})" for name, g in groups.items()]
        print("  recall@5 by folder: " + ", ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="splice eval retrieval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repo", type=Path, required=True, help="repository folder")
    parser.add_argument("--limit", type=int, default=100, help="tasks (default 100)")
    parser.add_argument("--model", default="default", help="model spec for exact match (default: default)")
    parser.add_argument("--no-completions", action="store_true", help="retrieval numbers only")
    parser.add_argument(
        "--adapter", default="default", help="LoRA adapter folder (default: the shipped one, as served)"
    )
    parser.add_argument("--no-adapter", action="store_true", help="the base model without its adapter")
    parser.add_argument("--context-tokens", type=int, default=512, help="context budget (default 512)")
    parser.add_argument(
        "--context-snippets", type=int, default=5, help="most snippets in the context (default 5)"
    )
    parser.add_argument("--commented", action="store_true", help="comment out the snippets' code")
    parser.add_argument(
        "--prompt-tokens", type=int, default=2048, help="whole prompt budget (default 2048, as on CPU)"
    )
    parser.add_argument("--languages", nargs="+", help="index only these languages")
    parser.add_argument("--per-file", type=int, default=3, help="most tasks from one file (default 3)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="model dtype"
    )
    parser.add_argument("--samples", type=Path, help="write each task's completions here (JSON lines)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.repo.is_dir():
        print(f"splice eval retrieval: error: not a directory: {args.repo}", file=sys.stderr)
        return 2
    if args.limit < 1 or args.per_file < 1:
        print("splice eval retrieval: error: --limit and --per-file must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run(
            args.repo,
            limit=args.limit,
            model=None if args.no_completions else args.model,
            adapter="none" if args.no_adapter else args.adapter,
            context_tokens=args.context_tokens,
            context_snippets=args.context_snippets,
            commented=args.commented,
            prompt_tokens=args.prompt_tokens,
            languages=args.languages,
            per_file=args.per_file,
            dtype=args.dtype,
            samples=args.samples,
        )
    except ValueError as exc:
        print(f"splice eval retrieval: error: {exc}", file=sys.stderr)
        return 1
    print_table(result)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
