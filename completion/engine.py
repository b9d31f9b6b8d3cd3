"""The completion engine: segments -> prompt -> prefill -> decode -> post-processing.

One `CompletionEngine` owns one loaded model and is driven by one thread at a time (the
service serialises generations per model). Every request re-encodes its whole prompt here
(full recomputation); this is the baseline that the document KV caches of issue 3 replace.

Phases are verbs: `prepare` builds the token prompt, `prefill` encodes it, `decode_one_token`
extends it by one token. Decoding is greedy unless a temperature > 0 is asked for, so the
same text gives the same completion on every path (REST, streaming, CLI).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import DynamicCache

from splice.completion.document_cache import DocumentCacheStore, DocumentKey
from splice.completion.drafting import DraftConfig, DraftLength, LookupDrafter
from splice.completion.early_exit import ExitHeads, ExitThresholds
from splice.completion.fim import FimPrompt, FimTemplate, build_prompt, resolve_template, stop_token_ids
from splice.completion.healing import TokenHealer
from splice.completion.models import LoadedModel
from splice.completion.pie import DocumentKV, apply_plan, encode_full, select_refresh
from splice.completion.pie_plan import REUSE_METHODS, ReuseMethod, plan_reuse
from splice.completion.postprocess import is_finished, postprocess, stable_prefix
from splice.completion.runner import ModelRunner
from splice.completion.token_edits import diff_tokens
from splice.kernels.rope import RopeSpec, UnsupportedRope, rope_spec_from_config

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
    # How a document's cached KV is reused (splice.completion.pie_plan). Default from
    # `splice bench edits` at 2k context: re-encoding the first 8 kept tokens after each edit
    # brought agreement with full recomputation from 85% (plain PIE) to 100% for +2% tokens.
    reuse_method: ReuseMethod = "pie+refresh"
    refresh_first_k: int = 8  # pie+refresh: re-encode this many kept tokens after each edit
    refresh_ratio: float = 0.0  # pie+refresh: also re-encode this fraction of the most deviant kept tokens
    document_cache_bytes: int = 1 << 30  # budget of all document KV caches of this model
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

    def __post_init__(self) -> None:
        if self.drafting not in DRAFTING_METHODS:
            raise ValueError(f"drafting must be one of {', '.join(DRAFTING_METHODS)}")
        if self.reuse_method not in REUSE_METHODS:
            raise ValueError(f"reuse_method must be one of {', '.join(REUSE_METHODS)}")
        if self.refresh_first_k < 0:
            raise ValueError("refresh_first_k must be >= 0")
        if not 0.0 <= self.refresh_ratio <= 1.0:
            raise ValueError("refresh_ratio must be in [0, 1]")
        if self.context_window is not None and self.context_window < 16:
            raise ValueError("context_window must be at least 16 tokens")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 8:
            raise ValueError("max_prompt_tokens must be at least 8 tokens")


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


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    early_exit: bool | None = None  # None: the engine's setting
    exit_thresholds: ExitThresholds | None = None  # None: the engine's

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

    @property
    def input_ids(self) -> list[int]:
        return self.fim.input_ids


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
    context_tokens: int = 0  # repository context tokens in the prompt
    decode_passes: int = 0  # forward passes after the prompt's (one per token without drafting)
    draft_tokens: int = 0  # tokens proposed by the drafter
    accepted_draft_tokens: int = 0  # of those, the ones greedy decoding confirmed
    verify_passes: int = 0  # decode passes that verified a draft
    decode_layers: int = 0  # decoder layers run in full over all decode passes (early exit runs fewer)
    exited_tokens: int = 0  # tokens emitted from an exit layer
    early_stop_removed: int = 0  # max_tokens - generated when the controller's Stop ended the completion


TextSink = Callable[[str], None]


class CompletionEngine:
    """Full-recompute completion for one model."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.config = config or EngineConfig()
        self.model = loaded.model
        self.runner = ModelRunner(loaded.model)  # every forward pass of this engine goes through it
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
        self.documents: DocumentCacheStore[DocumentKV] = DocumentCacheStore(self.config.document_cache_bytes)
        self.rope_spec: RopeSpec | None = None
        self.rope_problem = ""
        try:
            self.rope_spec = rope_spec_from_config(self.model.config)
        except UnsupportedRope as exc:
            self.rope_problem = str(exc)
            log.warning("document caches reuse only common prefixes for this model: %s", exc)

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def max_prompt_tokens(self, max_tokens: int) -> int:
        """Prompt budget: what the context window leaves after the tokens to generate."""
        budget = self.context_window - max_tokens
        if self.config.max_prompt_tokens is not None:
            budget = min(budget, self.config.max_prompt_tokens)
        elif self.device.type == "cpu":
            budget = min(budget, CPU_DEFAULT_MAX_PROMPT_TOKENS)
        return budget

    def prepare(self, inp: CompletionInput, max_tokens: int) -> PreparedPrompt:
        """Token prompt for `inp`, healed and trimmed to the budget (see `splice.completion.fim`)."""
        if max_tokens >= self.context_window - 8:
            raise ValueError(
                f"max_tokens={max_tokens} leaves no room for a prompt in the "
                f"{self.context_window}-token context"
            )
        # The model sees LF line endings; post-processing restores the file's own.
        prefix = inp.prefix.replace("\r\n", "\n")
        suffix = inp.suffix.replace("\r\n", "\n")
        heal = ""
        if self.healer is not None:
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
        )
        return PreparedPrompt(fim, heal)

    @torch.inference_mode()
    def prefill(self, input_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """Encode the prompt; returns the KV cache and the last position's logits [V]."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)  # [1, S]
        cache = DynamicCache(config=self.model.config)
        logits = self.runner.run(ids, cache).logits
        assert logits is not None
        return cache, logits[-1]

    def encode_document(
        self, ids: list[int], document: DocumentKey, method: ReuseMethod | None = None
    ) -> tuple[DocumentKV, int, int]:
        """Bring `document`'s cache to the sequence `ids`, re-encoding only what changed.

        Returns the cache and the numbers of encoded and reused tokens. The cache is stored
        back (LRU, within the budget), so the next request for the document starts from it.
        """
        method = method or self.config.reuse_method
        if method in ("naive", "pie", "pie+refresh") and self.rope_spec is None:
            method = "prefix"  # re-rotation impossible for this RoPE type (logged at start-up)
        old = self.documents.get(document)
        if old is None or method == "full":
            doc = encode_full(self.model, ids)
            encoded, reused = len(ids), 0
        else:
            script = diff_tokens(old.ids, ids)
            plan = plan_reuse(
                old.ids,
                ids,
                script,
                method,
                refresh_first_k=self.config.refresh_first_k,
                logits_fresh=old.logits is not None,
            )
            if method == "pie+refresh" and self.config.refresh_ratio > 0:
                plan = select_refresh(self.model, old, ids, plan, self.rope_spec, self.config.refresh_ratio)
            doc, stats = apply_plan(self.model, old, ids, plan, self.rope_spec)
            encoded, reused = stats.encoded, stats.reused
        self.documents.put(document, doc)
        return doc, encoded, reused

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
        greedy = torch.argmax(logits[:-1], dim=-1).tolist()
        accepted = 0
        while accepted < len(draft) and greedy[accepted] == draft[accepted]:
            accepted += 1
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
        greedy = torch.argmax(logits[:-1], dim=-1).tolist()
        accepted = 0
        while accepted < len(draft) and greedy[accepted] == draft[accepted]:
            accepted += 1
        if accepted < len(draft):
            cache.crop(accepted - len(draft))
        return draft, accepted, logits[accepted]

    def complete(
        self,
        inp: CompletionInput,
        params: GenerationParams,
        *,
        cancel: threading.Event | None = None,
        on_text: TextSink | None = None,
        document: DocumentKey | None = None,
    ) -> CompletionResult:
        """Generate one suggestion. `on_text` receives stable text deltas while decoding
        (their concatenation equals `result.text`); `cancel` stops decoding early. With a
        `document`, its cached KV is reused and only what changed is encoded (PIE)."""
        start = time.perf_counter()
        timings = Timings()
        prompt = self.prepare(inp, params.max_tokens)
        generator = _make_generator(params, self.device)
        stops = tuple(s for s in params.stop if s)
        if cancel is not None and cancel.is_set():  # cancelled while it waited for the model
            timings.total_ms = (time.perf_counter() - start) * 1000.0
            return CompletionResult("", "", "cancelled", len(prompt.input_ids), 0, 0, timings)

        if document is None:
            cache, logits = self.prefill(prompt.input_ids)
            encoded, reused = len(prompt.input_ids), 0
        else:
            doc, encoded, reused = self.encode_document(prompt.input_ids, document)
            assert doc.logits is not None
            cache, logits = doc.to_cache(self.model.config), doc.logits
        timings.prompt_ms = (time.perf_counter() - start) * 1000.0

        generated: list[int] = []
        raw = ""
        pending = prompt.heal  # healed text the output has yet to spell out
        emitted = ""
        finish: FinishReason = "length"
        drafter = None
        speculative = None
        if self.config.drafting == "self" and generator is None:
            speculative = DraftLength(self.config.draft)
        if self.config.drafting == "lookup" and generator is None:
            extra = (
                self.tokenizer(inp.draft_text, add_special_tokens=False).input_ids if inp.draft_text else []
            )
            drafter = LookupDrafter([*extra, *prompt.input_ids], self.config.draft)
        verified: list[int] = []  # accepted draft tokens, already in the cache, not yet delivered
        passes = verifications = drafted = accepted_total = 0
        layers_run = exited = removed = 0
        early_exit = self.config.early_exit if params.early_exit is None else params.early_exit
        if early_exit and self.exit_heads is None:
            raise ValueError(f"{self.loaded.model_id} has no exit heads; early exit is unavailable")
        thresholds = params.exit_thresholds or self.config.exit_thresholds
        decode_start = time.perf_counter()
        while True:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            in_cache = bool(verified)  # an accepted draft token: the verification pass fed it
            if in_cache:
                token = verified.pop(0)
            else:
                if pending:
                    assert self.healer is not None
                    logits = _restrict(logits, self.healer.allowed(pending))
                token = _sample(logits, params, generator)
            if pending:
                assert self.healer is not None
                spelled = self.healer.token_text[token]
                pending = "" if spelled.startswith(pending) else pending[len(spelled) :]
            if not generated:
                timings.first_token_ms = (time.perf_counter() - start) * 1000.0
                decode_start = time.perf_counter()
            if token in self.stop_ids:
                finish = "stop"
                break
            generated.append(token)
            raw = _strip_heal(str(self.tokenizer.decode(generated, skip_special_tokens=True)), prompt.heal)
            cut = _find_stop(raw, stops)
            if cut is not None:
                raw = raw[:cut]
                finish = "stop"
                break
            if is_finished(raw, inp.prefix, inp.suffix):
                finish = "scope"
                break
            if len(generated) >= params.max_tokens:
                break
            if on_text is not None:
                emitted = _emit(on_text, emitted, _streamable(raw, stops), inp)
            if drafter is not None:
                drafter.append(token)
            if in_cache:
                continue
            passes += 1
            draft = drafter.propose() if drafter is not None and not pending and drafter.ready() else []
            draft = draft[: params.max_tokens - len(generated)]
            if draft:
                accepted, logits = self.verify(cache, token, draft)
                verified = draft[:accepted]
                if drafter is not None:
                    drafter.feedback(len(draft), accepted)
                drafted += len(draft)
                verifications += 1
                accepted_total += accepted
                layers_run += self.runner.num_layers
            elif (
                speculative is not None
                and not pending
                and params.max_tokens - len(generated) > 1
                and speculative.ready()
            ):
                k = min(speculative.length, params.max_tokens - len(generated))
                draft, accepted, logits = self.speculate(cache, token, k)
                verified = draft[:accepted]
                speculative.feedback(len(draft), accepted)
                drafted += len(draft)
                verifications += 1
                accepted_total += accepted
                depth = self.exit_heads.exit_layers[-1] if self.exit_heads is not None else 0
                layers_run += (len(draft) + 1) * depth + self.runner.num_layers - depth
            elif early_exit and not pending:
                assert self.exit_heads is not None
                ids = torch.tensor([[token]], dtype=torch.long, device=self.device)  # [1, 1]
                step = self.runner.decode_exit(ids, cache, self.exit_heads, thresholds)
                layers_run += step.layers
                if step.logits is None:  # Stop: what follows is likely wrong
                    finish = "early_stop"
                    removed = params.max_tokens - len(generated)
                    break
                exited += step.decision == "exit"
                logits = step.logits
            else:
                logits = self.decode_one_token(cache, token)
                layers_run += self.runner.num_layers
        timings._decoded = max(len(generated) - 1, 0)
        timings.decode_ms = (time.perf_counter() - decode_start) * 1000.0 if generated else 0.0

        text = postprocess(raw, inp.prefix, inp.suffix)
        if on_text is not None:
            if text.startswith(emitted):
                if len(text) > len(emitted):
                    on_text(text[len(emitted) :])
            else:  # would mean stable_prefix broke its contract; the stream is already out
                log.error("streamed text %r is not a prefix of the final text %r", emitted, text)
        timings.total_ms = (time.perf_counter() - start) * 1000.0
        return CompletionResult(
            text=text,
            raw=raw,
            finish_reason=finish,
            prompt_tokens=len(prompt.input_ids),
            completion_tokens=len(generated),
            trimmed_prompt_tokens=prompt.fim.trimmed_prefix_tokens + prompt.fim.trimmed_suffix_tokens,
            timings=timings,
            encoded_prompt_tokens=encoded,
            reused_prompt_tokens=reused,
            context_tokens=prompt.fim.context_tokens,
            decode_passes=passes,
            draft_tokens=drafted,
            accepted_draft_tokens=accepted_total,
            verify_passes=verifications,
            decode_layers=layers_run,
            exited_tokens=exited,
            early_stop_removed=removed,
        )


def _make_generator(params: GenerationParams, device: torch.device) -> torch.Generator | None:
    if params.temperature == 0.0:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def _sample(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling. logits: [V] fp32."""
    if generator is None:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _restrict(logits: torch.Tensor, allowed: list[int]) -> torch.Tensor:
    """logits [V] with every token outside `allowed` at -inf."""
    if not allowed:
        return logits
    index = torch.tensor(allowed, device=logits.device)
    masked = torch.full_like(logits, float("-inf"))
    masked[index] = logits[index]
    return masked


def _strip_heal(text: str, heal: str) -> str:
    """The output less the healed text it re-spelled ("" while that is still incomplete)."""
    if not heal:
        return text
    if text.startswith(heal):
        return text[len(heal) :]
    return "" if heal.startswith(text) else text


def _find_stop(raw: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (raw.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _streamable(raw: str, stops: tuple[str, ...]) -> str:
    """`raw` minus what may still change: a trailing partial UTF-8 character, or a tail that
    could be the start of a stop sequence (which would then be cut away)."""
    raw = raw.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(raw)), 0, -1):
            if raw.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return raw[: len(raw) - hold]


def _emit(on_text: TextSink, emitted: str, raw: str, inp: CompletionInput) -> str:
    stable = stable_prefix(raw, inp.prefix, inp.suffix)
    if len(stable) > len(emitted) and stable.startswith(emitted):
        on_text(stable[len(emitted) :])
        return stable
    return emitted
