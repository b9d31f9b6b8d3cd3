"""Fine-tuning on a team's repository, end to end: data (`repo_data`), training (LoRA or SaRA on
the model exactly as it is served), the held-out gate (`gate`), and the adapter folder the service
applies per tenant (`completion.deltas`).

The same function runs from `splice finetune --repo PATH` (a progress bar), from a fine-tune job in
the server's process, and in `splice worker` processes fed through Redis. `out` holds the
checkpoints: a run killed at any point and started again with the same `out` resumes from its last
checkpoint (the trainer's own resume), and the gate's "before" scores are cached there too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from splice.completion.adapters import load_served_model
from splice.completion.deltas import DELTA_META, DELTA_WEIGHTS, DeltaRouter, served_id
from splice.completion.engine import CompletionEngine, EngineConfig
from splice.completion.models import LoadedModel, parse_spec
from splice.training.config import METHODS, FinetuneConfig
from splice.training.gate import GateTask, TaskScore, gate_tasks, paired_report, score
from splice.training.masked_tests import RepoTestRunner, masked_line_tasks
from splice.training.repo_data import RepoDataset, repository_dataset
from splice.training.trainer import Job, TrainState, prepare_model, train

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


class Cancelled(Exception):
    """The job was cancelled between two steps."""


@dataclass
class TeamJobSpec:
    repo: str  # a git checkout on this machine
    out: str  # the job's folder: checkpoints, gate scores, the adapter
    model: str = "default"
    base_adapter: str | None = "default"  # the served base adapter (merged), as `splice serve --adapter`
    method: str = "lora"
    max_steps: int = 200
    time_limit_s: float | None = None  # a training budget: at the limit, training ends and the gate runs
    lr: float | None = None  # None: 5e-4 for LoRA, 2e-4 for SaRA
    lora_r: int = 8
    batch_size: int = 4
    seq_len: int = 512
    use_lintseq: bool = True
    use_history: bool = True
    edit_rate: float = 0.3  # fraction of samples drawn from LintSeq + history (when there are any)
    gate_tasks: int = 60
    gate_test_tasks: int = 12  # masked lines of tested functions, checked by the repository's tests
    gate_test_python: str | None = None  # the interpreter for those tests (default: this one)
    gate_context_tokens: int = 1024  # the gate's prompts (and loss windows): the last this many tokens
    heldout_commits: int = 20
    seed: int = 0
    current_adapter: str | None = None  # folder of the tenant's current adapter: the gate's "before"
    accepted: str | None = None  # JSON lines of accepted completions ({filepath, prefix, suffix, text})
    device: str = "auto"
    data_limits: dict[str, Any] = field(default_factory=dict)  # repository_dataset's keyword arguments

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 1 <= self.max_steps <= 100_000:
            raise ValueError(f"max_steps must be in 1..100000, got {self.max_steps}")
        if not 0 <= self.gate_test_tasks <= 1000:
            raise ValueError(f"gate_test_tasks must be in 0..1000, got {self.gate_test_tasks}")
        if not 0.0 <= self.edit_rate < 1.0:
            raise ValueError(f"edit_rate must be in [0, 1), got {self.edit_rate}")


def _load(spec: TeamJobSpec) -> LoadedModel:
    return load_served_model(parse_spec(spec.model), spec.base_adapter, device=spec.device, dtype="float32")


def _gate_config(spec: TeamJobSpec) -> EngineConfig:
    """Completions as served, with the prompt cut to `gate_context_tokens` (the gate's cost)."""
    return EngineConfig(max_prompt_tokens=spec.gate_context_tokens)


def _scores(
    engine: CompletionEngine,
    tasks: list[GateTask],
    phase: str,
    progress: Progress,
    tests: RepoTestRunner,
) -> list[TaskScore]:
    def tick(done: int, total: int) -> None:
        progress({"phase": phase, "done": done, "total": total})

    return score(engine, tasks, progress=tick, tests=tests)


def _tested_tasks(
    spec: TeamJobSpec, data: RepoDataset, tests: RepoTestRunner, out: Path, progress: Progress
) -> list[GateTask]:
    """The masked-line tasks of tested held-out functions, found once per job (it runs the tests)."""
    path = out / "gate-tested.json"
    if path.is_file():
        return [GateTask(**{**t, "tests": tuple(t["tests"])}) for t in json.loads(path.read_text())]
    found: list[GateTask] = []
    if spec.gate_test_tasks:

        def tick(done: int, total: int) -> None:
            progress({"phase": "gate_tests", "done": done, "total": total})

        found = masked_line_tasks(
            {**data.train_files, **data.heldout_files},
            data.heldout_files,
            tests,
            limit=spec.gate_test_tasks,
            seed=spec.seed,
            progress=tick,
        )
    path.write_text(json.dumps([asdict(t) for t in found]))
    return found


def export_delta(job: Job, out: Path, meta: dict[str, Any]) -> Path:
    """The trained update as a delta adapter folder (`completion.deltas`)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    if job.sara is not None:
        tensors = {k: v.contiguous() for k, v in job.sara.export().items()}
    else:
        for name, module in job.model.get_base_model().named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                tensors[f"{name}.lora_A"] = (
                    module.lora_A["default"].weight.detach().float().cpu().contiguous()
                )
                tensors[f"{name}.lora_B"] = (
                    module.lora_B["default"].weight.detach().float().cpu().contiguous()
                )
                tensors[f"{name}.scale"] = torch.tensor(float(module.scaling["default"]))
    if not tensors:
        raise RuntimeError("the trained model has no adapted layers to export")
    save_file(tensors, str(out / DELTA_WEIGHTS))
    (out / DELTA_META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def run_team_job(
    spec: TeamJobSpec,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Build the data, score the current model on the held-out tasks, train (resuming), score
    again, export the adapter to `out/adapter`; returns the report (the gate decides registration)."""
    report_progress = progress or (lambda _: None)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report_progress({"phase": "data"})
    data: RepoDataset = repository_dataset(
        Path(spec.repo),
        heldout_commits=spec.heldout_commits,
        seed=spec.seed,
        use_lintseq=spec.use_lintseq,
        use_history=spec.use_history,
        accepted=_read_jsonl(Path(spec.accepted)) if spec.accepted else None,
        **spec.data_limits,
    )
    with RepoTestRunner(Path(spec.repo), python=spec.gate_test_python) as tests:
        return _run(spec, data, tests, out, report_progress, should_stop, show_progress, started)


def _run(
    spec: TeamJobSpec,
    data: RepoDataset,
    tests: RepoTestRunner,
    out: Path,
    report_progress: Progress,
    should_stop: Callable[[], bool] | None,
    show_progress: bool,
    started: float,
) -> dict[str, Any]:
    tasks = gate_tasks(data.heldout_files, limit=spec.gate_tasks, seed=spec.seed)
    tasks += _tested_tasks(spec, data, tests, out, report_progress)
    if not tasks:
        raise ValueError("the held-out files have no lines to evaluate on")
    loaded = _load(spec)
    base_id = served_id(loaded)
    engine = CompletionEngine(loaded, _gate_config(spec))
    before_path = out / "gate-before.json"
    if before_path.is_file():
        before = [TaskScore(**s) for s in json.loads(before_path.read_text())]
    else:
        if spec.current_adapter:
            router = DeltaRouter(loaded.model, base_id)
            router.add("current", Path(spec.current_adapter))
            with router.use("current"):
                before = _scores(engine, tasks, "gate_before", report_progress, tests)
            # the router's wrappers stay; training needs plain linear layers: load again
            loaded = _load(spec)
            engine = CompletionEngine(loaded, _gate_config(spec))
        else:
            before = _scores(engine, tasks, "gate_before", report_progress, tests)
        before_path.write_text(json.dumps([asdict(s) for s in before]))

    config = FinetuneConfig(
        out=str(out / "train"),
        model=spec.model,
        method=spec.method,
        lr=spec.lr if spec.lr is not None else (5e-4 if spec.method == "lora" else 2e-4),
        lora_r=spec.lora_r,
        lora_alpha=2 * spec.lora_r,
        batch_size=spec.batch_size,
        seq_len=spec.seq_len,
        max_steps=spec.max_steps,
        warmup_steps=min(20, max(1, spec.max_steps // 10)),
        time_limit_s=spec.time_limit_s,
        repo_context=spec.edit_rate if (data.lintseq or data.history or data.accepted) else 0.0,
        eval_every=max(10, spec.max_steps // 4),
        save_every=max(1, min(25, spec.max_steps // 10)),  # a killed job loses at most a tenth
        eval_rows=8,
        seed=spec.seed,
        token_training="trainable_tokens",
    )
    job = prepare_model(config, loaded)

    def on_step(state: TrainState, record: dict[str, float]) -> None:
        report_progress(
            {"phase": "train", "step": state.step, "max_steps": config.max_steps, "loss": record["loss"]}
        )
        if should_stop is not None and should_stop():
            raise Cancelled()

    train_started = time.perf_counter()
    state = train(
        job,
        list(data.train_files.values()),
        list(data.heldout_files.values()),
        on_step=on_step,
        show_progress=show_progress,
        repo_samples=data.lintseq + data.history + data.accepted,
    )
    # the trainer stops at the time limit as it stops at a signal; only the limit goes on to the gate
    out_of_budget = spec.time_limit_s is not None and time.perf_counter() - train_started >= spec.time_limit_s
    if state.step < config.max_steps and not out_of_budget:  # a signal: the checkpoint is saved
        return {"state": "interrupted", "step": state.step}
    job.model.eval()
    after = _scores(
        CompletionEngine(job.loaded, _gate_config(spec)), tasks, "gate_after", report_progress, tests
    )
    gate = paired_report(before, after)
    trained = (
        job.sara.trained_parameters()
        if job.sara is not None
        else sum(p.numel() for p in job.model.parameters() if p.requires_grad)
    )
    meta = {
        "format": 2,
        "kind": "delta",
        "method": spec.method,
        "base_model_id": base_id,
        "repository": data.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data.summary(),
        "gate": gate,
        "training": {
            "steps": state.step,
            "tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 1),
            "trained_parameters": trained,
            "heldout_loss": state.evals,
            "peak_rss_mb": _peak_rss_mb(),
        },
        "config": config.to_dict(),
        "spec": asdict(spec),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    export_delta(job, out / "adapter", meta)
    return {"state": "trained", "adapter": str(out / "adapter"), **meta}


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
