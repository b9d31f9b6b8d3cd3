"""The completion engine: segments -> prompt -> encoding (prefill or PIE reuse) -> a `Generation`.

One `CompletionEngine` owns one loaded model and is driven by one thread at a time (the step
scheduler's worker in the service; the caller's thread in the CLI, benchmarks and tests).
`prepare` builds the token prompt (FIM template, healing, trimming to the budget); `start`
encodes it, whole (`prefill`) or against a document's cached KV (`KVManager.encode`: PIE reuse
of what did not change), and returns the request's `Generation`, which decodes one step at a time
(`splice.completion.generation`). `complete` is start + step until done + result. Every forward
pass goes through the `ModelRunner` (`splice.completion.runner`). Decoding is greedy unless a
temperature > 0 is asked for, so the same text gives the same completion on every path (REST,
streaming, WebSocket, CLI).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import DynamicCache

from splice.completion.batch_kv import KVPool, kv_shape
from splice.completion.deltas import DeltaRouter, served_id
from splice.completion.document_cache import DocumentKey
from splice.completion.drafting import DraftConfig
from splice.completion.drift import next_token_drift
from splice.completion.drift_policy import DriftPolicy, policy_for
from splice.completion.early_exit import ExitHeads, ExitThresholds
from splice.completion.fim import (
    FimPrompt,
    FimTemplate,
    TextEncoder,
    build_prompt,
    resolve_template,
    stop_token_ids,
)
from splice.completion.generation import Generation, TextSink, accepted_prefix, prompt_draft
from splice.completion.healing import TokenHealer
from splice.completion.kv_format import KVFormat
from splice.completion.kv_manager import EncodeStats, KVManager
from splice.completion.models import LoadedModel
from splice.completion.pie import encode_full
from splice.completion.pie_plan import REUSE_METHODS, ReuseMethod
from splice.completion.runner import ModelRunner

log = logging.getLogger(__name__)

# early_stop: the early-exit controller judged the rest of the completion likely wrong (Stop).
FinishReason = Literal["stop", "length", "cancelled", "scope", "early_stop"]
DraftingMethod = Literal["off", "lookup", "self"]
DRAFTING_METHODS: tuple[DraftingMethod, ...] = ("off", "lookup", "self")

# Without an explicit max_prompt_tokens, CPU prompts are capped here: full recomputation of a
# 2k-token prompt already takes ~5 s on two cores (bench/baseline.py); on CUDA there is no cap.
CPU_DEFAULT_MAX_PROMPT_TOKENS = 2048


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings, one object passed down from the service settings."""

    fim_template: str = "auto"
    fim_mode: str = (
        "auto"  # auto: the adapter's layout if it names one (splice.completion.adapters), else psm
    )
    context_window: int | None = None  # None: the model's max_position_embeddings
    max_prompt_tokens: int | None = None  # None: context - max_tokens (capped on CPU, see above)
    token_healing: bool = True  # re-choose the prompt's last token (see splice.completion.healing)
    # How a document's cached KV is reused (splice.completion.pie_plan). pie+refresh follows the
    # model family's drift policy (measured with `splice bench edits`, README "Drift").
    reuse_method: ReuseMethod = "pie+refresh"
    # What pie+refresh re-encodes against drift (splice.completion.drift_policy): None takes the
    # model family's measured default (or the generic one); a value overrides that field.
    refresh_first_k: int | None = None  # kept tokens re-encoded after each edit
    refresh_ratio: float | None = None  # fraction of kept tokens re-encoded by probe deviation
    refresh_threshold: float | None = None  # and every kept token whose probe deviation exceeds this
    refresh_probe_layer: int | None = None  # the probe's layer
    drift_full_bound: float | None = None  # forced full re-encode above this stale deviation (0: never)
    document_cache_bytes: int = 1 << 30  # budget of all document KV caches of this model
    kv_format: KVFormat = "float"  # how idle document caches are stored (kv_format.py)
    keep_document_tokens: bool = True  # re-tokenize a window after an edit (False: the whole document)
    # Greedy decoding verifies drafted tokens in one pass; the output is greedy's token for token.
    # lookup: copied from earlier text (splice.completion.drafting); self: self-speculative, drafted
    # by the first layers up to the deepest exit layer and its exit lens (needs exit heads), the
    # verification reusing the K/V the draft computed there. Sampling decodes one token a pass.
    drafting: DraftingMethod = "lookup"
    draft: DraftConfig = field(default_factory=DraftConfig)
    # Early exit (splice.completion.early_exit): decode steps that are not draft verifications
    # stop at the first exit layer whose controller is sure. Lossy, so off unless asked for; the
    # model must have exit heads (`splice train exits`; the default model's ship with its adapter).
    early_exit: bool = False
    exit_thresholds: ExitThresholds = field(default_factory=ExitThresholds)
    # Batched decoding (splice.completion.batch_kv): up to max_batch running requests decode in one
    # forward pass, each in a slot of a static KV pool of batch_slot_tokens tokens (None: the
    # largest prompt plus 256 new tokens plus a draft), within batch_memory_bytes. 1: one request at
    # a time (the CPU default).
    max_batch: int = 1
    batch_slot_tokens: int | None = None
    batch_memory_bytes: int = 8 << 30  # the pool's budget: fewer slots than max_batch beyond it

    def drift_policy(self, model_type: str | None) -> tuple[DriftPolicy, str]:
        """The drift policy for a model family, with this config's overrides."""
        return policy_for(
            model_type,
            first_k=self.refresh_first_k,
            probe_ratio=self.refresh_ratio,
            probe_threshold=self.refresh_threshold,
            probe_layer=self.refresh_probe_layer,
            full_bound=self.drift_full_bound,
        )

    def __post_init__(self) -> None:
        if self.drafting not in DRAFTING_METHODS:
            raise ValueError(f"drafting must be one of {', '.join(DRAFTING_METHODS)}")
        if self.reuse_method not in REUSE_METHODS:
            raise ValueError(f"reuse_method must be one of {', '.join(REUSE_METHODS)}")
        self.drift_policy(None)  # a bad override fails here, with the field named
        if self.context_window is not None and self.context_window < 16:
            raise ValueError("context_window must be at least 16 tokens")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 8:
            raise ValueError("max_prompt_tokens must be at least 8 tokens")
        if not 1 <= self.max_batch <= 256:
            raise ValueError("max_batch must be in [1, 256]")
        if self.batch_slot_tokens is not None and self.batch_slot_tokens < 16:
            raise ValueError("batch_slot_tokens must be at least 16 tokens")


