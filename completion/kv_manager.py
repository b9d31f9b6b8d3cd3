"""The KV manager: the document caches, their memory budget, and the document tokens they follow.

A document (`DocumentKey`: tenant, document, model, adapter) has a KV cache of its last prompt
and the tokenization of its last prefix and suffix. When the next request for it comes (the
editor typed, then asked for a completion), the manager

1. re-tokenizes only around what changed (`DocumentTokens`: the text that differs from the last
   request's document, found by comparing the two strings (a line diff splits a long changed
   span into the separate edits it holds), goes through
   `token_edits.retokenize`, which tokenizes a window around it and splices it in; the prompt's
   prefix and suffix come from the document's tokens by cutting at the cursor, which tokenizes
   a window there; the ids are exactly those of tokenizing each text whole, which the tests
   check);
2. plans the reuse of the cached KV for the new prompt ids (`pie_plan.plan_reuse`: PIE keeps
   every token that is still there, re-rotated to its new position, and encodes the rest; models
   whose RoPE cannot be shifted reuse only the common prefix) and applies it (`pie.apply_plan`);
3. stores the result back, least recently used first out when the budget is exceeded.

`close(document)` drops both when the editor closes the document. Counters: `TokenizeStats`
(characters through the tokenizer, reported per request as `usage.tokenized_chars`) and the
cache store's hits, misses and evictions.

The step scheduler's worker encodes; `close` may come from another thread (the editor's
connection), so the maps are locked, and a document closed while its encoding is in flight is
not stored back.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from splice.completion.document_cache import DocumentCacheStore, DocumentKey
from splice.completion.drift_policy import DriftPolicy
from splice.completion.fim import TextEncoder, adds_dummy_prefix, plain_added_tokens
from splice.completion.kv_format import KVFormat, PackedKV, pack, unpack
from splice.completion.pie import DocumentKV, DraftRows, apply_plan, encode_full, select_refresh
from splice.completion.pie_plan import ReuseMethod, plan_reuse
from splice.completion.token_edits import TextEdit, TokenizedText, diff_tokens, retokenize, tokenize
from splice.kernels.rope import RopeSpec, UnsupportedRope, rope_spec_from_config

log = logging.getLogger(__name__)

MAX_TOKENIZED_DOCUMENTS = 128  # documents whose tokens are kept (LRU), caches or not
SPLIT_SPAN_CHARS = 2000  # a changed span longer than this is split into edits by a line diff


def changed_span(old: str, new: str) -> TextEdit | None:
    """The one edit that turns `old` into `new` (common prefix and suffix left out), or None
    when they are equal. Slices compare in C; the binary search keeps it O(n log n)."""
    if old == new:
        return None
    limit = min(len(old), len(new))
    lo, hi = 0, limit  # the common prefix's length is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old[:mid] == new[:mid]:
            lo = mid
        else:
            hi = mid - 1
    start = lo
    lo, hi = 0, limit - start  # the common suffix, not overlapping the prefix
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old[len(old) - mid :] == new[len(new) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return TextEdit(start, len(old) - lo, new[start : len(new) - lo])


def text_edits(old: str, new: str) -> list[TextEdit]:
    """Non-overlapping edits of `old` that give `new`: the changed span, split by a line diff
    when it is long (edits in several places of a file stay several small edits, so that each
    gets its own small re-tokenization window)."""
    span = changed_span(old, new)
    if span is None:
        return []
    if span.end - span.start + len(span.text) <= SPLIT_SPAN_CHARS:
        return [span]
    # Whole lines of the span, in both texts.
    start = old.rfind("\n", 0, span.start) + 1  # the common prefix: the same in both
    old_end = old.find("\n", span.end)  # within the common suffix, from here on
    old_end = len(old) if old_end < 0 else old_end + 1
    new_end = old_end + len(new) - len(old)
    old_lines = old[start:old_end].splitlines(keepends=True)
    new_lines = new[start:new_end].splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    old_at = list(itertools.accumulate((len(line) for line in old_lines), initial=start))
    new_at = list(itertools.accumulate((len(line) for line in new_lines), initial=start))
    edits = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            edits.append(TextEdit(old_at[i1], old_at[i2], new[new_at[j1] : new_at[j2]]))
    return edits


class DocumentTokens(TextEncoder):
    """A document's tokens, kept from its last request. `document(text)` brings them up to date by
    re-tokenizing a window around what changed; the prompt's prefix and suffix are then the
    document with everything after (before) the cursor deleted, which again tokenizes only a
    window at the cursor, so moving the cursor costs nothing either. Falls back to whole
    tokenization (same ids) for tokenizers that treat a text's start specially and for texts
    that contain a plain (non-special) added token."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, incremental: bool, plain_added: tuple[str, ...]
    ) -> None:
        super().__init__(tokenizer)
        self.incremental = incremental
        self.plain_added = plain_added
        self.doc: TokenizedText | None = None

    def document(self, text: str) -> None:
        if not self.incremental or any(t in text for t in self.plain_added):
            self.doc = None
        elif self.doc is None:
            self.doc = tokenize(self.tokenizer, text, self.stats)
        else:
            edits = text_edits(self.doc.text, text)
            if edits:
                self.doc = retokenize(self.tokenizer, self.doc, edits, stats=self.stats)[0]

    def prefix(self, text: str) -> list[int]:
        doc = self.doc
        if doc is None or not text or not doc.text.startswith(text):
            return super().prefix(text)
        return self._without(doc, TextEdit(len(text), len(doc.text), ""))

    def suffix(self, text: str) -> list[int]:
        doc = self.doc
        if doc is None or not text or not doc.text.endswith(text):
            return super().suffix(text)
        return self._without(doc, TextEdit(0, len(doc.text) - len(text), ""))

    def _without(self, doc: TokenizedText, cut: TextEdit) -> list[int]:
        if cut.start == cut.end:
            return list(doc.ids)
        # The cut reaches an end of the text: the window tokenized is the few characters at the
        # cursor, however much is cut, so the size rule for falling back does not apply.
        return list(
            retokenize(self.tokenizer, doc, [cut], fallback_fraction=math.inf, stats=self.stats)[0].ids
        )


