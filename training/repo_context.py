"""Repository-context samples: teach the model to use the snippets `splice.retrieval` puts
before the document.

At serving time the prompt is `context + FIM prompt`, where the context is the repository's
snippets (definitions of the names in use, similar code) rendered between file separators
(`<file_sep>path\\n...`), as StarCoder2 and Qwen2.5-Coder are trained on repository-level data.
A model trained only on single files, packed several to a row, learns to disregard whatever
comes before its FIM sentinels: exactly where the context goes. These samples fix that with
the real thing: for each repository of the corpus (its files grouped by their source, the
first component of a record's id), the index is built, cross-file tasks are drawn from its own
code (`splice.retrieval.tasks`: a line using a name defined in another file), and the context
the service would assemble for that cursor comes before the FIM sample whose middle is that
line. Repositories named in `exclude` (those an evaluation uses) are left out.

Everything is deterministic for a corpus and settings, so a resumed run replays the same rows.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from splice.completion.fim import FimTemplate, repository_separator
from splice.retrieval.context import (
    ContextAssembler,
    ContextSlots,
    RenderStyle,
    Snippet,
    render_context,
    render_snippet,
)
from splice.retrieval.files import WalkConfig
from splice.retrieval.indexer import RepositoryIndex
from splice.retrieval.tasks import build_tasks


@dataclass(frozen=True)
class RepoSample:
    """A FIM sample with repository context: `context` (rendered snippets) comes first, then
    the document's prefix/suffix around `middle` (the task's line)."""

    repository: str
    path: str
    context: str
    prefix: str
    middle: str
    suffix: str


def group_repositories(records: Iterable[dict[str, str]]) -> dict[str, dict[str, str]]:
    """repository -> {path inside it: text}, from corpus records whose id is `source/path`."""
    repos: dict[str, dict[str, str]] = defaultdict(dict)
    for record in records:
        source, _, rel = record["id"].partition("/")
        if rel:
            repos[source][rel] = record["text"]
    return dict(repos)


def build_repo_samples(
    repositories: dict[str, dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    template: FimTemplate,
    *,
    context_tokens: int = 384,
    context_snippets: int = 5,
    per_repository: int = 200,
    suffix_lines: int = 20,
    suffix_rate: float = 0.5,
    exclude: Sequence[str] = (),
    min_files: int = 3,
    seed: int = 0,
    show_progress: bool = False,
) -> list[RepoSample]:
    """Up to `per_repository` samples from each repository with at least `min_files` files.

    The context is assembled and laid out as the service does (`ContextAssembler`,
    `ContextSlots` within `context_tokens` of the model's tokens), rendered with the template's
    file separator when the tokenizer has it as one token. With probability `suffix_rate` the
    sample keeps up to `suffix_lines` lines after the task's line as its suffix (an edit in the
    middle of a file), otherwise none (typing at the end)."""
    excluded = {e.lower() for e in exclude}
    sep = repository_separator(tokenizer, template)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    samples: list[RepoSample] = []
    names = [
        n for n in sorted(repositories) if n.lower() not in excluded and len(repositories[n]) >= min_files
    ]
    bar = tqdm(names, desc="repository context", unit="repo", disable=not show_progress)
    for name in bar:
        files = repositories[name]
        bar.set_postfix(repo=name, samples=len(samples))
        with tempfile.TemporaryDirectory(prefix="splice-repo-") as tmp:
            root = Path(tmp) / "repo"
            for rel, text in files.items():
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            index = RepositoryIndex(root, Path(tmp) / "index", WalkConfig())
            try:
                index.build()
                tasks = build_tasks(index, per_repository, seed=seed)
                assembler = ContextAssembler(index)
                slots = ContextSlots(max_snippets=context_snippets)
                rng = random.Random(f"{seed}:{name}")
                for i, task in enumerate(tasks):
                    style = RenderStyle.for_language(task.language, file_sep=sep)

                    def cost(snippet: Snippet, style: RenderStyle = style) -> int:
                        return count(render_snippet(snippet, style))

                    ranked = assembler.candidates(task.path, task.prefix, "", task.language)
                    chosen = slots.arrange(
                        f"{name}:{i}",
                        ranked,
                        context_tokens,
                        cost,
                    )
                    lines = files[task.path].split("\n")
                    line = lines[task.line]
                    indent = line[: len(line) - len(line.lstrip())]
                    keep = suffix_lines if rng.random() < suffix_rate else 0
                    after = lines[task.line + 1 : task.line + 1 + keep]
                    samples.append(
                        RepoSample(
                            repository=name,
                            path=task.path,
                            context=render_context(chosen, style, task.path),
                            prefix=task.prefix,
                            middle=line[len(indent) :] + "\n",
                            suffix="\n".join(after),
                        )
                    )
            finally:
                index.close()
    return samples


def cached_repo_samples(
    cache: Path, key: dict[str, object], build: Callable[[], list[RepoSample]]
) -> list[RepoSample]:
    """The samples stored in `cache` when they were built with the same `key` (corpus and
    settings), else `build()`'s, stored there (atomically) for the next start or resume."""
    if cache.is_file():
        try:
            with gzip.open(cache, "rt", encoding="utf-8") as f:
                if json.loads(f.readline()) == key:
                    return [RepoSample(**json.loads(line)) for line in f if line.strip()]
        except (OSError, ValueError, TypeError, EOFError):
            pass  # unreadable or from another version: rebuild
    samples = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write(json.dumps(key) + "\n")
        for sample in samples:
            f.write(json.dumps(asdict(sample)) + "\n")
    os.replace(tmp, cache)
    return samples


def corpus_repo_samples(
    data: Path,
    out: Path,
    tokenizer: PreTrainedTokenizerBase,
    template: FimTemplate,
    *,
    model_id: str,
    context_tokens: int,
    per_repository: int,
    exclude: Sequence[str],
    seed: int,
    show_progress: bool = False,
) -> list[RepoSample]:
    """The repository samples of the corpus folder `data` (`splice data corpus`), cached in the
    run folder `out` under a key of the corpus file and the settings."""
    from splice.training.corpus import read_corpus

    corpus = data / "train.jsonl.gz"
    stat = corpus.stat()
    key: dict[str, object] = {
        "corpus": str(corpus.resolve()),
        "corpus_bytes": stat.st_size,
        "corpus_mtime_ns": stat.st_mtime_ns,
        "model": model_id,
        "template": template.name,
        "context_tokens": context_tokens,
        "per_repository": per_repository,
        "exclude": sorted(exclude),
        "seed": seed,
    }
    return cached_repo_samples(
        out / "repo_samples.jsonl.gz",
        key,
        lambda: build_repo_samples(
            group_repositories(read_corpus(corpus)),
            tokenizer,
            template,
            context_tokens=context_tokens,
            per_repository=per_repository,
            exclude=exclude,
            seed=seed,
            show_progress=show_progress,
        ),
    )
