"""The configuration of one fine-tuning job: a dataclass, checked on construction, saved as JSON
next to the adapter it produced (and read back from a `--config` file, JSON or TOML)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from splice.training.fim import SPAN_KINDS

METHODS = ("lora", "sara")
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKEN_TRAINING = ("trainable_tokens", "modules_to_save")


@dataclass
class FinetuneConfig:
    """A LoRA FIM fine-tuning job. Defaults are those the shipped default-model adapter was trained with."""

    data: str = (
        ""  # corpus folder from `splice data corpus` (train.jsonl.gz, heldout.jsonl.gz, manifest.json)
    )
    out: str = "adapter"  # where checkpoints and the final adapter go
    model: str = "default"  # model spec (see splice.completion.models.parse_spec)
    fim_template: str = "starcoder"  # added to models without FIM tokens; models with them keep theirs
    # data
    seq_len: int = 512
    fim_rate: float = 0.9
    spm_rate: float = 0.5
    span: str = "mixed"  # char | line | mixed
    loss_on: str = "middle"  # middle | all
    # repository context (splice.training.repo_context): this fraction of the samples are
    # cross-file lines of the corpus' own repositories, with the context the service assembles
    repo_context: float = 0.0
    repo_context_tokens: int = 384  # the context's budget in a sample
    repo_per_repository: int = 200  # most tasks drawn from one repository
    repo_exclude: tuple[str, ...] = ()  # repositories (corpus sources) an evaluation uses
    # edit-aware prompts (splice.training.edit_samples): this fraction of the samples are next-edit
    # rewrites and FIM lines under a recent-edits slot, from the `tune` split of `edit_histories`
    # (real edit histories, .jsonl.gz), LintSeq sequences of `edit_lintseq_files` corpus files and
    # the git history of `edit_repositories` (its newest commits' files held out)
    edit_samples: float = 0.0
    edit_histories: str = ""
    edit_lintseq_files: int = 200
    edit_repositories: tuple[str, ...] = ()  # git checkouts whose history adds edit sequences
    init_adapter: str = ""  # start from this exported adapter's weights (a second training stage)
    # adaptation method: lora (peft) or sara (training/sara.py: sparse smallest-magnitude weights,
    # LoRA-r's parameter count per matrix, nuclear-norm penalty, progressive re-selection)
    method: str = "lora"
    sara_nuclear_weight: float = 1e-4
    sara_reselect_at: tuple[float, ...] = (0.5,)
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # no dropout: runs see each token about once
    target_modules: tuple[str, ...] = TARGET_MODULES
    token_training: str = (
        "trainable_tokens"  # how new FIM token rows are trained: trainable_tokens | modules_to_save
    )
    # optimisation
    batch_size: int = 8  # rows of seq_len tokens per micro-step
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 400  # the cosine schedule's length
    time_limit_s: float | None = None  # stop (with a checkpoint) after this long; resume continues
    # horizon-length prediction (Ding et al. 2024): auxiliary head, dropped at inference
    hlp: bool = False
    hlp_weight: float = 0.1
    # bookkeeping
    eval_every: int = 25
    eval_rows: int = 32
    save_every: int = 25
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 on CUDA and on CPUs with bf16 units (AVX512-BF16/AMX), else fp32
    save_dtype: str = "float16"  # dtype of the exported adapter weights
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        self.repo_exclude = tuple(self.repo_exclude)
        self.sara_reselect_at = tuple(self.sara_reselect_at)
        self.edit_repositories = tuple(self.edit_repositories)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if any(not 0.0 < f < 1.0 for f in self.sara_reselect_at):
            raise ValueError(f"sara_reselect_at fractions must be in (0, 1), got {self.sara_reselect_at}")
        if self.sara_nuclear_weight < 0:
            raise ValueError(f"sara_nuclear_weight must be >= 0, got {self.sara_nuclear_weight}")
        if not 0.0 <= self.repo_context < 1.0:
            raise ValueError(f"repo_context must be in [0, 1), got {self.repo_context}")
        if not 0.0 <= self.edit_samples < 1.0 or self.repo_context + self.edit_samples >= 1.0:
            raise ValueError(
                f"edit_samples must be in [0, 1) and, with repo_context, below 1; got {self.edit_samples}"
            )
        if self.edit_lintseq_files < 0:
            raise ValueError(f"edit_lintseq_files must be >= 0, got {self.edit_lintseq_files}")
        if self.repo_context and self.repo_context_tokens < 16:
            raise ValueError(f"repo_context_tokens must be at least 16, got {self.repo_context_tokens}")
        if self.span not in SPAN_KINDS:
            raise ValueError(f"span must be one of {SPAN_KINDS}, got {self.span!r}")
        if self.loss_on not in ("middle", "all"):
            raise ValueError(f"loss_on must be 'middle' or 'all', got {self.loss_on!r}")
        if self.token_training not in TOKEN_TRAINING:
            raise ValueError(f"token_training must be one of {TOKEN_TRAINING}, got {self.token_training!r}")
        for name in ("fim_rate", "spm_rate", "lora_dropout", "min_lr_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("seq_len", "lora_r", "lora_alpha", "batch_size", "grad_accum", "max_steps", "eval_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 64:
            raise ValueError(f"seq_len={self.seq_len} is too short for a FIM sample; use at least 64")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.save_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"save_dtype must be float16, bfloat16 or float32, got {self.save_dtype!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["repo_exclude"] = list(self.repo_exclude)
        data["sara_reselect_at"] = list(self.sara_reselect_at)
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown fine-tuning settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> FinetuneConfig:
        """Read a JSON or TOML config file."""
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        return cls.from_dict(data)
