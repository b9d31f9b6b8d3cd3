"""Token healing: back the prompt up by its last token and let the model re-choose it.

A completion request cuts the document at an arbitrary character, so the prompt usually ends
with a token the model would not have chosen there: four spaces of indentation (in training the
indentation merges with the next word or newline), or half an identifier (`def fib` when the
tokenizer has `fibonacci`). Conditioned on such an unnatural last token, small models go
astray (a newline instead of the body, say).

Healing removes the prefix's last token from the prompt, and constrains the first generated
token(s) to spell it out again: a token is allowed if it starts with the removed text, or is a
prefix of it (then the rest is constrained on the next step). The removed text is stripped
from the output again, so callers see a completion that starts at the cursor.

The token index (every token's text, sorted) is built once per tokenizer; each request costs a
binary search plus one dictionary look-up per character of the healed text.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

# Tokenising this many trailing characters gives the prefix's last token (BPE pre-tokenizers
# split at whitespace and word boundaries well inside it).
TAIL_CHARS = 64


@dataclass(frozen=True)
class HealedPrefix:
    prefix: str  # the prefix to prompt with
    heal: str  # removed from its end; the completion must start with it ("" for no healing)


class TokenHealer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        special = set(tokenizer.all_special_ids)
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        entries = sorted(
            (text, i)
            for i, text in enumerate(texts)
            if text and i not in special and "\ufffd" not in text  # partial UTF-8 bytes never match text
        )
        self._texts = [t for t, _ in entries]
        self._ids = [i for _, i in entries]
        self._by_text: dict[str, list[int]] = {}
        for text, i in entries:
            self._by_text.setdefault(text, []).append(i)
        self.token_text = texts
        self._spellable_cache: dict[str, bool] = {}

    def split(self, prefix: str) -> HealedPrefix:
        """Remove the prefix's last token when the model can spell it out again."""
        tail = prefix[-TAIL_CHARS:]
        ids = self.tokenizer(tail, add_special_tokens=False, split_special_tokens=True).input_ids
        if not ids:
            return HealedPrefix(prefix, "")
        last = self.token_text[ids[-1]]
        if not last or last == tail or not prefix.endswith(last) or not self.allowed(last):
            return HealedPrefix(prefix, "")
        return HealedPrefix(prefix[: -len(last)], last)

    def allowed(self, pending: str) -> list[int]:
        """Tokens that keep the output consistent with `pending`, the text still to spell out:
        those that start with all of it, and those that are a proper prefix of it whose
        remainder can still be spelled (so healing never strands the decoder)."""
        start, end = self._range(pending)
        ids = list(self._ids[start:end])
        for k in range(1, len(pending)):
            if pending[:k] in self._by_text and self._spellable(pending[k:]):
                ids.extend(self._by_text[pending[:k]])
        return ids

    def _range(self, pending: str) -> tuple[int, int]:
        start = bisect.bisect_left(self._texts, pending)
        return start, bisect.bisect_left(self._texts, pending + "\U0010ffff")

    def _spellable(self, text: str) -> bool:
        if text in self._spellable_cache:
            return self._spellable_cache[text]
        start, end = self._range(text)
        ok = end > start or any(
            text[:k] in self._by_text and self._spellable(text[k:]) for k in range(1, len(text))
        )
        self._spellable_cache[text] = ok
        return ok
