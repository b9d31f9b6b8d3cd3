"""LoRA fine-tuning for fill-in-the-middle: the training loop behind `splice finetune`.

One model definition serves training and inference: the base model is loaded by
`splice.completion.models.load_model`, FIM sentinels are added when the tokenizer lacks them
(`splice.training.fim.add_fim_tokens`), and peft wraps the attention and MLP projections with
LoRA. The new sentinel rows are trained through peft's `trainable_token_indices` (a few rows,
so the adapter stays a few MB) or, optionally, `modules_to_save` (whole embedding and head:
25x larger for no measurable gain on the default model, see README).

Several processes (`torchrun` or `accelerate launch`, which set WORLD_SIZE/RANK/LOCAL_RANK)
train data-parallel: each takes its share of every step's micro-batches, the gradients of the
trainable weights (a few MB) are averaged with one all-reduce per step, and rank 0 alone writes
logs and checkpoints; a stop (signal, time limit) is agreed on by all ranks.

The loss is computed on the positions that carry a label only: the final norm's output at
those positions goes through the LM head, which skips most of the head's work when the loss
is on the middle alone. Checkpoints hold the adapter, the optimizer, the schedule, the RNG
states and the step; the data stream is replayed to that step on resume (see
`splice.training.data`), so an interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from splice.completion.fim import FimTemplate
from splice.completion.models import LoadedModel, load_model, parse_spec, quiet_peft, resolve_device
from splice.training.config import FinetuneConfig
from splice.training.data import FimStream, batches, load_texts
from splice.training.fim import IGNORE, add_fim_tokens
from splice.training.repo_context import RepoSample
from splice.training.sara import Sara, SaraConfig

log = logging.getLogger(__name__)

ADAPTER_META = "splice-adapter.json"
CHECKPOINTS = "checkpoints"


class TrainingError(RuntimeError):
    """A fine-tuning job cannot start or continue (bad data folder, incompatible checkpoint)."""


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run faster than fp32 on this CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """Join the process group that `torchrun` / `accelerate launch` describe in the environment."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(dist.get_rank(), dist.get_world_size())


def _current() -> Distributed:
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    return Distributed()


def training_dtype(config: FinetuneConfig, device: torch.device) -> str:
    """The base weights' dtype: bf16 where the hardware runs it fast, else fp32 (LoRA weights stay fp32)."""
    if config.dtype != "auto":
        return config.dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # tokens in rows seen (padding excluded)
    label_tokens: int = 0  # tokens with a loss
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # per step: step, loss, lr, tokens
    evals: list[dict[str, float]] = field(default_factory=list)  # step, heldout_loss, tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "label_tokens": self.label_tokens,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "evals": self.evals,
        }


class HorizonHead(nn.Module):
    """Horizon-length prediction (Ding et al. 2024, arXiv 2410.03103): a linear map from the last
    hidden state to the fraction of the middle left to write. Trained alongside, never shipped."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N]
        return torch.sigmoid(self.proj(hidden.float())).squeeze(-1)


@dataclass
class Job:
    config: FinetuneConfig
    loaded: LoadedModel
    model: Any  # peft.PeftModel
    template: FimTemplate
    added_tokens: list[int]
    hlp_head: HorizonHead | None
    sara: Sara | None = None  # method "sara": the model is the plain model with sparse updates

    @property
    def inner(self) -> Any:
        """The transformers model that runs (peft's base model, with LoRA layers injected)."""
        return self.model if self.sara is not None else self.model.get_base_model()


def prepare_model(config: FinetuneConfig, loaded: LoadedModel | None = None) -> Job:
    """Load the base model, add FIM tokens if needed, and wrap it with LoRA (seeded)."""
    from peft import LoraConfig, get_peft_model  # the `train` extra's heavy import

    torch.manual_seed(config.seed)
    if loaded is None:
        ranks = init_distributed()
        device_name = config.device
        if ranks.world > 1 and torch.cuda.is_available() and config.device in ("auto", "cuda"):
            device_name = f"cuda:{torch.cuda.current_device()}"
        device = resolve_device(device_name)
        loaded = load_model(
            parse_spec(config.model), device=device_name, dtype=training_dtype(config, device)
        )
    template, added = add_fim_tokens(loaded.tokenizer, loaded.model, config.fim_template)
    hidden = int(loaded.model.config.hidden_size)
    head = HorizonHead(hidden).to(loaded.device) if config.hlp else None
    if config.method == "sara":
        if added:
            raise TrainingError(
                "method sara adapts a model that has its FIM tokens (serve-ready); this one lacks them"
            )
        sara_config = SaraConfig(
            rank_equivalent=config.lora_r,
            nuclear_weight=config.sara_nuclear_weight,
            reselect_at=config.sara_reselect_at,
        )
        sara = Sara(loaded.model, tuple(config.target_modules), sara_config, seed=config.seed)
        return Job(config, loaded, loaded.model, template, added, head, sara)
    extra: dict[str, Any] = {}
    if added and config.token_training == "trainable_tokens":
        extra["trainable_token_indices"] = added
    elif added:
        extra["modules_to_save"] = ["embed_tokens", "lm_head"]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
        **extra,
    )
    with quiet_peft():
        model = get_peft_model(loaded.model, lora)
    return Job(config, loaded, model, template, added, head)


