"""`splice data corpus`, `splice finetune`, `splice train exits` and `splice eval infill`: the
training side's commands.

Kept apart from `cli.py` so the serving commands stay readable; each command translates flags into
the training package's config objects and its errors into CLI messages with a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from splice.assistant.cli import CliError


def _progress_bar(desc: str, unit: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)


# --- splice data corpus ---


def cmd_data_corpus(args: argparse.Namespace) -> int:
    from splice.training.corpus import CorpusConfig, build_corpus

    try:
        config = CorpusConfig(
            languages=tuple(args.languages),
            include_stdlib=not args.no_stdlib,
            max_file_bytes=args.max_file_bytes,
            heldout_percent=args.heldout_percent,
            near_dup_threshold=args.near_dup_threshold,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{out} exists and is not empty; pass --force to overwrite it", 2)
    bar = _progress_bar("corpus", "file", args.quiet)

    def progress(done: int, total: int, source: str) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix_str(source, refresh=False)

    try:
        manifest = build_corpus(out, config, progress=progress)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    files: dict[str, int] = manifest["files"]  # type: ignore[assignment]
    dropped: dict[str, int] = manifest["dropped"]  # type: ignore[assignment]
    licenses: dict[str, int] = manifest["by_license"]  # type: ignore[assignment]
    excluded: list[dict[str, str]] = manifest["excluded_sources"]  # type: ignore[assignment]
    print(
        f"{files['kept']:,} files kept of {files['seen']:,} "
        f"({files['train']:,} train, {files['heldout']:,} held out), "
        f"{manifest['bytes_kept']:,} bytes, in {manifest['seconds']} s"
    )
    print(f"dropped: {', '.join(f'{k} {v}' for k, v in dropped.items()) or 'none'}")
    print(f"licenses: {', '.join(f'{k} {v}' for k, v in licenses.items())}")
    print(
        f"excluded distributions ({len(excluded)}): "
        + ", ".join(f"{s['name']} ({s['license']})" for s in excluded)
    )
    print(f"wrote {out}/train.jsonl.gz, heldout.jsonl.gz, manifest.json")
    return 0


# --- splice finetune ---

_SKIP_FLAGS = {"notes"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field (--lora-r, --max-steps, ...); unset flags keep the config's value."""
    from splice.training.config import FinetuneConfig

    defaults = FinetuneConfig()
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in _SKIP_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"default {default!r}"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        elif f.name == "time_limit_s":
            parser.add_argument(
                flag, type=float, default=None, help="stop with a checkpoint after this many seconds"
            )
        else:
            parser.add_argument(flag, type=type(default), default=None, help=help_text)


def _finetune_config(args: argparse.Namespace) -> Any:
    from splice.training.config import FinetuneConfig

    data: dict[str, Any] = {}
    try:
        if args.config:
            data = FinetuneConfig.load(Path(args.config)).to_dict()
        for f in dataclasses.fields(FinetuneConfig):
            value = getattr(args, f.name, None)
            if value is not None:
                data[f.name] = tuple(value) if isinstance(value, list) else value
        config = FinetuneConfig.from_dict(data)
    except FileNotFoundError as exc:
        raise CliError(f"no such config file: {args.config}", 2) from exc
    except (ValueError, TypeError) as exc:
        raise CliError(f"invalid fine-tuning config: {exc}", 2) from exc
    if not config.data:
        raise CliError(
            "give the training data: --data DIR (from `splice data corpus`) or `data` in --config", 2
        )
    return config