@dataclass(frozen=True)
class CompletionInput:
    """The document around the cursor, as in the editor (CRLF and tabs preserved)."""

    prefix: str
    suffix: str = ""
    language: str | None = None
    filepath: str | None = None
    context: str = ""  # rendered repository snippets, placed before the document (splice.retrieval)
    # Text drafting may copy from besides the prompt, never shown to the model: what the last edit
    # removed (a line deleted and typed again gets drafted whole; splice.completion.drafting).
    draft_text: str = ""
    # What the output is expected to start with, drafted whole while the output follows it: the
    # rest of the suggestion the user is typing through (`ServedCompletions.expected`). Never
    # shown to the model; greedy decoding's output is the same with or without it.
    expected: str = ""
    # False: no token healing of the prefix's last token (a prompt that ends at a line boundary
    # the model was trained to continue from as is: the next-edit rewrite after its divider)
    heal: bool = True


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    early_exit: bool | None = None  # None: the engine's setting
    exit_thresholds: ExitThresholds | None = None  # None: the engine's
    # False: the raw text up to a stop (no scope end, no insertion clean-up): rewrites (next edit)
    postprocess: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0.0 <= self.temperature <= 2.0 or math.isnan(self.temperature):
            raise ValueError("temperature must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class Timings:
    prompt_ms: float = 0.0  # prefill of the prompt
    first_token_ms: float = 0.0  # request start -> first generated token (TTFT)
    decode_ms: float = 0.0  # all decode steps after the first token
    total_ms: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return 0.0 if self.decode_ms <= 0 else 1000.0 * self._decoded / self.decode_ms

    _decoded: int = field(default=0, repr=False)


@dataclass(frozen=True)
class PreparedPrompt:
    fim: FimPrompt
    heal: str  # removed from the end of the prefix; the output must start with it
    tokenized_chars: int = 0  # characters of the document that went through the tokenizer

    @property
    def input_ids(self) -> list[int]:
        return self.fim.input_ids


@dataclass(frozen=True)
class DriftAudit:
    """A full recompute of the same prompt, beside the completion made from the document cache."""

    full_text: str  # the completion a full recompute produces (same parameters and seed)
    next_token_kl: float  # KL(full || cached) of the first next-token distribution, nats
    next_token_top1_agree: bool  # the two distributions' most likely token is the same


@dataclass
class CompletionResult:
    text: str  # post-processed suggestion ("" when nothing useful was generated)
    raw: str  # decoded model output before post-processing
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    trimmed_prompt_tokens: int
    timings: Timings
    encoded_prompt_tokens: int = 0  # prompt tokens run through the model for this request
    reused_prompt_tokens: int = 0  # prompt tokens whose KV came from the document cache
    refreshed_prompt_tokens: int = 0  # of the encoded, kept tokens re-encoded against drift
    forced_full_encode: bool = False  # the drift bound was passed: the prompt was encoded in full
    stale_deviation: float | None = None  # drift probe: mean key deviation of the tokens left stale
    audit: DriftAudit | None = None  # what a full recompute gives (requests with audit=True)
    tokenized_chars: int = 0  # document characters tokenized for this request (a window after an edit)
    context_tokens: int = 0  # repository context tokens in the prompt
    decode_passes: int = 0  # forward passes after the prompt's (one per token without drafting)
    draft_tokens: int = 0  # tokens proposed by the drafter
    accepted_draft_tokens: int = 0  # of those, the ones greedy decoding confirmed
    verify_passes: int = 0  # decode passes that verified a draft
    decode_layers: int = 0  # decoder layers run in full over all decode passes (early exit runs fewer)
    exited_tokens: int = 0  # tokens emitted from an exit layer
    early_stop_removed: int = 0  # max_tokens - generated when the controller's Stop ended the completion

    @classmethod
    def cancelled(cls) -> CompletionResult:
        """The result of a request cancelled before it ran."""
        return cls("", "", "cancelled", 0, 0, 0, Timings())


class CompletionEngine:
    """Full-recompute completion for one model."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.config = config or EngineConfig()
        self.model = loaded.model
        self.runner = ModelRunner(loaded.model)  # every forward pass of this engine goes through it
        # tenants' fine-tuned adapters, applied per request (nothing is wrapped until one is added)
        self.deltas = DeltaRouter(loaded.model, served_id(loaded))
        self.tokenizer = loaded.tokenizer
        self.template: FimTemplate = resolve_template(self.tokenizer, self.config.fim_template)
        self.fim_mode = self.config.fim_mode
        if self.fim_mode == "auto":
            preferred = loaded.fim_mode or "psm"
            self.fim_mode = preferred if preferred in self.template.modes else self.template.modes[0]
        if self.fim_mode not in self.template.modes:
            raise ValueError(
                f"FIM mode {self.fim_mode!r} is not supported by template {self.template.name!r} "
                f"(supported: {', '.join(self.template.modes)})"
            )
        self.stop_ids = stop_token_ids(self.tokenizer, self.template)
        self.context_window = self.config.context_window or loaded.context_window
        self.healer = TokenHealer(self.tokenizer) if self.config.token_healing else None
        self.exit_heads: ExitHeads | None = loaded.exit_heads
        if self.config.early_exit and self.exit_heads is None:
            raise ValueError(
                f"early exit is on but {loaded.model_id} has no exit heads: train them with "
                "`splice train exits` and serve them with the adapter (or turn early exit off)"
            )
        if self.config.drafting == "self" and self.exit_heads is None:
            raise ValueError(
                f"self-speculative drafting needs exit heads, and {loaded.model_id} has none "
                "(train them with `splice train exits`, or use lookup drafting)"
            )
        if self.config.early_exit and not self.runner.supported:
            raise ValueError(f"early exit needs a layer-by-layer runner; {loaded.model_id} runs whole")
        self.drift_policy, source = self.config.drift_policy(getattr(self.model.config, "model_type", None))
        if self.config.reuse_method == "pie+refresh":
            log.info("document cache drift policy (%s): %s", source, self.drift_policy.describe())
        self.kv = KVManager(
            self.model,
            self.tokenizer,
            budget_bytes=self.config.document_cache_bytes,
            reuse_method=self.config.reuse_method,
            policy=self.drift_policy,
            keep_tokens=self.config.keep_document_tokens,
            kv_format=self.config.kv_format,
        )

        self.pool: KVPool | None = None  # batched decoding's slots, allocated on first use

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def batching(self) -> bool:
        """Whether running requests decode in batched passes (`max_batch` > 1 and a model the
        runner steps layer by layer, without sliding windows)."""
        return self.config.max_batch > 1 and self.runner.supported and not self.runner.sliding

    def admit_batch(self, owner: Hashable, generation: Generation) -> bool:
        """Move `generation`'s cache into a slot of the batch pool, if batching is on, the
        generation can batch, a slot is free and its prompt plus output fits one; else False
        (it then decodes on its own)."""
        if not self.batching or not generation.batchable or generation.cache is None:
            return False
        if self.pool is None:
            heads, head_dim = kv_shape(self.model.config)
            slot_tokens = self.config.batch_slot_tokens or min(
                self.context_window, self.max_prompt_tokens(256) + 256 + self.config.draft.max_tokens + 1
            )
            slot_bytes = 2 * sum(heads) * head_dim * slot_tokens * self.loaded.dtype.itemsize
            slots = max(1, min(self.config.max_batch, self.config.batch_memory_bytes // slot_bytes))
            if slots < self.config.max_batch:
                log.warning(
                    "batched decoding: %d slots of %d tokens fit the %d MB batch KV budget, not %d "
                    "(raise SPLICE_BATCH_KV_MB or lower SPLICE_BATCH_SLOT_TOKENS)",
                    slots,
                    slot_tokens,
                    self.config.batch_memory_bytes >> 20,
                    self.config.max_batch,
                )
            self.pool = KVPool(
                heads, head_dim, slots, slot_tokens, dtype=self.loaded.dtype, device=self.device
            )
            log.info(
                "batched decoding: %d slots of %d tokens (%.0f MB of KV)",
                self.pool.slots,
                slot_tokens,
                self.pool.bytes / 2**20,
            )
        need = (
            generation.cache.get_seq_length()
            + generation.params.max_tokens
            + self.config.draft.max_tokens
            + 1
        )
        if not self.pool.fits(need):
            return False
        self.pool.admit(owner, generation.cache)
        generation.cache = None  # its KV lives in the slot now
        return True

    def step_batch(self, owners: list[Hashable], rows: list[list[int]]) -> list[torch.Tensor]:
        """One batched pass: row b feeds `rows[b]` after what `owners[b]`'s slot holds. Returns each
        row's logits; the caller advances the slots (`pool.advance`) by what each keeps."""
        assert self.pool is not None
        return self.runner.run_batch(self.pool, [self.pool.slot_of(o) for o in owners], rows)

    def max_prompt_tokens(self, max_tokens: int) -> int:
        """Prompt budget: what the context window leaves after the tokens to generate."""
        budget = self.context_window - max_tokens
        if self.config.max_prompt_tokens is not None:
            budget = min(budget, self.config.max_prompt_tokens)
        elif self.device.type == "cpu":
            budget = min(budget, CPU_DEFAULT_MAX_PROMPT_TOKENS)
        return budget

    def prepare(
        self, inp: CompletionInput, max_tokens: int, document: DocumentKey | None = None
    ) -> PreparedPrompt:
        """Token prompt for `inp`, healed and trimmed to the budget (see `splice.completion.fim`).
        With a `document`, its text is tokenized from the last request's tokens (`KVManager`)."""
        if max_tokens >= self.context_window - 8:
            raise ValueError(
                f"max_tokens={max_tokens} leaves no room for a prompt in the "
                f"{self.context_window}-token context"
            )
        # The model sees LF line endings; post-processing restores the file's own.
        prefix = inp.prefix.replace("\r\n", "\n")
        suffix = inp.suffix.replace("\r\n", "\n")
        encoder = self.kv.tokens(document) if document is not None else TextEncoder(self.tokenizer)
        before = encoder.stats.chars
        encoder.document(prefix + suffix)
        heal = ""
        if self.healer is not None and inp.heal:
            healed = self.healer.split(prefix)
            if healed.prefix or self.template.is_fim:  # a prefix-only prompt must keep a token
                prefix, heal = healed.prefix, healed.heal
        fim = build_prompt(
            self.tokenizer,
            self.template,
            prefix,
            suffix,
            mode=self.fim_mode,
            max_prompt_tokens=self.max_prompt_tokens(max_tokens),
            context=inp.context.replace("\r\n", "\n"),
            encoder=encoder,
        )
        if not fim.input_ids:
            raise ValueError(
                "nothing to complete from: the prompt is empty (this model needs text before the cursor)"
            )
        return PreparedPrompt(fim, heal, encoder.stats.chars - before)

    @torch.inference_mode()
    def prefill(self, input_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """Encode the prompt; returns the KV cache and the last position's logits [V]."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)  # [1, S]
        cache = DynamicCache(config=self.model.config)
        logits = self.runner.run(ids, cache).logits
        assert logits is not None
        return cache, logits[-1]

    @torch.inference_mode()
    def decode_one_token(self, cache: DynamicCache, token: int) -> torch.Tensor:
        ids = torch.tensor([[token]], dtype=torch.long, device=self.device)  # [1, 1]
        logits = self.runner.run(ids, cache).logits
        assert logits is not None
        return logits[-1]

    @torch.inference_mode()
    def verify(self, cache: DynamicCache, token: int, draft: list[int]) -> tuple[int, torch.Tensor]:
        """Feed `token` and the drafted tokens in one pass; keep the longest draft prefix that
        greedy decoding would have produced. Returns how many were accepted and the logits [V]
        after the last kept token; the cache then holds `token` and the accepted draft only.

        The head runs on every position in one matmul: decoding on a CPU is bound by reading the
        weights (the head's are a fifth of the default model's), so they are read once. Running it
        position by position up to the first rejection measured the same on one HumanEval prompt
        (49 vs 53 ms/token, within run-to-run noise)."""
        ids = torch.tensor([[token, *draft]], dtype=torch.long, device=self.device)  # [1, 1 + k]
        logits = self.runner.run(ids, cache, logits="all").logits  # [1 + k, V]
        assert logits is not None
        accepted = accepted_prefix(logits, draft)
        if accepted < len(draft):
            cache.crop(accepted - len(draft))  # a negative count drops that many from the end
        return accepted, logits[accepted]

    @torch.inference_mode()
    def speculate(self, cache: DynamicCache, token: int, k: int) -> tuple[list[int], int, torch.Tensor]:
        """Self-speculative step: draft up to `k` tokens after `token` with the layers up to the
        deepest exit layer and its lens, then run the layers above on all of them in one pass
        (the K/V below come from the draft, exact there) and keep the longest draft prefix that
        greedy decoding would have produced. Returns (draft, accepted, logits [V] after the last
        kept token); the cache then holds `token` and the accepted draft at full depth."""
        heads = self.exit_heads
        assert heads is not None
        slot = len(heads.exit_layers) - 1
        depth = heads.exit_layers[slot]
        states: list[torch.Tensor] = []
        draft: list[int] = []
        current = token
        for _ in range(k):
            hidden = self.runner.run_lower(torch.tensor([[current]], device=self.device), cache, depth)
            states.append(hidden)
            guess = self.runner.head(heads.lens(self.runner.decoder.norm(hidden[:, -1]), slot))[0]
            current = int(torch.argmax(guess).item())
            draft.append(current)
            if current in self.stop_ids:
                break
        states.append(self.runner.run_lower(torch.tensor([[current]], device=self.device), cache, depth))
        logits = self.runner.run_upper(torch.cat(states, dim=1), cache, depth)  # [1 + len(draft), V]
        accepted = accepted_prefix(logits, draft)
        if accepted < len(draft):
            cache.crop(accepted - len(draft))
        return draft, accepted, logits[accepted]

    def start(
        self,
        inp: CompletionInput,
        params: GenerationParams,
        *,
        document: DocumentKey | None = None,
        on_text: TextSink | None = None,
        audit: bool = False,
    ) -> Generation:
        """Encode the prompt and return the generation, ready for its first `step()`. With a
        `document`, its cached KV is reused and only what changed is encoded (PIE). `audit`: also
        encode the prompt in full and decode from that (before this generation starts), so the
        result says what a full recompute would have produced (`CompletionResult.audit`)."""
        started = time.perf_counter()
        timings = Timings()
        prompt = self.prepare(inp, params.max_tokens, document)
        if document is None:
            cache, logits = self.prefill(prompt.input_ids)
            encode = EncodeStats(encoded=len(prompt.input_ids))
        else:
            draft = prompt_draft(self, inp, params, prompt.heal)
            doc, encode = self.kv.encode(prompt.input_ids, document, draft=draft)
            assert doc.logits is not None
            cache, logits = doc.to_cache(self.model.config), doc.logits
        timings.prompt_ms = (time.perf_counter() - started) * 1000.0
        reference = self._audit(inp, params, prompt, logits) if audit else None
        return Generation(
            self,
            inp,
            params,
            prompt,
            cache,
            logits,
            encode=encode,
            timings=timings,
            started=started,
            on_text=on_text,
            audit=reference,
            drafted=encode.draft,
        )

    def _audit(
        self, inp: CompletionInput, params: GenerationParams, prompt: PreparedPrompt, logits: torch.Tensor
    ) -> DriftAudit:
        """What a full recompute of `prompt` gives: its next-token distribution against `logits`
        (the reused cache's) and its completion (same parameters and seed)."""
        full = encode_full(self.model, prompt.input_ids)
        assert full.logits is not None
        drift = next_token_drift(full.logits, logits)
        generation = Generation(
            self,
            inp,
            params,
            prompt,
            full.to_cache(self.model.config),
            full.logits,
            encode=EncodeStats(encoded=len(prompt.input_ids)),
            timings=Timings(),
            started=time.perf_counter(),
        )
        while not generation.step():
            pass
        return DriftAudit(generation.result().text, drift.kl, drift.top1_agree)

    def complete(
        self,
        inp: CompletionInput,
        params: GenerationParams,
        *,
        cancel: threading.Event | None = None,
        on_text: TextSink | None = None,
        document: DocumentKey | None = None,
        audit: bool = False,
    ) -> CompletionResult:
        """Generate one suggestion on the calling thread (the CLI, benchmarks and tests; the
        service steps generations from its scheduler). `on_text` receives stable text deltas
        (their concatenation equals `result.text`); `cancel` stops decoding between steps."""
        if cancel is not None and cancel.is_set():
            return CompletionResult.cancelled()
        generation = self.start(inp, params, document=document, on_text=on_text, audit=audit)
        while not generation.step():
            if cancel is not None and cancel.is_set():
                generation.cancel()
        return generation.result()
