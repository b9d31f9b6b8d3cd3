"""Text edits → token edits: which tokens of a document survive an edit, and where they move.

A document's KV cache follows its token sequence. After the editor changes some characters, the
cache can keep every token that is still there (PIE re-rotates its keys by how far it moved)
and must encode only the tokens that are new. This module answers "what is still there" without
re-tokenizing the whole document: `retokenize` tokenizes a small window of the new text around
each edit and splices it into the old tokens, and `diff_tokens` compares two token lists for
stateless callers that only have ids.

Invariant: `retokenize(tok, old, edits)[0] == tokenize(tok, new_text)`, ids and offsets alike.
A window tokenized on its own differs from the full tokenization near its edges (pre-tokenizer
regexes look across characters, BPE merges depend on the whole pre-token, sentencepiece-style
tokenizers add a dummy "▁" at the start), so each window starts a margin of tokens before the
edit and ends a margin after it, and its tokens are only trusted between two *sync points*:
token boundaries where the window's tokens agree with the old tokens (same ids, same text span
mapped through the edit) for `SYNC_TOKENS` tokens in a row. The margins double until both sync
points are found; windows that meet are merged; past `fallback_fraction` of the document the
whole text is tokenized and diffed instead (the same result, just slower).

Script form (`TokenRun`): runs in order cover the old and the new list contiguously, runs of one
op are merged, and a replacement is a `delete` run followed by an `insert` run, so between two
keep runs there is at most one delete and then at most one insert.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

MARGIN_TOKENS = 8  # initial window margin on each side of an edit, in old tokens; doubles until synced
SYNC_TOKENS = 3  # consecutive agreeing tokens that make a sync point
FALLBACK_FRACTION = 0.5  # windows wider than this fraction of the document: tokenize it all
ANCHOR_TOKENS = 8  # diff_tokens: length of the unique token k-grams that anchor a long diff
SMALL_DIFF_TOKENS = 256  # diff_tokens: middles shorter than this go to difflib directly
DIFFLIB_MAX_WORK = 1 << 22  # diff_tokens: an unanchored middle with len(a) * len(b) above this is replaced

Offsets = tuple[tuple[int, int], ...]


@dataclass
class TokenizeStats:
    """What went through the tokenizer: calls and characters (a counter for callers that must show
    that an edit re-tokenized a window, not the document)."""

    calls: int = 0
    chars: int = 0

    def add(self, text: str) -> None:
        self.calls += 1
        self.chars += len(text)


@dataclass(frozen=True)
class TextEdit:
    start: int  # character offset in the OLD text
    end: int  # exclusive; start == end for a pure insertion
    text: str  # replacement text

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"edit range [{self.start}, {self.end}) is not a valid range")


@dataclass(frozen=True)
class TokenRun:
    op: Literal["keep", "delete", "insert"]
    old_start: int  # range in the old token list (empty for insert: where it goes)
    old_end: int
    new_start: int  # range in the new token list (empty for delete)
    new_end: int
    ids: tuple[int, ...] = ()  # the inserted ids (insert only)

    @property
    def shift(self) -> int:
        """How far the run moved: new position minus old position."""
        return self.new_start - self.old_start


@dataclass(frozen=True)
class TokenizedText:
    text: str
    ids: tuple[int, ...]
    offsets: Offsets  # (char_start, char_end) of each token in text

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.offsets):
            raise ValueError(f"{len(self.ids)} ids but {len(self.offsets)} offsets")


def tokenize(
    tokenizer: PreTrainedTokenizerBase, text: str, stats: TokenizeStats | None = None
) -> TokenizedText:
    """Full tokenization as plain text: no BOS/EOS, special-token strings stay characters."""
    if stats is not None:
        stats.add(text)
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} gives no offsets; a fast tokenizer is needed")
    enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    offsets = tuple((int(s), int(e)) for s, e in enc["offset_mapping"])
    return TokenizedText(text, tuple(enc["input_ids"]), offsets)


def _checked_edits(edits: Sequence[TextEdit], length: int) -> list[TextEdit]:
    """The edits sorted by position; ValueError if one is out of range or two overlap."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    for edit in ordered:
        if edit.end > length:
            raise ValueError(
                f"edit [{edit.start}, {edit.end}) is out of range for a text of {length} characters"
            )
    for prev, edit in itertools.pairwise(ordered):
        same_point = prev.start == prev.end == edit.start == edit.end
        if prev.end > edit.start or same_point:
            raise ValueError(f"edits [{prev.start}, {prev.end}) and [{edit.start}, {edit.end}) overlap")
    return ordered