def cmd_finetune_repo(args: argparse.Namespace) -> int:
    """`splice finetune --repo PATH`: the fine-tune job of the service, in this process."""
    from splice.assistant.adapter_registry import AdapterRegistry
    from splice.assistant.settings import Settings
    from splice.completion.models import ModelLoadError
    from splice.training.repo_data import RepoDataError
    from splice.training.team import TeamJobSpec, run_team_job
    from splice.training.trainer import TrainingError

    settings = Settings.model_validate({})
    repo = Path(args.repo).expanduser().resolve()
    out = Path(args.out) if args.out else settings.home / "finetune" / f"{repo.name}-{args.method or 'lora'}"
    if args.restart:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    try:
        spec = TeamJobSpec(
            repo=str(repo),
            out=str(out),
            model=args.model or settings.model,
            base_adapter=args.base_adapter if args.base_adapter is not None else settings.adapter,
            method=args.method or "lora",
            max_steps=args.max_steps or 200,
            time_limit_s=args.time_limit_s,
            lr=args.lr,
            lora_r=args.lora_r or 8,
            batch_size=args.batch_size or settings.finetune_batch_size,
            seq_len=args.seq_len or settings.finetune_seq_len,
            use_lintseq=args.lintseq,
            use_history=args.history,
            edit_rate=args.edit_rate,
            gate_tasks=args.gate_tasks or settings.finetune_gate_tasks,
            gate_test_tasks=settings.finetune_gate_test_tasks
            if args.gate_test_tasks is None
            else args.gate_test_tasks,
            gate_test_python=args.gate_test_python or settings.finetune_gate_test_python,
            heldout_commits=args.heldout_commits or settings.finetune_heldout_commits,
            seed=args.seed or 0,
            device=args.device or settings.device,
        )
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc
    bar = _progress_bar("finetune", "step", args.quiet)
    phase = {"name": ""}

    def progress(p: dict[str, Any]) -> None:
        if p["phase"] != phase["name"]:
            phase["name"] = p["phase"]
            bar.reset(total=p.get("max_steps") or p.get("total"))
            bar.set_description(f"finetune {p['phase']}")
        if p["phase"] == "train":
            bar.update(int(p["step"]) - bar.n)
            bar.set_postfix(loss=f"{float(p['loss']):.3f}", refresh=False)
        elif "done" in p:
            bar.update(int(p["done"]) - bar.n)

    try:
        report = run_team_job(spec, progress=progress)
    except (RepoDataError, TrainingError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        bar.close()
    if report["state"] != "trained":
        print(f"stopped at step {report['step']}; run the same command again to resume", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report, indent=2))
    gate, data, training = report["gate"], report["data"], report["training"]
    print(
        f"repository {report['repository']}: {data['train_files']} training files, {data['heldout_files']} "
        f"held out (newest {spec.heldout_commits} commits); {data['lintseq_samples']} LintSeq and "
        f"{data['history_samples']} history samples"
    )
    title = f"held-out gate ({gate['tasks']} lines)"
    print(f"{title:34} {'before':>8} {'after':>8} {'p-value':>8}")
    rows = (("next-line exact match", "exact_match"), ("edit similarity", "edit_similarity"))
    for label, key in (*rows, ("FIM middle loss", "middle_loss")):
        row = gate[key]
        print(f"{label:34} {row['before']:8.4f} {row['after']:8.4f} {row['p_value']:8.4f}")
    if "tests_pass_rate" in gate:
        row = gate["tests_pass_rate"]
        label = f"tests pass ({row['tasks']} masked lines)"
        print(f"{label:34} {row['before']:8.4f} {row['after']:8.4f} {row['p_value']:8.4f}")
    else:
        print("tests pass rate: no held-out function has tests that run here (see --gate-test-python)")
    print(
        f"{report['method']}: {training['steps']} steps in {training['train_seconds']:.0f} s, "
        f"{training['trained_parameters']:,} trained parameters; adapter in {report['adapter']}"
    )
    if not gate["beats_current"]:
        print("the adapter does not beat the current model on the gate: not registered")
        return 4
    if args.tenant:
        registry = AdapterRegistry(settings.home)
        record = registry.register(args.tenant, Path(report["adapter"]), f"{repo.name}-{spec.method}")
        print(f"registered as tenant {args.tenant!r}'s adapter {record.id}")
    return 0


