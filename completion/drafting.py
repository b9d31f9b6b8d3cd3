"""Lookup drafting: guess the next tokens by copying what followed the same n-gram earlier.

Code repeats itself: a line retyped after an edit, a call that mirrors the signature in the
prompt, the suffix that the middle runs into, an identifier from the repository context. When the
last n generated tokens occurred before, in the prompt (document, suffix, repository context), in
the text the document's last edit removed (`CompletionInput.draft_text`, never shown to the
model), or in the output so far, the tokens that followed them there are a draft. The engine verifies a draft
in one forward pass and keeps the longest prefix that greedy decoding would have produced itself
(`CompletionEngine.complete`), so the output equals greedy decoding token for token; a wrong
draft costs one wider forward pass, a right one saves a pass per accepted token.

A suggestion the user is typing through is a draft of its own (`SuggestionDrafter`): when the
document's last suggestion still fits (the user typed its first characters, or asks again at the
same place), the rest of it (`CompletionInput.expected`) is drafted whole while the output spells
it out, so the completion after each typed character costs one verification pass instead of a
pass per token (Continue keeps streaming the old request for this; here the new request decodes
from the new text, and the old suggestion only drafts: the output is greedy's either way).

The index maps every n-gram (for each n in [min_ngram, max_ngram]) to the position after its
latest occurrence, so a lookup is a few dict probes and appending a token updates it in O(n).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DraftConfig:
    max_tokens: int = 8  # most tokens drafted per verification pass
    # Adaptive draft length (transformers' assisted-generation heuristic): after a draft accepted
    # whole the next may be 2 tokens longer, after one with a rejection 1 token shorter (at least 1).
    # A rejected 1-token draft pauses drafting for 1, 2, 4, ... 32 steps (reset by an accepted
    # token): with MKL's `F.linear` a pass that verifies even 2 tokens costs more than a one-token
    # pass on a CPU (a matrix product instead of a matrix-vector one). With the packed weights a
    # CPU now decodes with (kernels/cpu_linear.py) a 9-token pass costs ~1.13x a one-token one, and
    # a fixed length measured the same as the adaptive one (within run-to-run noise).
    adaptive: bool = True
    max_ngram: int = 4  # longest suffix of the output matched (longer matches are tried first)
    # Shortest. 1-token matches draft more often and are wrong more often; a rejected draft costs a
    # wider pass. `splice bench decode --lookup-min-ngrams 1 2` (README, Decoding): 1 needs fewer
    # passes per token on all six sets and was 9% faster on two of the three tune sets (HumanEval),
    # 2.5% slower on the third (next-line edits, within noise), on a CPU whose verification pass
    # costs ~1.4x a one-token pass; where it costs less, 1 gains more.
    min_ngram: int = 1
    # A suggestion being typed through is fed after the prompt in the pass that encodes the typed
    # text, and verified there (`generation.prompt_draft`); False: from the first decode pass on.
    in_prompt_pass: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 64:
            raise ValueError("draft max_tokens must be in [1, 64]")
        if not 1 <= self.min_ngram <= self.max_ngram <= 16:
            raise ValueError("draft n-grams need 1 <= min_ngram <= max_ngram <= 16")


class DraftLength:
    """How many tokens the next draft may have, adapted to how much of the last one was accepted."""

    def __init__(self, config: DraftConfig) -> None:
        self.config = config
        self.length = config.max_tokens
        self.paused = 0  # decode steps left without drafting
        self._pause = 1  # the next pause's length

    def ready(self) -> bool:
        """Whether to draft at this step (counts a paused step down)."""
        if self.paused:
            self.paused -= 1
            return False
        return True

    def feedback(self, drafted: int, accepted: int) -> None:
        if not self.config.adaptive:
            return
        if accepted:
            self._pause = 1
        if accepted >= drafted:
            self.length = min(self.length + 2, self.config.max_tokens)
        elif self.length > 1:
            self.length -= 1
        else:
            self.paused, self._pause = self._pause, min(self._pause * 2, 32)


class LookupDrafter(DraftLength):
    """Drafts from the prompt's tokens and the tokens generated so far."""

    def __init__(self, source: list[int], config: DraftConfig | None = None) -> None:
        super().__init__(config or DraftConfig())
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> index after its latest occurrence
        for token in source:
            self.append(token)

    def append(self, token: int) -> None:
        self.tokens.append(token)
        end = len(self.tokens)
        # Index the n-grams that end one token before the new one: they are now followed by it.
        for n in range(self.config.min_ngram, self.config.max_ngram + 1):
            if end - 1 - n < 0:
                break
            self._next[tuple(self.tokens[end - 1 - n : end - 1])] = end - 1

    def propose(self) -> list[int]:
        """Tokens that followed the longest earlier occurrence of the current tail ([] if none)."""
        end = len(self.tokens)
        for n in range(self.config.max_ngram, self.config.min_ngram - 1, -1):
            if end < n:
                continue
            start = self._next.get(tuple(self.tokens[end - n :]))
            if start is not None:
                return self.tokens[start : start + self.length]
        return []


class SuggestionDrafter:
    """Drafts the rest of an expected text (the suggestion being typed through) while the output
    spells it out. `encode` tokenizes text without special tokens. Given up at the first draft
    that verification does not keep whole: the output went its own way (or tokenized the text
    differently), and a draft that keeps failing would cost a wider pass a step."""

    def __init__(self, expected: str, encode: Callable[[str], list[int]], max_tokens: int) -> None:
        self.expected = expected
        self.encode = encode
        self.max_tokens = max_tokens
        self._at = -1  # the output length the cached tokens are for
        self._tokens: list[int] = []

    def propose(self, output: str) -> list[int]:
        """Tokens for the expected text after `output` ([] once it no longer fits)."""
        if not self.expected or len(output) >= len(self.expected) or not self.expected.startswith(output):
            return []
        if self._at != len(output):
            self._at, self._tokens = len(output), self.encode(self.expected[len(output) :])
        return self._tokens[: self.max_tokens]

    def feedback(self, drafted: int, accepted: int) -> None:
        if accepted < drafted:
            self.expected = ""