def apply_text_edits(text: str, edits: Sequence[TextEdit]) -> str:
    """Apply edits given in the coordinates of `text` (any order, non-overlapping)."""
    pieces: list[str] = []
    pos = 0
    for edit in _checked_edits(edits, len(text)):
        pieces += [text[pos : edit.start], edit.text]
        pos = edit.end
    pieces.append(text[pos:])
    return "".join(pieces)


class _ScriptBuilder:
    """Builds a script in canonical form from keep / delete / insert steps."""

    def __init__(self) -> None:
        self.runs: list[TokenRun] = []
        self.old = 0
        self.new = 0
        self._deleted = 0
        self._inserted: list[int] = []

    def keep(self, count: int) -> None:
        if count <= 0:
            return
        self._flush()
        old_start, new_start = self.old, self.new
        if self.runs and self.runs[-1].op == "keep":  # extend it
            merged = self.runs.pop()
            old_start, new_start = merged.old_start, merged.new_start
        self.runs.append(TokenRun("keep", old_start, self.old + count, new_start, self.new + count))
        self.old += count
        self.new += count

    def delete(self, count: int) -> None:
        self._deleted += count

    def insert(self, ids: Sequence[int]) -> None:
        self._inserted.extend(ids)

    def _flush(self) -> None:
        if self._deleted:
            self.runs.append(TokenRun("delete", self.old, self.old + self._deleted, self.new, self.new))
            self.old += self._deleted
            self._deleted = 0
        if self._inserted:
            end = self.new + len(self._inserted)
            self.runs.append(TokenRun("insert", self.old, self.old, self.new, end, tuple(self._inserted)))
            self.new = end
            self._inserted = []

    def finish(self) -> list[TokenRun]:
        self._flush()
        return self.runs


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    lo = 0
    step = 256
    while lo + step <= n and a[lo : lo + step] == b[lo : lo + step]:  # compare chunks at C speed
        lo += step
    while lo < n and a[lo] == b[lo]:
        lo += 1
    return lo