def _edit_samples(config: Any, job: Any, train_texts: list[str]) -> list[Any]:
    """Next-edit and edit-context samples (`training.edit_samples`) for `config.edit_samples`."""
    from splice.completion.fim import repository_separator
    from splice.retrieval.context import RenderStyle
    from splice.training.edit_samples import edit_samples

    tokenizer = job.loaded.tokenizer
    histories = Path(config.edit_histories) if config.edit_histories else None
    if histories is not None and not histories.is_file():
        raise CliError(f"edit_histories: {histories} does not exist", 2)
    for repo in config.edit_repositories:
        if not (Path(repo) / ".git").exists():
            raise CliError(f"edit_repositories: {repo} is not a git checkout", 2)
    style = RenderStyle.for_language("python", repository_separator(tokenizer, job.template))
    samples, stats = edit_samples(
        histories,
        [(f"corpus/{i}.py", text) for i, text in enumerate(train_texts)],
        style,
        lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        seed=config.seed,
        lintseq_files=config.edit_lintseq_files,
        repositories=[Path(r) for r in config.edit_repositories],
    )
    print(
        f"finetune: {len(samples):,} edit samples ({config.edit_samples:.0%} of the samples): "
        f"{stats['history_samples']:,} from {stats['histories']} edit histories (tune split), "
        f"{stats['lintseq_samples']:,} from LintSeq sequences of {stats['lintseq_files']} corpus files, "
        f"{stats['git_samples']:,} from the git history of {stats['git_files']} repository files",
        file=sys.stderr,
    )
    if not samples:
        raise CliError("edit_samples is set but no edit sample could be made", 2)
    return samples


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.repo:
        return cmd_finetune_repo(args)
    from splice.completion.models import ModelLoadError
    from splice.training.export import export_adapter
    from splice.training.repo_context import corpus_repo_samples
    from splice.training.trainer import (
        TrainingError,
        latest_checkpoint,
        load_corpus_texts,
        prepare_model,
        train,
    )

    config = _finetune_config(args)
    out = Path(config.out)
    if latest_checkpoint(out) is not None and args.restart:
        import shutil

        shutil.rmtree(out / "checkpoints")
    try:
        train_texts, heldout, manifest = load_corpus_texts(Path(config.data))
        job = prepare_model(config)
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "finetune-config.json")
        print(
            f"finetune: {len(train_texts):,} training files, {len(heldout):,} held out; "
            f"{config.tokens_per_step:,} tokens per step, {config.max_steps} steps; "
            f"template {job.template.name}"
            + (f", added tokens {job.added_tokens}" if job.added_tokens else ""),
            file=sys.stderr,
        )
        repo_samples = []
        if config.repo_context:
            repo_samples = corpus_repo_samples(
                Path(config.data),
                out,
                job.loaded.tokenizer,
                job.template,
                model_id=job.loaded.model_id,
                context_tokens=config.repo_context_tokens,
                per_repository=config.repo_per_repository,
                exclude=config.repo_exclude,
                seed=config.seed,
                show_progress=not args.quiet,
            )
            excluded = ", ".join(config.repo_exclude) or "none"
            print(
                f"finetune: {len(repo_samples):,} repository-context samples "
                f"({config.repo_context:.0%} of the samples; repositories excluded: {excluded})",
                file=sys.stderr,
            )
        if config.edit_samples:
            repo_samples += _edit_samples(config, job, train_texts)
        state = train(job, train_texts, heldout, show_progress=not args.quiet, repo_samples=repo_samples)
    except (TrainingError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if state.step < config.max_steps:
        print(
            f"stopped at step {state.step} of {config.max_steps} (checkpoint in {out}/checkpoints); "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 3
    export_adapter(job, state, out, name=args.name or out.name, manifest=manifest)
    last = state.evals[-1]["heldout_loss"] if state.evals else float("nan")
    print(
        f"adapter written to {out}: {state.tokens:,} tokens in {state.train_seconds / 60:.1f} min "
        f"({state.tokens / max(state.train_seconds, 1e-9):.0f} tokens/s), held-out loss "
        f"{state.evals[0]['heldout_loss']:.3f} -> {last:.3f}"
    )
    return 0


# --- splice train exits ---


def cmd_train_exits(args: argparse.Namespace) -> int:
    from splice.completion.adapters import load_served_model
    from splice.completion.models import ModelLoadError, parse_spec
    from splice.training.exits import ExitTrainConfig, train_exits
    from splice.training.trainer import TrainingError, load_corpus_texts

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[stage] = _progress_bar(
                stage, "step" if stage in ("lenses", "controller") else "sample", args.quiet
            )
            bar.total = total
        bar.update(done - bar.n)

    try:
        config = ExitTrainConfig(
            data=args.data,
            out=args.out,
            model=args.model,
            adapter="none" if args.no_adapter else args.adapter,
            exit_layers=tuple(args.exit_layers or ()),
            samples=args.samples,
            heldout_samples=args.heldout_samples,
            lens_steps=args.lens_steps,
            controller_steps=args.controller_steps,
            seed=args.seed,
        )
        if args.restart:
            for name in ("checkpoint.pt", "features-train.pt", "features-heldout.pt"):
                (Path(config.out) / name).unlink(missing_ok=True)
        train_texts, heldout, _ = load_corpus_texts(Path(config.data))
        loaded = load_served_model(
            parse_spec(config.model), config.adapter, device=args.device, dtype="float32"
        )
        _, report = train_exits(config, loaded, train_texts, heldout, progress)
    except (TrainingError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print(
            f"exit heads written to {Path(config.out) / 'exits'} ({report.heldout_tokens:,} held-out tokens):"
        )
        for row in report.thresholds:
            print(
                f"  exit threshold {row['exit_threshold']}: "
                f"{row['layer_savings']:.1%} of layer compute saved, "
                f"{row['same_as_full']:.1%} same token as the full model"
            )
    return 0


# --- splice eval infill ---


def cmd_eval_infill(args: argparse.Namespace) -> int:
    from splice.completion.adapters import load_served_model
    from splice.completion.engine import CompletionEngine, EngineConfig
    from splice.completion.models import ModelLoadError, parse_spec
    from splice.training.infill_eval import InfillDataError, load_tasks, run_eval, set_name

    data = Path(args.data)
    try:
        load_tasks(data, 1)  # fail fast on a bad file, before the model loads
        loaded = load_served_model(
            parse_spec(args.model),
            "none" if args.no_adapter else args.adapter or "default",
            device=args.device,
            dtype=args.dtype,
            progress=lambda m: print(m, file=sys.stderr),
        )
        engine = CompletionEngine(loaded, EngineConfig(fim_template=args.template, fim_mode=args.mode))
    except (InfillDataError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc), 2 if isinstance(exc, InfillDataError) else 1) from exc
    bar = _progress_bar(f"infill {set_name(data)}", "task", args.quiet)

    def progress(done: int, total: int, passed: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix_str(f"pass@1 {passed / done:.3f}", refresh=False)

    try:
        report = run_eval(
            engine,
            data,
            limit=args.limit,
            max_tokens=args.max_tokens,
            seed=args.seed,
            workers=args.workers,
            timeout_s=args.timeout,
            samples_out=Path(args.samples) if args.samples else None,
            progress=progress,
            extra={
                "model": loaded.model_id,
                "adapter": loaded.adapter_name,
                "template": engine.template.name,
                "mode": engine.fim_mode,
                "max_tokens": args.max_tokens,
            },
        )
    finally:
        bar.close()
    print(
        f"{report['set']}: n={report['n']} pass@1={report['pass@1']:.3f} "
        f"exact_match={report['exact_match']:.3f} "
        f"({report['model']}{' + ' + report['adapter'] if report['adapter'] else ''}, "
        f"template {report['template']}, "
        f"{report['seconds']} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.record and loaded.adapter is not None:
        from splice.training.export import record_eval

        record_eval(Path(loaded.adapter), report)
    return 0


def add_training_commands(sub: Any, eval_sub: Any) -> None:
    data = sub.add_parser("data", help="build training data", description="Build training data.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    corpus = data_sub.add_parser(
        "corpus",
        help="collect permissively licensed code from this machine",
        description="Collect source files from the standard library and installed distributions with a "
        "permissive license (MIT, BSD, Apache-2.0, PSF, ISC, ...), filter, deduplicate (exact and "
        "MinHash near-duplicates) and split by file into train and held-out sets.",
    )
    corpus.add_argument("--out", required=True, help="output folder")
    corpus.add_argument("--languages", nargs="+", default=["python"], metavar="LANG", help="default: python")
    corpus.add_argument("--no-stdlib", action="store_true", help="leave the standard library out")
    corpus.add_argument(
        "--max-file-bytes", type=int, default=200_000, help="skip larger files (default 200 KB)"
    )
    corpus.add_argument("--heldout-percent", type=float, default=2.0, help="files held out (default 2%%)")
    corpus.add_argument(
        "--near-dup-threshold", type=float, default=0.85, help="MinHash Jaccard (default 0.85)"
    )
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--force", action="store_true", help="write into a non-empty folder")
    corpus.add_argument("--json", action="store_true", help="print the manifest as JSON")
    corpus.add_argument("--quiet", action="store_true", help="no progress bar")
    corpus.set_defaults(func=cmd_data_corpus)

    train = sub.add_parser(
        "train", help="train parts of a served model", description="Train parts of a served model."
    )
    train_sub = train.add_subparsers(dest="train_command", metavar="WHAT")
    train_sub.required = True
    exits = train_sub.add_parser(
        "exits",
        help="train early-exit heads (lenses + Stop/Exit/Continue controller)",
        description="Train early-exit heads for a model and its adapter on a corpus from "
        "`splice data corpus`: "
        "per exit layer an affine lens into the model's own head, and a Stop/Exit/Continue controller from "
        "teacher-forced labels (backbone frozen). Writes OUT/exits (heads, metadata, model card); "
        "OUT keeps features and a checkpoint, so running the same command again resumes.",
    )
    exits.add_argument("--data", required=True, help="a `splice data corpus` folder")
    exits.add_argument("--out", required=True, help="output folder")
    exits.add_argument("--model", default="default", help="model spec (default: the default model)")
    exits.add_argument(
        "--adapter", default="default", help="adapter the heads serve with (default: the shipped one)"
    )
    exits.add_argument("--no-adapter", action="store_true", help="the base model alone")
    exits.add_argument(
        "--exit-layers", type=int, nargs="+", metavar="L", help="default: 60/70/80/90%% of the depth"
    )
    exits.add_argument("--samples", type=int, default=300, help="training FIM samples (default 300)")
    exits.add_argument("--heldout-samples", type=int, default=80, help="held-out FIM samples (default 80)")
    exits.add_argument("--lens-steps", type=int, default=200)
    exits.add_argument("--controller-steps", type=int, default=600)
    exits.add_argument("--seed", type=int, default=0)
    exits.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    exits.add_argument("--restart", action="store_true", help="ignore features and checkpoints in --out")
    exits.add_argument("--json", action="store_true", help="print the held-out report as JSON")
    exits.add_argument("--quiet", action="store_true", help="no progress bar")
    exits.set_defaults(func=cmd_train_exits)

    finetune = sub.add_parser(
        "finetune",
        help="train a LoRA FIM adapter",
        description="Fine-tune a LoRA adapter for fill-in-the-middle on a corpus from `splice data corpus`. "
        "Checkpoints go to OUT/checkpoints; running the same command again resumes. Settings come from "
        "--config (JSON or TOML, the fields of FinetuneConfig) and flags, flags winning. "
        "Runs on one CPU or GPU.",
    )
    finetune.add_argument(
        "--repo",
        metavar="PATH",
        help="fine-tune on this git checkout (a team's repository): FIM, LintSeq and git-history samples, "
        "newest commits' files held out, gate before/after; the flags below that apply are honoured",
    )
    finetune.add_argument(
        "--tenant", help="--repo: register the adapter for this tenant if it passes the gate"
    )
    finetune.add_argument("--base-adapter", help="--repo: the served base adapter (default: SPLICE_ADAPTER)")
    finetune.add_argument("--lintseq", action=argparse.BooleanOptionalAction, default=True, help="--repo")
    finetune.add_argument("--history", action=argparse.BooleanOptionalAction, default=True, help="--repo")
    finetune.add_argument("--edit-rate", type=float, default=0.3, help="--repo: share of edit samples")
    finetune.add_argument("--gate-tasks", type=int, help="--repo: held-out lines the gate scores")
    finetune.add_argument(
        "--gate-test-tasks",
        type=int,
        help="--repo: masked lines of tested held-out functions checked by the repository's tests (0: off)",
    )
    finetune.add_argument(
        "--gate-test-python", help="--repo: the Python that runs the repository's tests (its virtualenv's)"
    )
    finetune.add_argument("--heldout-commits", type=int, help="--repo: newest commits held out")
    finetune.add_argument("--json", action="store_true", help="--repo: print the report as JSON")
    finetune.add_argument("--config", help="JSON or TOML file of FinetuneConfig fields")
    finetune.add_argument("--name", help="adapter name in its model card (default: the --out folder's name)")
    finetune.add_argument("--restart", action="store_true", help="ignore existing checkpoints in --out")
    finetune.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(finetune)
    finetune.set_defaults(func=cmd_finetune)

    infill = eval_sub.add_parser(
        "infill",
        help="HumanEval infilling: pass@1 and exact match",
        description="Generate the middle of each HumanEval infilling task through the service's completion "
        "path and run the tests in a sandbox (timeout, memory, processes, no network).",
    )
    infill.add_argument("--data", required=True, help="a HumanEval-*Infilling.jsonl.gz file")
    infill.add_argument("--model", default="default", help="model spec (default: the default model)")
    adapter = infill.add_mutually_exclusive_group()
    adapter.add_argument(
        "--adapter", help="adapter folder (default: the shipped FIM adapter for the default model)"
    )
    adapter.add_argument("--no-adapter", action="store_true", help="the base model alone")
    infill.add_argument(
        "--template", default="auto", help="FIM template (default: detected; prefix-only to compare)"
    )
    infill.add_argument(
        "--mode",
        choices=["auto", "psm", "spm"],
        default="auto",
        help="FIM layout (default: the adapter's, else psm)",
    )
    infill.add_argument("--limit", type=int, help="a fixed random sample of N tasks (by --seed)")
    infill.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    infill.add_argument(
        "--max-tokens", type=int, default=128, help="tokens to generate per task (default 128)"
    )
    infill.add_argument("--timeout", type=float, default=10.0, help="seconds per test program (default 10)")
    infill.add_argument("--workers", type=int, default=2, help="test programs run in parallel (default 2)")
    infill.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    infill.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    infill.add_argument("--json", metavar="OUT", help="write the report as JSON")
    infill.add_argument("--samples", metavar="OUT", help="write each task's middle and verdict as JSON lines")
    infill.add_argument("--record", action="store_true", help="add the report to the adapter's model card")
    infill.add_argument("--quiet", action="store_true", help="no progress bar")
    infill.set_defaults(func=cmd_eval_infill)
