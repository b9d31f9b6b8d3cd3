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
import bisect
import json
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from splice.retrieval.chunking import parse_outline, parser_for
from splice.retrieval.context import (
    ContextAssembler,
    ContextSlots,
    RenderStyle,
    Snippet,
    approx_tokens,
    bound_names,
    render_context,
    render_snippet,
)
from splice.retrieval.files import WalkConfig
from splice.retrieval.indexer import RepositoryIndex
from splice.retrieval.languages import expand_languages
from splice.retrieval.store import StoredImport
from splice.retrieval.tokens import IDENTIFIER, is_meaningful

if TYPE_CHECKING:
    from splice.completion.engine import CompletionEngine

KS = (1, 5, 10)
_COMMENT = re.compile(r"^\s*(#|//|/\*|\*|\"\"\"|''')")


@dataclass(frozen=True)
class Task:
    path: str
    language: str
    line: int  # 0-based
    name: str
    prefix: str
    target: str  # the line, stripped
    chunk_id: int  # the defining chunk
    defined_in: str


_LITERAL_NODES = frozenset(
    {
        "string",
        "comment",
        "line_comment",
        "block_comment",
        "string_literal",
        "raw_string_literal",
        "char_literal",
        "template_string",
        "interpreted_string_literal",
        "concatenated_string",
        "text_block",
        "system_lib_string",
    }
)


_IMPORT_NODES = frozenset(
    {
        "import_statement",
        "import_from_statement",
        "future_import_statement",
        "import_declaration",
        "preproc_include",
        "use_declaration",
        "export_statement",  # only those with a `source`: re-exports
    }
)


def _literal_rows(text: str, language: str) -> tuple[list[tuple[int, int]], set[int]]:
    """Byte spans of strings and comments, and every row of import statements (all the lines
    of a parenthesised multi-line import), in `text`."""
    tree = parser_for(language).parse(text.encode("utf-8"))
    spans: list[tuple[int, int]] = []
    import_rows: set[int] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type in _LITERAL_NODES:
            spans.append((node.start_byte, node.end_byte))
            continue
        if node.type in _IMPORT_NODES and (
            node.type != "export_statement" or node.child_by_field_name("source") is not None
        ):
            import_rows.update(range(node.start_point.row, node.end_point.row + 1))
            continue
        stack.extend(node.children)
    return spans, import_rows