def compute_loss(job: Job, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(total loss, LM loss, labelled tokens) of one batch; the LM head runs on labelled positions only."""
    device = job.loaded.device
    ids = batch["input_ids"].to(device)  # [B, S]
    labels = batch["labels"].to(device)  # [B, S]
    inner = job.inner
    hidden = inner.model(input_ids=ids, use_cache=False).last_hidden_state  # [B, S, H]
    targets = labels[:, 1:]  # position p predicts token p + 1
    mask = targets != IGNORE  # [B, S-1]
    count = int(mask.sum())
    if count == 0:
        zero = hidden.sum() * 0.0
        return zero, zero.detach(), 0
    logits = inner.lm_head(hidden[:, :-1][mask]).float()  # [N, V]
    lm_loss = F.cross_entropy(logits, targets[mask])
    loss = lm_loss
    if job.sara is not None and job.sara.config.nuclear_weight > 0:
        loss = loss + job.sara.regularizer()
    if job.hlp_head is not None:
        horizon = batch["horizon"].to(device)  # [B, S]
        where = horizon >= 0
        if bool(where.any()):
            predicted = job.hlp_head(hidden[where])
            loss = loss + job.config.hlp_weight * F.mse_loss(predicted, horizon[where])
    return loss, lm_loss.detach(), count


def trainable_parameters(job: Job) -> list[nn.Parameter]:
    params = [p for p in job.model.parameters() if p.requires_grad]
    if job.hlp_head is not None:
        params += list(job.hlp_head.parameters())
    return params


def make_optimizer(job: Job) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    cfg = job.config
    optimizer = torch.optim.AdamW(trainable_parameters(job), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adapter_state(job: Job) -> dict[str, torch.Tensor]:
    """The adapter's own weights. Not the base embedding, which peft would include because the
    vocabulary grew, and one copy of a delta shared by a tied embedding and head."""
    if job.sara is not None:
        return job.sara.state_dict()
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(job.model, save_embedding_layers=False)
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        if "base_layer" in key or value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        kept[key] = value.detach().cpu().clone().contiguous()
    return kept


def load_adapter_state(job: Job, path: Path) -> None:
    if job.sara is not None:
        job.sara.load_state_dict(load_file(str(path)))
        return
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(job.model, load_file(str(path)))
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k or "token" in k]
    if missing:
        raise TrainingError(f"checkpoint {path} does not fit this model: unexpected {missing[:3]}")


def load_initial_adapter(job: Job, path: Path) -> None:
    """Start from an adapter `splice finetune` exported: same base model, FIM tokens and LoRA shape."""
    meta_path = path / "splice-adapter.json"
    weights = path / "adapter_model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise TrainingError(
            f"init_adapter {path} is not an adapter folder (splice-adapter.json, adapter_model.safetensors)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("base_model_id") != job.loaded.model_id:
        raise TrainingError(
            f"init_adapter {path} was trained on {meta.get('base_model_id')!r}, not {job.loaded.model_id!r}"
        )
    if list(meta.get("added_token_ids") or []) != list(job.added_tokens):
        raise TrainingError(
            f"init_adapter {path} added tokens {meta.get('added_token_ids')}, "
            f"this run added {job.added_tokens}"
        )
    expected = {k: tuple(v.shape) for k, v in adapter_state(job).items()}
    got = {k: tuple(v.shape) for k, v in load_file(str(weights)).items()}
    if got != expected:
        raise TrainingError(
            f"init_adapter {path} does not fit this LoRA configuration (rank, target modules)"
        )
    load_adapter_state(job, weights)
    log.info("starting from adapter %s", path)


def save_checkpoint(job: Job, state: TrainState, optimizer: torch.optim.Optimizer, scheduler: Any) -> Path:
    root = Path(job.config.out) / CHECKPOINTS
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(adapter_state(job), str(tmp / "adapter.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "hlp_head": job.hlp_head.state_dict() if job.hlp_head is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "state": state.to_dict(),
            "config": job.config.to_dict(),
        },
        tmp / "state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a checkpoint exists whole or not at all
    for old in sorted(root.glob("step-*"))[: -job.config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


_RESUME_MUST_MATCH = (
    "model", "fim_template", "seq_len", "fim_rate", "spm_rate", "span", "loss_on", "lora_r", "lora_alpha",
    "target_modules", "token_training", "batch_size", "grad_accum", "seed", "hlp", "data", "method",
)  # fmt: skip


def load_checkpoint(job: Job, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainState:
    saved = torch.load(path / "state.pt", weights_only=False)
    old = saved["config"]
    changed = [k for k in _RESUME_MUST_MATCH if k in old and old[k] != job.config.to_dict()[k]]
    if changed:
        raise TrainingError(
            f"cannot resume from {path}: settings changed since it was written ({', '.join(changed)}); "
            "use a new --out folder or the old settings"
        )
    load_adapter_state(job, path / "adapter.safetensors")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if job.hlp_head is not None and saved["hlp_head"] is not None:
        job.hlp_head.load_state_dict(saved["hlp_head"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    s = saved["state"]
    return TrainState(s["step"], s["tokens"], s["label_tokens"], s["train_seconds"], s["history"], s["evals"])


def make_stream(
    job: Job, texts: list[str], seed: int, shuffle: bool = True, repo_samples: Sequence[RepoSample] = ()
) -> FimStream:
    cfg = job.config
    return FimStream(
        texts,
        job.loaded.tokenizer,
        job.template,
        seq_len=cfg.seq_len,
        fim_rate=cfg.fim_rate,
        spm_rate=cfg.spm_rate,
        span=cfg.span,  # type: ignore[arg-type]
        loss_on=cfg.loss_on,
        seed=seed,
        shuffle=shuffle,
        repo_samples=repo_samples,
        repo_rate=cfg.repo_context + cfg.edit_samples if repo_samples else 0.0,
    )


@torch.no_grad()
def heldout_loss(job: Job, eval_batches: list[dict[str, torch.Tensor]]) -> float:
    job.model.eval()
    total, count = 0.0, 0
    for batch in eval_batches:
        _, lm_loss, n = compute_loss(job, batch)
        total += float(lm_loss) * n
        count += n
    job.model.train()
    return total / max(count, 1)


StepHook = Callable[[TrainState, dict[str, float]], None]


def train(
    job: Job,
    train_texts: list[str],
    heldout_texts: list[str],
    *,
    resume: bool = True,
    on_step: StepHook | None = None,
    stop_after: int | None = None,
    show_progress: bool = True,
    repo_samples: Sequence[RepoSample] = (),
) -> TrainState:
    """Run (or continue) the job until `max_steps`, the time limit, a signal, or `stop_after` steps.

    `repo_samples` (`build_repo_samples`, and `edit_samples.edit_samples`) are mixed in at the
    rate `config.repo_context + config.edit_samples`; a new
    run starts from `config.init_adapter`'s weights when it is set."""
    cfg = job.config
    ranks = _current()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer, scheduler = make_optimizer(job)
    state = TrainState()
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(job, checkpoint, optimizer, scheduler)
        log.info("resuming from %s (step %d)", checkpoint, state.step)
    elif cfg.init_adapter:
        load_initial_adapter(job, Path(cfg.init_adapter))
    if (cfg.repo_context or cfg.edit_samples) and not repo_samples:
        raise TrainingError(
            "repo_context or edit_samples is set but there are no repository samples "
            "(see build_repo_samples, edit_samples.edit_samples)"
        )
    rows = make_stream(job, train_texts, cfg.seed, repo_samples=repo_samples).rows()
    stream: Iterator[dict[str, torch.Tensor]] = batches(rows, cfg.batch_size)
    for _ in range(state.step * cfg.grad_accum * ranks.world):  # replay the data to the checkpoint's step
        next(stream)
    eval_set = list(
        batches(
            _take(make_stream(job, heldout_texts or train_texts[:64], cfg.seed + 1).rows(1), cfg.eval_rows),
            cfg.batch_size,
        )
    )

    interrupted = {"signal": 0}

    def _on_signal(signum: int, _frame: Any) -> None:
        interrupted["signal"] = signum

    previous = (
        {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    )
    bar = _progress(cfg.max_steps, state.step, show_progress and ranks.is_main)
    log_line = (lambda record: _log_line(out, record)) if ranks.is_main else (lambda record: None)
    if checkpoint is not None:
        log_line({"event": "resume", "step": state.step, "checkpoint": checkpoint.name})
    started = time.perf_counter()
    base_seconds = state.train_seconds
    steps_this_run = 0
    job.model.train()
    try:
        if state.step == 0 and not state.evals:
            loss0 = heldout_loss(job, eval_set)
            state.evals.append({"step": 0, "heldout_loss": loss0, "tokens": 0})
            log_line({"event": "eval", "step": 0, "heldout_loss": loss0})
        while state.step < cfg.max_steps:
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_tokens, step_labels = 0.0, 0, 0
            for _ in range(cfg.grad_accum):
                batch = [next(stream) for _ in range(ranks.world)][ranks.rank]  # this rank's share
                loss, lm_loss, n = compute_loss(job, batch)
                (loss / cfg.grad_accum).backward()
                step_loss += float(lm_loss) / cfg.grad_accum
                step_tokens += int(batch["lengths"].sum())
                step_labels += n
            if ranks.world > 1:
                step_loss, step_tokens, step_labels = _all_reduce_step(
                    job, step_loss, step_tokens, step_labels
                )
            torch.nn.utils.clip_grad_norm_(trainable_parameters(job), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state.step += 1
            if job.sara is not None and job.sara.after_step(state.step, cfg.max_steps, optimizer):
                log_line({"event": "sara_reselect", "step": state.step})
            steps_this_run += 1
            state.tokens += step_tokens
            state.label_tokens += step_labels
            state.train_seconds = base_seconds + time.perf_counter() - started
            record: dict[str, float] = {
                "step": state.step,
                "loss": step_loss,
                "lr": float(scheduler.get_last_lr()[0]),
                "tokens": state.tokens,
            }
            state.history.append(record)
            log_line({"event": "step", **record, "seconds": round(state.train_seconds, 1)})
            if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                loss_h = heldout_loss(job, eval_set)
                state.evals.append({"step": state.step, "heldout_loss": loss_h, "tokens": state.tokens})
                log_line({"event": "eval", "step": state.step, "heldout_loss": loss_h})
            tokens_per_s = state.tokens / max(state.train_seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(
                loss=f"{step_loss:.3f}",
                heldout=f"{state.evals[-1]['heldout_loss']:.3f}",
                tok_s=f"{tokens_per_s:.0f}",
            )
            if on_step is not None:
                on_step(state, record)
            out_of_time = cfg.time_limit_s is not None and time.perf_counter() - started >= cfg.time_limit_s
            done = state.step == cfg.max_steps
            stopping = (
                bool(interrupted["signal"])
                or out_of_time
                or (stop_after is not None and steps_this_run >= stop_after)
            )
            if ranks.world > 1:  # every rank stops at the same step, or the next all-reduce hangs
                flag = torch.tensor([float(stopping)], device=job.loaded.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
            if ranks.is_main and (done or stopping or state.step % cfg.save_every == 0):
                save_checkpoint(job, state, optimizer, scheduler)
            if stopping:
                break
    finally:
        bar.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return state


def _all_reduce_step(job: Job, loss: float, tokens: int, labels: int) -> tuple[float, int, int]:
    """Average the trainable weights' gradients over the ranks; sum tokens, average the loss."""
    world = dist.get_world_size()
    for param in trainable_parameters(job):
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(world)
    stats = torch.tensor([loss, float(tokens), float(labels)], dtype=torch.float64, device=job.loaded.device)
    dist.all_reduce(stats)
    return float(stats[0]) / world, int(stats[1]), int(stats[2])


def _take(rows: Iterator[Any], n: int) -> Iterator[Any]:
    for i, row in enumerate(rows):
        if i >= n:
            return
        yield row


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(total: int, initial: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc="finetune", unit="step", disable=not show, dynamic_ncols=True
    )


def _log_line(out: Path, record: dict[str, Any]) -> None:
    with (out / "train_log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    import os

    return (
        f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    )


def load_corpus_texts(data: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """(train texts, held-out texts, manifest) of a `splice data corpus` folder."""
    train_path, heldout_path, manifest_path = (
        data / "train.jsonl.gz",
        data / "heldout.jsonl.gz",
        data / "manifest.json",
    )
    if not train_path.is_file():
        raise TrainingError(
            f"{data} holds no train.jsonl.gz; build one with `splice data corpus --out {data}`"
        )
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    heldout = load_texts(heldout_path) if heldout_path.is_file() else []
    return load_texts(train_path), heldout, manifest