@dataclass(frozen=True)
class EncodeStats:
    """What bringing a document's cache to a prompt took."""

    encoded: int = 0  # tokens run through the model, the probe's cost included (in full-depth tokens)
    reused: int = 0  # tokens whose KV came from the cache
    refreshed: int = 0  # of the encoded, kept tokens re-encoded against drift (pie+refresh)
    forced_full: bool = False  # the drift bound was passed: the prompt was encoded in full
    stale_deviation: float | None = None  # the probe's mean deviation of the tokens left stale
    draft: DraftRows | None = field(default=None, compare=False, repr=False)  # run in the prompt's pass


class KVManager:
    """Document caches within a byte budget, each following its document's tokens (see the
    module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        budget_bytes: int,
        reuse_method: ReuseMethod,
        policy: DriftPolicy,
        keep_tokens: bool = True,
        kv_format: KVFormat = "float",
    ) -> None:
        self.model = model
        self.kv_format = kv_format
        self.tokenizer = tokenizer
        self.reuse_method = reuse_method
        self.policy = policy
        self.caches: DocumentCacheStore[DocumentKV | PackedKV] = DocumentCacheStore(budget_bytes)
        self._tokens: OrderedDict[DocumentKey, DocumentTokens] = OrderedDict()
        self._encoding: set[DocumentKey] = set()  # documents an encoding is in flight for
        self._closed: set[DocumentKey] = set()  # of those, the ones closed meanwhile
        self._lock = threading.Lock()
        self._incremental = keep_tokens and bool(tokenizer.is_fast) and not adds_dummy_prefix(tokenizer)
        self._plain_added = plain_added_tokens(tokenizer)
        self.rope_spec: RopeSpec | None = None
        try:
            self.rope_spec = rope_spec_from_config(model.config)
        except UnsupportedRope as exc:
            log.warning("document caches reuse only common prefixes for this model: %s", exc)

    def __len__(self) -> int:
        return len(self.caches)

    @property
    def bytes(self) -> int:
        return self.caches.bytes

    def tokens(self, document: DocumentKey) -> DocumentTokens:
        """The document's kept tokens, for `build_prompt` (a fresh set for a new document)."""
        with self._lock:
            kept = self._tokens.pop(document, None)
            if kept is None:
                kept = DocumentTokens(
                    self.tokenizer, incremental=self._incremental, plain_added=self._plain_added
                )
            self._tokens[document] = kept
            while len(self._tokens) > MAX_TOKENIZED_DOCUMENTS:
                self._tokens.popitem(last=False)
            return kept

    def encode(
        self,
        ids: list[int],
        document: DocumentKey,
        method: ReuseMethod | None = None,
        *,
        draft: Sequence[int] = (),
    ) -> tuple[DocumentKV, EncodeStats]:
        """Bring `document`'s cache to the sequence `ids`, re-encoding only what changed.

        Returns the cache and what it took. The cache is stored back (LRU, within the budget),
        so the next request for the document starts from it. A `draft` rides on the pass that
        re-encodes the last token, when there is one (`EncodeStats.draft`, not stored).
        """
        method = method or self.reuse_method
        if method in ("naive", "pie", "pie+refresh") and self.rope_spec is None:
            method = "prefix"  # re-rotation impossible for this RoPE type (logged at start-up)
        with self._lock:
            self._encoding.add(document)
            stored = self.caches.get(document)
        old = unpack(stored) if stored is not None else None
        try:
            doc, stats = self._encode(ids, old, method, draft)
        finally:
            with self._lock:
                self._encoding.discard(document)
                closed = document in self._closed
                self._closed.discard(document)
        if not closed:  # a document closed meanwhile gets its answer, and nothing is kept
            self.store(document, doc)
        return doc, stats

    def store(self, document: DocumentKey, doc: DocumentKV) -> None:
        """Keep `doc` as `document`'s cache (packed in the manager's format; LRU within budget)."""
        packed = pack(doc, self.kv_format)
        with self._lock:
            self.caches.put(document, packed)

    def peek(self, document: DocumentKey) -> DocumentKV | None:
        """`document`'s cache as the next completion would reuse it (unpacked), or None."""
        with self._lock:
            stored = self.caches.get(document)
        return unpack(stored) if stored is not None else None

    def describe(self, document: DocumentKey) -> dict[str, Any] | None:
        """What `document`'s cache holds, without unpacking it: tokens, bytes, storage format and
        per layer (KV heads, tokens, head dim); None when it has none."""
        with self._lock:
            stored = self.caches.look(document)  # looking is not using: no LRU touch
            if stored is None:
                return None
            return {
                "tokens": stored.length,
                "bytes": stored.nbytes,
                "format": self.kv_format,
                "layers": [list(shape) for shape in stored.layer_shapes],
            }

    def _encode(
        self, ids: list[int], old: DocumentKV | None, method: ReuseMethod, draft: Sequence[int]
    ) -> tuple[DocumentKV, EncodeStats]:
        if old is None or method == "full":
            return encode_full(self.model, ids), EncodeStats(encoded=len(ids))
        policy = self.policy
        plan = plan_reuse(
            old.ids,
            ids,
            diff_tokens(old.ids, ids),
            method,
            refresh_first_k=policy.first_k,
            logits_fresh=old.logits is not None,
        )
        probe_cost, stale = 0, None
        if method == "pie+refresh" and policy.probes:
            probe = select_refresh(
                self.model,
                old,
                ids,
                plan,
                self.rope_spec,
                ratio=policy.probe_ratio,
                threshold=policy.probe_threshold,
                probe_layer=policy.probe_layer,
            )
            probe_cost = probe.token_equivalents(len(old.keys))
            if policy.full_bound > 0 and probe.stale_deviation > policy.full_bound:
                # too much would stay stale: start over from a full encode
                doc = encode_full(self.model, ids)
                forced = EncodeStats(
                    encoded=len(ids) + probe_cost,
                    forced_full=True,
                    stale_deviation=probe.stale_deviation,
                )
                return doc, forced
            plan, stale = probe.plan, probe.stale_deviation
        doc, applied = apply_plan(self.model, old, ids, plan, self.rope_spec, draft=draft)
        return doc, EncodeStats(
            encoded=applied.encoded + probe_cost,
            reused=applied.reused,
            refreshed=plan.refreshed,
            stale_deviation=stale,
            draft=applied.draft,
        )

    def close(self, document: DocumentKey) -> bool:
        """Forget the document's cache and tokens (the editor closed it). True if it had a cache."""
        with self._lock:
            self._tokens.pop(document, None)
            if document in self._encoding:
                self._closed.add(document)
            return self.caches.drop(document)