def build_tasks(index: RepositoryIndex, limit: int, seed: int = 0, per_file: int = 3) -> list[Task]:
    """Up to `limit` tasks, spread over files (at most `per_file` each), deterministic for `seed`.

    A task is an occurrence of a name defined at the top level of exactly one file B, in a file A
    that does not define or bind it itself, outside strings, comments and import statements, and
    not as an attribute (`x.name`) unless `x` is a name A imports (a module: `utils.name`)."""
    store = index.store
    unique: dict[str, tuple[int, str]] = {}  # name -> (chunk id, path) for names defined once
    seen_twice: set[str] = set()
    for path in store.paths():
        for chunk in store.chunks_in_file(path):
            if not chunk.name or chunk.kind in ("header", "block") or "." in chunk.qualname:
                continue
            if chunk.name in unique and unique[chunk.name][1] != path:
                seen_twice.add(chunk.name)
            unique.setdefault(chunk.name, (chunk.id, path))
    for name in seen_twice:
        unique.pop(name, None)

    by_file: dict[str, list[Task]] = defaultdict(list)
    for state in sorted(store.file_states().values(), key=lambda s: s.path):
        try:
            text = (index.root / state.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        outline = parse_outline(text, state.language)
        local = {c.name for c in outline.chunks if c.name} | bound_names(text)
        modules: set[str] = set()  # names bound to imports of the repository's own modules
        for imp in outline.imports:  # a name imported from outside the repository is not B's
            for name, bound in imp.names or (("", imp.local),):
                stored = StoredImport(imp.module, name, bound, imp.line, imp.level, imp.system)
                if index.resolver.resolve(state.path, state.language, stored):
                    modules.add(bound)
                else:
                    local.add(bound)
        literals, import_rows = _literal_rows(text, state.language)
        literal_starts = sorted(literals)
        lines = text.split("\n")
        offsets = []  # byte offset of each line
        offset = 0
        for line in lines:
            offsets.append(offset)
            offset += len(line.encode("utf-8")) + 1
        for i, line in enumerate(lines):
            stripped = line.strip()
            if i in import_rows or len(stripped) < 8 or len(stripped) > 120:
                continue
            for m in IDENTIFIER.finditer(line):
                name = m.group(0)
                hit = unique.get(name)
                if hit is None or hit[1] == state.path or name in local or len(name) < 3:
                    continue
                if not is_meaningful(name):
                    continue
                before = line[: m.start()].rstrip()
                if before.endswith((".", "->", "::")):
                    qualifier = re.search(r"([A-Za-z_]\w*)\s*(?:\.|->|::)$", before)
                    if qualifier is None or qualifier.group(1) not in modules:
                        continue
                at = offsets[i] + len(line[: m.start()].encode("utf-8"))
                k = bisect.bisect_right(literal_starts, (at, 1 << 62)) - 1
                if k >= 0 and literal_starts[k][0] <= at < literal_starts[k][1]:
                    continue
                indent = line[: len(line) - len(line.lstrip())]
                prefix = "\n".join(lines[:i]) + ("\n" if i else "") + indent
                by_file[state.path].append(
                    Task(state.path, state.language, i, name, prefix, stripped, hit[0], hit[1])
                )
                break
    rng = random.Random(seed)
    files = sorted(by_file)
    rng.shuffle(files)
    for f in files:
        rng.shuffle(by_file[f])
    tasks: list[Task] = []
    for round_ in range(per_file):
        for f in files:
            if len(tasks) >= limit:
                return tasks
            if round_ < len(by_file[f]):
                tasks.append(by_file[f][round_])
    return tasks


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
    progress: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, object]:
    """The evaluation; `model=None` skips exact match (retrieval numbers only). The context of a
    task is chosen and laid out as the service does (`ContextSlots`: budget in the model's
    tokens, at most `context_snippets` snippets, the best nearest the document). `adapter` is
    a `SPLICE_ADAPTER` value (`default`: the model's shipped adapter; `none`; a folder)."""
    engine = _engine(model, prompt_tokens, adapter) if model is not None else None
    count: Callable[[str], int] = approx_tokens
    if engine is not None:
        tokenizer = engine.tokenizer

        def count(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

    with tempfile.TemporaryDirectory(prefix="splice-eval-") as tmp:
        index = RepositoryIndex(
            repo, index_dir or Path(tmp), WalkConfig(languages=expand_languages(languages))
        )
        try:
            report = index.build(show_progress=progress)
            log(f"indexed {report.files_indexed} files ({report.chunks} chunks) in {report.seconds:.1f} s")
            tasks = build_tasks(index, limit)
            if not tasks:
                raise ValueError(f"no cross-file tasks found in {repo}")
            assembler = ContextAssembler(index)
            slots = ContextSlots(max_snippets=context_snippets)
            ranks: list[int | None] = []
            in_budget: list[bool] = []
            contexts: list[str] = []
            for i, task in enumerate(tqdm(tasks, desc="retrieval", disable=not progress, unit="task")):
                style = RenderStyle.for_language(task.language, commented=commented)
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
    result["em_with"] = None
    result["em_without"] = None
    if engine is not None:
        em_with, em_without = _exact_match(engine, tasks, contexts, progress)
        result["em_with"], result["em_without"] = round(em_with, 4), round(em_without, 4)
    result["index_files_per_s"] = round(report.files_per_s, 1)
    result["index_files"] = report.files_indexed
    result["index_seconds"] = round(report.seconds, 2)
    result["update_ms_p50"] = round(_percentile(times, 0.5), 2)
    result["update_ms_p99"] = round(_percentile(times, 0.99), 2)
    result["context_tokens"] = context_tokens
    result["context_snippets"] = context_snippets
    result["context_commented"] = commented
    result["prompt_tokens"] = prompt_tokens
    result["adapter"] = engine.loaded.adapter_name if engine is not None else None
    return result


def _cost(count: Callable[[str], int], style: RenderStyle) -> Callable[[Snippet], int]:
    """What a snippet costs in the prompt: the tokens of its rendering."""
    return lambda snippet: count(render_snippet(snippet, style))


def _engine(model: str, prompt_tokens: int, adapter: str | None = "default") -> CompletionEngine:
    from splice.completion.adapters import load_served_model
    from splice.completion.engine import CompletionEngine, EngineConfig
    from splice.completion.models import parse_spec

    loaded = load_served_model(parse_spec(model), adapter, progress=lambda m: print(m, file=sys.stderr))
    return CompletionEngine(loaded, EngineConfig(max_prompt_tokens=prompt_tokens))


def _exact_match(
    engine: CompletionEngine, tasks: list[Task], contexts: list[str], progress: bool
) -> tuple[float, float]:
    """Exact match of the completed line, through the service's completion path (templates,
    token healing, post-processing), with the task's context and without it."""
    from splice.completion.engine import CompletionInput, GenerationParams

    params = GenerationParams(max_tokens=48, stop=("\n",))
    hits = {"with": 0, "without": 0}
    for task, context in tqdm(
        list(zip(tasks, contexts, strict=True)), desc="completions", disable=not progress
    ):
        for arm, ctx in (("with", context), ("without", "")):
            inp = CompletionInput(task.prefix, "", task.language, task.path, context=ctx)
            out = engine.complete(inp, params)
            if out.text.split("\n")[0].strip() == task.target:
                hits[arm] += 1
    return hits["with"] / len(tasks), hits["without"] / len(tasks)


def print_table(result: dict[str, object]) -> None:
    keys = ["tasks", "recall@1", "recall@5", "recall@10", "recall@budget", "em_with", "em_without"]
    keys += ["index_files_per_s", "update_ms_p50", "update_ms_p99"]
    print(f"| {result['repo']} | " + " | ".join(f"{k}={result[k]}" for k in keys) + " |")


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
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.repo.is_dir():
        print(f"splice eval retrieval: error: not a directory: {args.repo}", file=sys.stderr)
        return 2
    if args.limit < 1:
        print("splice eval retrieval: error: --limit must be >= 1", file=sys.stderr)
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
