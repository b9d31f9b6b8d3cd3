"""One request's decoding, step by step: what the step scheduler runs between forward passes.

`CompletionEngine.start` encodes the prompt (prefill, or PIE reuse of a document cache) and
returns a `Generation`; each `step()` delivers the tokens the last forward pass settled
(sampling, token healing, stops, scope end, streaming) and runs the next forward pass: one
token, a draft verification (lookup or self-speculative) or an early-exit decode. Between steps
the scheduler may cancel it or run another request's step; `result()` post-processes the text.

Every pass goes through the engine's `ModelRunner`; the numerics of each kind of pass live there
and in `CompletionEngine.verify` / `speculate`. What is here is bookkeeping, and it is the same
for every caller (REST, SSE, WebSocket, CLI, benchmarks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from splice.completion.drafting import DraftLength, LookupDrafter, SuggestionDrafter
from splice.completion.kv_manager import EncodeStats
from splice.completion.pie import DraftRows
from splice.completion.postprocess import is_finished, postprocess, stable_prefix

if TYPE_CHECKING:
    from splice.completion.engine import (
        CompletionEngine,
        CompletionInput,
        CompletionResult,
        DriftAudit,
        FinishReason,
        GenerationParams,
        PreparedPrompt,
        Timings,
    )

log = logging.getLogger(__name__)

TextSink = Callable[[str], None]


class Generation:
    """The decoding state of one request whose prompt is encoded (see the module docstring)."""

    def __init__(
        self,
        engine: CompletionEngine,
        inp: CompletionInput,
        params: GenerationParams,
        prompt: PreparedPrompt,
        cache: DynamicCache | None,  # None once the scheduler moved it into a batch slot
        logits: torch.Tensor,  # [V] after the prompt's last token
        *,
        encode: EncodeStats,
        timings: Timings,
        started: float,  # perf_counter() when the request started (TTFT counts from here)
        on_text: TextSink | None = None,
        audit: DriftAudit | None = None,
        drafted: DraftRows | None = None,  # the suggestion verified in the prompt's pass
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.inp = inp
        self.params = params
        self.prompt = prompt
        self.cache = cache
        self.logits = logits
        self.encode = encode
        self.timings = timings
        self.started = started
        self.on_text = on_text
        self.generator = _make_generator(params, engine.device)
        self.stops = tuple(s for s in params.stop if s)
        self.generated: list[int] = []
        self.raw = ""
        self.pending = prompt.heal  # healed text the output has yet to spell out
        self.emitted = ""  # text already given to `on_text`
        self.finish: FinishReason = "length"
        self.done = False
        self.verified: list[int] = []  # accepted draft tokens, already in the cache, not yet delivered
        self._fed: list[int] = []  # the draft a batched pass verifies (`prepare` -> `absorb`)
        config = engine.config
        greedy = self.generator is None
        self.lookup: LookupDrafter | None = None
        self.suggestion: SuggestionDrafter | None = None
        self._from_suggestion = False  # the pending draft came from `suggestion`, not `lookup`
        if config.drafting == "lookup" and greedy:

            def tokenize(text: str) -> list[int]:
                return _tokenize(engine, text)

            self.lookup = LookupDrafter([*tokenize(inp.draft_text), *prompt.input_ids], config.draft)
            if inp.expected:
                self.suggestion = SuggestionDrafter(inp.expected, tokenize, config.draft.max_tokens)
        self.self_draft = DraftLength(config.draft) if config.drafting == "self" and greedy else None
        self.early_exit = config.early_exit if params.early_exit is None else params.early_exit
        if self.early_exit and engine.exit_heads is None:
            raise ValueError(f"{engine.loaded.model_id} has no exit heads; early exit is unavailable")
        self.thresholds = params.exit_thresholds or config.exit_thresholds
        self.passes = self.verifications = self.drafted = self.accepted = 0
        self.layers = self.exited = self.removed = 0
        self.decode_start = time.perf_counter()
        if drafted is not None:
            self._accept_prompt_draft(drafted)

    def _accept_prompt_draft(self, rows: DraftRows) -> None:
        """The suggestion fed after the prompt in the prompt's own pass (`prompt_draft`): keep
        what greedy decoding confirms, token healing included, as a verification pass would."""
        if self.suggestion is None or self.cache is None:
            raise ValueError("a prompt draft needs a greedy generation that drafts its suggestion")
        accepted, pending = 0, self.pending
        for row, token in zip(rows.logits, rows.tokens, strict=False):
            if _sample(self._healed(row, pending), self.params, None) != token:
                break
            accepted += 1
            if pending:
                assert self.engine.healer is not None
                pending = _spelled_out(pending, self.engine.healer.token_text[token])
        if accepted:
            self.cache = rows.cache(self.engine.model.config, accepted)
        self._from_suggestion = True
        self._verified(rows.tokens, accepted)
        self.logits = rows.logits[accepted]

    # -- stepping ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Deliver the settled tokens and run the next forward pass; True once finished."""
        token = self._settle()
        if token is not None:
            self._forward(token)
        return self.done

    @property
    def batchable(self) -> bool:
        """Whether its passes can run in a batch with other requests' (`prepare` / `absorb`):
        plain decode steps and lookup verifications can; self-speculative drafting and early
        exit run passes of their own."""
        return self.self_draft is None and not self.early_exit

    def prepare(self) -> list[int] | None:
        """Batched stepping, first half: deliver the settled tokens and return what the next pass
        feeds (the last token, then a lookup draft if any), or None once finished. The caller
        runs that pass, in a batch with other requests', and hands the logits to `absorb`."""
        token = self._settle()
        if token is None:
            return None
        self._fed = self._next_draft()
        return [token, *self._fed]

    def absorb(self, logits: torch.Tensor) -> int:
        """Batched stepping, second half: the logits [1 + len(draft), V] of the pass `prepare`
        asked for. Returns how many of the fed tokens the cache keeps (the token and the
        accepted draft); the caller drops the rest from the request's KV."""
        draft, self._fed = self._fed, []
        self.passes += 1
        self.layers += self.engine.runner.num_layers
        if not draft:
            self.logits = logits[0]
            return 1
        accepted = accepted_prefix(logits, draft)
        self._verified(draft, accepted)
        self.logits = logits[accepted]
        return 1 + accepted

    def _settle(self) -> int | None:
        """Deliver the tokens the last pass settled; the token the next pass feeds, or None."""
        while not self.done:
            from_draft = bool(self.verified)  # an accepted draft token: its verification fed it
            token = self.verified.pop(0) if from_draft else self._sample()
            if self._deliver(token) or from_draft:
                continue
            return token
        return None

    def _next_draft(self) -> list[int]:
        """The next draft: the rest of the suggestion being typed through while the output
        follows it, else lookup's (if drafting now)."""
        lookup, left = self.lookup, self.params.max_tokens - len(self.generated)
        self._from_suggestion = False
        if lookup is None or self.pending:
            return []
        if self.suggestion is not None:
            draft = self.suggestion.propose(self.raw)[:left]
            if draft:
                self._from_suggestion = True
                return draft
        if not lookup.ready():
            return []
        return lookup.propose()[:left]

    def cancel(self) -> None:
        """End here; `result()` then reports what was generated with finish reason cancelled."""
        if not self.done:
            self.finish, self.done = "cancelled", True

    def _sample(self) -> int:
        return _sample(self._healed(self.logits, self.pending), self.params, self.generator)

    def _healed(self, logits: torch.Tensor, pending: str) -> torch.Tensor:
        """`logits` [V] restricted to the tokens that can spell out `pending` healed text."""
        if not pending:
            return logits
        assert self.engine.healer is not None
        return _restrict(logits, self.engine.healer.allowed(pending))

    def _deliver(self, token: int) -> bool:
        """Append `token` to the output; True when that ends the generation."""
        engine, params = self.engine, self.params
        if self.pending:
            assert engine.healer is not None
            self.pending = _spelled_out(self.pending, engine.healer.token_text[token])
        if not self.generated:
            self.timings.first_token_ms = (time.perf_counter() - self.started) * 1000.0
            self.decode_start = time.perf_counter()
        if token in engine.stop_ids:
            return self._end("stop")
        self.generated.append(token)
        decoded = str(engine.tokenizer.decode(self.generated, skip_special_tokens=True))
        self.raw = _strip_heal(decoded, self.prompt.heal)
        cut = _find_stop(self.raw, self.stops)
        if cut is not None:
            self.raw = self.raw[:cut]
            return self._end("stop")
        if params.postprocess and is_finished(self.raw, self.inp.prefix, self.inp.suffix):
            return self._end("scope")
        if len(self.generated) >= params.max_tokens:
            return self._end("length")
        if self.on_text is not None:
            streamable = _streamable(self.raw, self.stops)
            stable = (
                stable_prefix(streamable, self.inp.prefix, self.inp.suffix)
                if params.postprocess
                else streamable
            )
            if len(stable) > len(self.emitted) and stable.startswith(self.emitted):
                self.on_text(stable[len(self.emitted) :])
                self.emitted = stable
        if self.lookup is not None:
            self.lookup.append(token)
        return False

    def _end(self, reason: FinishReason) -> bool:
        self.finish, self.done = reason, True
        return True

    def _forward(self, token: int) -> None:
        """One pass after `token`: verify a draft, self-speculate, exit early, or decode one."""
        engine, left = self.engine, self.params.max_tokens - len(self.generated)
        if self.cache is None:
            raise RuntimeError("this generation decodes in a batch: step it with prepare() and absorb()")
        self.passes += 1
        draft = self._next_draft()
        if draft:
            accepted, self.logits = engine.verify(self.cache, token, draft)
            self._verified(draft, accepted)
            self.layers += engine.runner.num_layers
        elif self.self_draft is not None and not self.pending and left > 1 and self.self_draft.ready():
            k = min(self.self_draft.length, left)
            draft, accepted, self.logits = engine.speculate(self.cache, token, k)
            self._verified(draft, accepted)
            assert engine.exit_heads is not None
            depth = engine.exit_heads.exit_layers[-1]
            self.layers += (len(draft) + 1) * depth + engine.runner.num_layers - depth
        elif self.early_exit and not self.pending:
            assert engine.exit_heads is not None
            ids = torch.tensor([[token]], dtype=torch.long, device=engine.device)  # [1, 1]
            step = engine.runner.decode_exit(ids, self.cache, engine.exit_heads, self.thresholds)
            self.layers += step.layers
            if step.logits is None:  # Stop: what follows is likely wrong
                self.removed = self.params.max_tokens - len(self.generated)
                self._end("early_stop")
                return
            self.exited += step.decision == "exit"
            self.logits = step.logits
        else:
            self.logits = engine.decode_one_token(self.cache, token)
            self.layers += engine.runner.num_layers

    def _verified(self, draft: list[int], accepted: int) -> None:
        """Bookkeeping after a verification pass (lookup's, the suggestion's or self-drafting's)."""
        drafter: DraftLength | SuggestionDrafter | None = self.self_draft
        if drafter is None:
            drafter = self.suggestion if self._from_suggestion else self.lookup
        assert drafter is not None
        drafter.feedback(len(draft), accepted)
        self.verified = draft[:accepted]
        self.drafted += len(draft)
        self.verifications += 1
        self.accepted += accepted

    # -- the answer ---------------------------------------------------------------------------

    def result(self) -> CompletionResult:
        """The post-processed suggestion; streams the rest of the text to `on_text`."""
        from splice.completion.engine import CompletionResult

        timings = self.timings
        timings._decoded = max(len(self.generated) - 1, 0)
        timings.decode_ms = (time.perf_counter() - self.decode_start) * 1000.0 if self.generated else 0.0
        text = (
            postprocess(self.raw, self.inp.prefix, self.inp.suffix) if self.params.postprocess else self.raw
        )
        if self.on_text is not None:
            if text.startswith(self.emitted):
                if len(text) > len(self.emitted):
                    self.on_text(text[len(self.emitted) :])
            else:  # would mean stable_prefix broke its contract; the stream is already out
                log.error("streamed text %r is not a prefix of the final text %r", self.emitted, text)
        timings.total_ms = (time.perf_counter() - self.started) * 1000.0
        fim = self.prompt.fim
        return CompletionResult(
            text=text,
            raw=self.raw,
            finish_reason=self.finish,
            prompt_tokens=len(self.prompt.input_ids),
            completion_tokens=len(self.generated),
            trimmed_prompt_tokens=fim.trimmed_prefix_tokens + fim.trimmed_suffix_tokens,
            timings=timings,
            encoded_prompt_tokens=self.encode.encoded,
            reused_prompt_tokens=self.encode.reused,
            refreshed_prompt_tokens=self.encode.refreshed,
            forced_full_encode=self.encode.forced_full,
            stale_deviation=self.encode.stale_deviation,
            audit=self.audit,
            tokenized_chars=self.prompt.tokenized_chars,
            context_tokens=fim.context_tokens,
            decode_passes=self.passes,
            draft_tokens=self.drafted,
            accepted_draft_tokens=self.accepted,
            verify_passes=self.verifications,
            decode_layers=self.layers,
            exited_tokens=self.exited,
            early_stop_removed=self.removed,
        )