def _anchor_chain(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    """Matching ANCHOR_TOKENS-grams, unique on both sides, in increasing order on both sides.

    `a` is sampled every ANCHOR_TOKENS positions (a common run of 2 * ANCHOR_TOKENS tokens still
    holds a sample), `b` at every position: O(len(a) + len(b)) dictionary work.
    """
    k = ANCHOR_TOKENS
    in_b: dict[tuple[int, ...], int] = {}
    for j in range(len(b) - k + 1):
        gram = tuple(b[j : j + k])
        in_b[gram] = -1 if gram in in_b else j
    in_a: dict[tuple[int, ...], int] = {}
    for i in range(0, len(a) - k + 1, k):
        gram = tuple(a[i : i + k])
        in_a[gram] = -1 if gram in in_a else i
    pairs = sorted((i, in_b[g]) for g, i in in_a.items() if i >= 0 and in_b.get(g, -1) >= 0)
    # longest chain increasing in b (patience sorting), then drop anchors that overlap in b
    tails: list[int] = []  # tails[n]: index into pairs of the smallest b-end of a chain of n + 1
    links: list[int] = []
    for n, (_, j) in enumerate(pairs):
        pos = bisect.bisect_left(tails, j, key=lambda t: pairs[t][1])
        links.append(tails[pos - 1] if pos else -1)
        tails[pos : pos + 1] = [n]
    chain: list[tuple[int, int]] = []
    t = tails[-1] if tails else -1
    while t >= 0:
        chain.append(pairs[t])
        t = links[t]
    chain.reverse()
    kept: list[tuple[int, int]] = []
    for i, j in chain:
        if not kept or j >= kept[-1][1] + k:
            kept.append((i, j))
    return kept


def _diff_into(builder: _ScriptBuilder, a: list[int], b: list[int]) -> None:
    """Append the script from `a` to `b`: common ends kept, unique k-gram anchors, difflib between."""
    prefix = _common_prefix(a, b)
    suffix = _common_prefix(a[prefix:][::-1], b[prefix:][::-1])
    builder.keep(prefix)
    a_mid, b_mid = a[prefix : len(a) - suffix], b[prefix : len(b) - suffix]
    chain = _anchor_chain(a_mid, b_mid) if len(a_mid) + len(b_mid) > SMALL_DIFF_TOKENS else []
    if chain:
        i0 = j0 = 0
        for i, j in chain:
            _diff_into(builder, a_mid[i0:i], b_mid[j0:j])
            builder.keep(ANCHOR_TOKENS)
            i0, j0 = i + ANCHOR_TOKENS, j + ANCHOR_TOKENS
        _diff_into(builder, a_mid[i0:], b_mid[j0:])
    elif len(a_mid) * len(b_mid) > DIFFLIB_MAX_WORK:
        builder.delete(len(a_mid))  # long and repetitive (no unique anchors): difflib is quadratic here
        builder.insert(b_mid)
    elif a_mid and b_mid:
        matcher = difflib.SequenceMatcher(None, a_mid, b_mid, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                builder.keep(i2 - i1)
            else:
                builder.delete(i2 - i1)
                builder.insert(b_mid[j1:j2])
    else:
        builder.delete(len(a_mid))
        builder.insert(b_mid)
    builder.keep(suffix)


def diff_tokens(old: Sequence[int], new: Sequence[int]) -> list[TokenRun]:
    """An edit script from `old` to `new`, finding insertions and deletions anywhere.

    The common prefix and suffix are kept (O(n): a single edit costs nothing more); a long middle
    is split at unique token 8-grams common to both, and the pieces between go to difflib. A long
    middle without such anchors (highly repetitive lists) is replaced whole: still a valid script.
    """
    builder = _ScriptBuilder()
    _diff_into(builder, list(old), list(new))
    return builder.finish()


def validate_script(script: Sequence[TokenRun], old: Sequence[int], new: Sequence[int]) -> None:
    """ValueError unless `script` is in canonical form and transforms `old` into `new` exactly."""
    old, new = list(old), list(new)
    o = n = 0
    prev_op = ""
    for k, run in enumerate(script):
        where = f"run {k} ({run.op} old {run.old_start}:{run.old_end}, new {run.new_start}:{run.new_end})"
        if (run.old_start, run.new_start) != (o, n):
            raise ValueError(f"{where} does not start where run {k - 1} ended (old {o}, new {n})")
        if run.op == prev_op:
            raise ValueError(f"{where} repeats the op of the run before it: runs must be merged")
        old_len, new_len = run.old_end - run.old_start, run.new_end - run.new_start
        if run.op == "keep":
            if old_len <= 0 or new_len != old_len or run.ids:
                raise ValueError(f"{where} must cover equal, non-empty ranges and carry no ids")
            if old[o : run.old_end] != new[n : run.new_end]:
                raise ValueError(f"{where} keeps tokens that differ")
        elif run.op == "delete":
            if old_len <= 0 or new_len != 0 or run.ids or run.old_end > len(old):
                raise ValueError(f"{where} must delete a non-empty range of old tokens and nothing else")
        elif run.op == "insert":
            if old_len != 0 or new_len <= 0 or list(run.ids) != new[n : run.new_end]:
                raise ValueError(f"{where} must insert exactly new[{n}:{run.new_end}]")
        else:
            raise ValueError(f"{where}: unknown op")
        o, n, prev_op = run.old_end, run.new_end, run.op
    if (o, n) != (len(old), len(new)):
        raise ValueError(f"script ends at old {o}, new {n}; the lists have {len(old)} and {len(new)} tokens")


# --- incremental re-tokenization ---------------------------------------------------------------


@dataclass(frozen=True)
class _Region:
    """Where the text changed: [old_start, old_end) of the old text is new[new_start:new_end]."""

    old_start: int
    old_end: int
    new_start: int
    new_end: int

    def merge(self, later: _Region) -> _Region:
        return _Region(self.old_start, later.old_end, self.new_start, later.new_end)


@dataclass(frozen=True)
class _Window:
    """Old tokens [old_lo, old_hi) are replaced by these new tokens (offsets in the new text)."""

    region: _Region
    old_lo: int
    old_hi: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    chars: int


_MERGE_LEFT, _MERGE_RIGHT, _FALLBACK = "merge_left", "merge_right", "fallback"


def _start(offset: tuple[int, int]) -> int:
    return offset[0]


def _is_boundary(offsets: Sequence[tuple[int, int]], k: int) -> bool:
    """Whether a boundary precedes token k: no earlier token reaches past its start.

    Byte-level tokens that split one character share that character's span; positions inside
    such a character are never boundaries.
    """
    if k <= 0 or k >= len(offsets):
        return True
    return offsets[k - 1][0] < offsets[k][0] and offsets[k - 1][1] <= offsets[k][0]


def _boundary_index(offsets: Offsets, pos: int, text_len: int) -> int | None:
    """The index of the token starting at boundary `pos`, len(offsets) for the end, else None."""
    if pos == text_len:
        return len(offsets)
    k = bisect.bisect_left(offsets, pos, key=_start)
    if k < len(offsets) and offsets[k][0] == pos and _is_boundary(offsets, k):
        return k
    return None


def _window_start(offsets: Offsets, pos: int, margin: int, floor: int) -> int:
    """A boundary `margin` tokens before the token containing `pos`, not before `floor`."""
    k = bisect.bisect_right(offsets, pos, key=_start) - 1 - margin
    while k > 0 and not _is_boundary(offsets, k):
        k -= 1
    return max(offsets[k][0] if k > 0 else 0, floor)


def _window_end(offsets: Offsets, text_len: int, pos: int, margin: int, ceil: int) -> int:
    """A boundary `margin` tokens after the token at `pos`, not after `ceil`."""
    k = bisect.bisect_left(offsets, pos, key=_start) + margin
    while k < len(offsets) and not _is_boundary(offsets, k):
        k += 1
    return min(offsets[k][0] if k < len(offsets) else text_len, ceil)


def _agree(
    old: TokenizedText, i: int, ids: list[int], offsets: list[tuple[int, int]], j: int, shift: int, limit: int
) -> bool:
    """Whether SYNC_TOKENS window tokens from j equal old tokens from i, ending by `limit`."""
    if i + SYNC_TOKENS > len(old.ids) or j + SYNC_TOKENS > min(len(ids), limit):
        return False
    for t in range(SYNC_TOKENS):
        (os, oe), (ws, we) = old.offsets[i + t], offsets[j + t]
        if ids[j + t] != old.ids[i + t] or ws != os + shift or we != oe + shift:
            return False
    return True


def _left_sync(
    old: TokenizedText,
    ids: list[int],
    offsets: list[tuple[int, int]],
    edit_start: int,
    shift: int,
    floor: int,
) -> tuple[int, int] | None:
    """The first sync point (old index, window index) before `edit_start`, not before old token
    `floor`. The window's first token is never one: it lacks the context to its left."""
    for j in range(1, len(ids)):
        if offsets[j][1] > edit_start:
            break
        if not _is_boundary(offsets, j):
            continue
        i = _boundary_index(old.offsets, offsets[j][0] - shift, len(old.text))
        if i is not None and i >= floor:
            limit = bisect.bisect_right(offsets, edit_start, lo=j, key=lambda o: o[1])
            if _agree(old, i, ids, offsets, j, shift, limit):
                return i, j
    return None


def _right_sync(
    old: TokenizedText, ids: list[int], offsets: list[tuple[int, int]], edit_end: int, shift: int, j_min: int
) -> tuple[int, int] | None:
    """The first sync point (old index, window index) after `edit_end`. The window's last token is
    never part of one: the window cuts it off from the text to its right."""
    for j in range(j_min, len(ids) - SYNC_TOKENS):
        if offsets[j][0] < edit_end or not _is_boundary(offsets, j):
            continue
        i = _boundary_index(old.offsets, offsets[j][0] - shift, len(old.text))
        if i is not None and _agree(old, i, ids, offsets, j, shift, len(ids) - 1):
            return i, j
    return None


def _sync_window(
    tokenizer: PreTrainedTokenizerBase,
    old: TokenizedText,
    new_text: str,
    region: _Region,
    floor: tuple[int, int] | None,  # (char, old token index) after the previous window, if any
    ceil: int | None,  # where the next edit starts, if any
    budget: float,  # old characters the windows may still cover before falling back
    stats: TokenizeStats | None,
) -> _Window | str:
    shift_before = region.new_start - region.old_start
    shift_after = region.new_end - region.old_end
    old_len = len(old.text)
    margin_left = margin_right = MARGIN_TOKENS
    while True:
        start = _window_start(old.offsets, region.old_start, margin_left, floor[0] if floor else 0)
        end = _window_end(
            old.offsets, old_len, region.old_end, margin_right, old_len if ceil is None else ceil
        )
        chars = end - start  # old characters covered: the windows of one call never exceed the text
        if chars > budget:
            return _FALLBACK
        window = tokenize(tokenizer, new_text[start + shift_before : end + shift_after], stats)
        ids = list(window.ids)
        offsets = [(s + start + shift_before, e + start + shift_before) for s, e in window.offsets]

        # Only a window at the very start (end) of the text has nothing to sync with on that side.
        left: tuple[int, int] | None = (0, 0)
        if floor is not None or start > 0:
            left = _left_sync(old, ids, offsets, region.new_start, shift_before, floor[1] if floor else 0)
        right: tuple[int, int] | None = (len(old.ids), len(ids))
        if ceil is not None or end < old_len:
            j_min = left[1] if left is not None else len(ids)
            right = _right_sync(old, ids, offsets, region.new_end, shift_after, j_min)
        if left is not None and right is not None:
            (old_lo, j_lo), (old_hi, j_hi) = left, right
            return _Window(region, old_lo, old_hi, ids[j_lo:j_hi], offsets[j_lo:j_hi], chars)
        if left is None:
            if floor is not None and start <= floor[0]:
                return _MERGE_LEFT
            margin_left = max(2 * margin_left, 1)
        if right is None:
            if ceil is not None and end >= ceil:
                return _MERGE_RIGHT
            margin_right = max(2 * margin_right, 1)


def _regions(edits: list[TextEdit]) -> list[_Region]:
    regions: list[_Region] = []
    shift = 0
    for edit in edits:
        if edit.start == edit.end and not edit.text:
            continue
        start = edit.start + shift
        regions.append(_Region(edit.start, edit.end, start, start + len(edit.text)))
        shift += len(edit.text) - (edit.end - edit.start)
    return regions


def retokenize(
    tokenizer: PreTrainedTokenizerBase,
    old: TokenizedText,
    edits: Sequence[TextEdit],
    *,
    fallback_fraction: float = FALLBACK_FRACTION,
    stats: TokenizeStats | None = None,
) -> tuple[TokenizedText, list[TokenRun]]:
    """Tokenize `old.text` with `edits` applied, re-tokenizing only windows around the edits.

    Returns the new tokenization (equal to `tokenize(tokenizer, new_text)`) and the script from
    `old.ids` to the new ids. `fallback_fraction`: when the windows together exceed this fraction
    of the document, tokenize the whole new text and diff instead (`math.inf`: never). `stats`
    counts what went through the tokenizer.
    """
    ordered = _checked_edits(edits, len(old.text))
    new_text = apply_text_edits(old.text, ordered)
    pending = _regions(ordered)
    budget = fallback_fraction * len(old.text)
    windows: list[_Window] = []
    while pending:
        region = pending.pop(0)
        prev = windows[-1] if windows else None
        floor = (prev.region.old_end, prev.old_hi) if prev is not None else None
        ceil = pending[0].old_start if pending else None
        result = _sync_window(tokenizer, old, new_text, region, floor, ceil, budget, stats)
        if isinstance(result, _Window):
            windows.append(result)
            budget -= result.chars
        elif result == _MERGE_LEFT and prev is not None:  # redo the previous window with this edit
            windows.pop()
            budget += prev.chars
            pending.insert(0, prev.region.merge(region))
        elif result == _MERGE_RIGHT:
            pending[0] = region.merge(pending[0])
        else:
            new = tokenize(tokenizer, new_text, stats)
            return new, diff_tokens(old.ids, new.ids)

    builder = _ScriptBuilder()
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    cursor, shift = 0, 0
    for window in windows:
        shift = window.region.new_start - window.region.old_start
        builder.keep(window.old_lo - cursor)
        ids += old.ids[cursor : window.old_lo]
        offsets += [(s + shift, e + shift) for s, e in old.offsets[cursor : window.old_lo]]
        _diff_into(builder, list(old.ids[window.old_lo : window.old_hi]), window.ids)
        ids += window.ids
        offsets += window.offsets
        cursor, shift = window.old_hi, window.region.new_end - window.region.old_end
    builder.keep(len(old.ids) - cursor)
    ids += old.ids[cursor:]
    offsets += [(s + shift, e + shift) for s, e in old.offsets[cursor:]] if shift else old.offsets[cursor:]
    return TokenizedText(new_text, tuple(ids), tuple(offsets)), builder.finish()