def accepted_prefix(logits: torch.Tensor, draft: list[int]) -> int:
    """How many drafted tokens greedy decoding confirms: logits [1 + k, V] of a pass that fed the
    last token and the k drafted ones."""
    greedy = torch.argmax(logits[:-1], dim=-1).tolist()
    accepted = 0
    while accepted < len(draft) and greedy[accepted] == draft[accepted]:
        accepted += 1
    return accepted


def prompt_draft(
    engine: CompletionEngine, inp: CompletionInput, params: GenerationParams, heal: str
) -> list[int]:
    """What the prompt's own pass can verify after the prompt: the suggestion being typed
    through (its healed text first), when the generation will draft it (greedy, lookup drafting).
    A completion that ends where the suggestion did then needs no decode pass at all: the token
    after it is read from the same pass's last row."""
    config = engine.config
    drafts = config.drafting == "lookup" and config.draft.in_prompt_pass and params.temperature == 0.0
    if not inp.expected or not drafts:
        return []
    return _tokenize(engine, heal + inp.expected)[: params.max_tokens]


def _tokenize(engine: CompletionEngine, text: str) -> list[int]:
    return list(engine.tokenizer(text, add_special_tokens=False).input_ids) if text else []


def _spelled_out(pending: str, spelled: str) -> str:
    """The healed text still to spell out after a token that spells `spelled`."""
    return "" if spelled.startswith(pending) else pending[len(spelled) :]


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
    # Shift before scaling: the largest logit becomes exactly 0 and a tiny temperature sends the
    # others to -inf (a near-greedy distribution) instead of overflowing to inf - inf = nan. A
    # temperature below fp32's range rounds to 0: then the top logits' 0/0 is nan, and means 0.
    scaled = (logits - logits.max()) / params.temperature
    probs = torch.softmax(torch.where(torch.isnan(scaled), 0.0, scaled), dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        keep[0] = True  # the top token always (a top_p below fp32's range rounds to 0)
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
