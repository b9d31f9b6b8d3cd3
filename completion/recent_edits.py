"""What the developer just did: a tenant's recent edits as line-level hunks, rendered as unified
diffs for the prompt's recent-edits slot.

The editor sends keystrokes; a prompt wants "renamed `timeout` to `timeout_s` in `def fetch(...)`",
not forty one-character inserts. Each change is reduced to the lines it touched (the common
leading and trailing lines of the text before and after are cut off), and a change that touches
the lines of the newest hunk of the same document is merged into it: the hunk keeps the lines as
they were before its first keystroke and takes the lines as they are now (typing then deleting a
word leaves no hunk at all). A change elsewhere, or in another document, starts a new hunk; the
oldest leave when there are more than `max_hunks`. A change that rewrites (nearly) every line of a
document is a new baseline, not an edit: its earlier hunks go and none is added.

The slot is rendered oldest first, so that a new edit grows the slot at its end, nearest the
document; when older hunks leave (the budget, `max_hunks`) the slot's start is rewritten, which
the document cache handles as any other edit (PIE).

State is per tenant and in memory (soft state, like the KV caches): a replica that restarts, or
an editor that reconnects to another replica, starts with no recent edits.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

_MAX_LINE = 240  # characters of one line shown in the slot
_MAX_LINES = 24  # lines of one side of a hunk shown in the slot


@dataclass(frozen=True)
class Hunk:
    uri: str
    start: int  # 0-based first line, in the document as it was after the hunk
    old: tuple[str, ...]  # the lines before
    new: tuple[str, ...]  # the lines after

    def render(self) -> str:
        """`@@ -a,n +a,m @@` and the lines (long lines and hunks cut, as a prompt can afford)."""

        def side(mark: str, lines: tuple[str, ...]) -> list[str]:
            shown = [mark + line[:_MAX_LINE] for line in lines[:_MAX_LINES]]
            if len(lines) > _MAX_LINES:
                shown.append(f"{mark}... ({len(lines) - _MAX_LINES} more lines)")
            return shown

        head = f"@@ -{self.start + 1},{len(self.old)} +{self.start + 1},{len(self.new)} @@"
        return "\n".join([head, *side("-", self.old), *side("+", self.new)]) + "\n"


REPLACED_ALL = 0.9  # a change that rewrites this share of a document's lines replaces it


def _replaces_all(before: list[str], after: list[str], a: int, b: int, c: int) -> bool:
    if min(len(before), len(after)) < 4:
        return False
    return b - a >= REPLACED_ALL * (len(before) - 1) and c - a >= REPLACED_ALL * (len(after) - 1)


def changed_lines(old: list[str], new: list[str]) -> tuple[int, int, int]:
    """(a, b, c): lines old[a:b] became new[a:c]; the lines around are the same.

    Binary searches over slice comparisons (list equality runs in C): an editor sends one
    change per keystroke, and a line-by-line Python loop took ~2 ms a keystroke in a
    400k-character file."""
    n, m = len(old), len(new)
    a = _longest(lambda i, j: old[i:j] == new[i:j], min(n, m))
    tail = _longest(lambda i, j: old[n - j : n - i] == new[m - j : m - i], min(n, m) - a)
    return a, n - tail, m - tail


def _longest(same: Callable[[int, int], bool], most: int) -> int:
    """The largest k <= most such that same(i, j) holds for every i < j <= k (the elements in
    [i, j) agree), where agreement holds up to some k and fails after it."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(lo, mid):  # [0, lo) is known to agree: compare only what is new
            lo = mid
        else:
            hi = mid - 1
    return lo


def _split(old: list[str], new: list[str], gap: int = 2) -> list[tuple[int, int, int, int]]:
    """The changed runs of one region, (i1, i2, j1, j2): old[i1:i2] became new[j1:j2]; runs apart
    by more than `gap` unchanged lines are separate hunks (a paste, a reformat)."""
    if len(old) + len(new) <= 6:
        return [(0, len(old), 0, len(new))]
    runs: list[tuple[int, int, int, int]] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if runs and i1 - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], i2, runs[-1][2], j2)
        else:
            runs.append((i1, i2, j1, j2))
    return runs


class RecentEdits:
    """One tenant's recent edits over its documents."""

    def __init__(self, max_hunks: int = 16, max_documents: int = 64) -> None:
        if max_hunks < 1 or max_documents < 1:
            raise ValueError("max_hunks and max_documents must be at least 1")
        self.hunks: deque[Hunk] = deque(maxlen=max_hunks)
        self._texts: OrderedDict[str, list[str]] = OrderedDict()  # the last text seen, per document
        self.max_documents = max_documents

    def open(self, uri: str, text: str) -> None:
        """The document's text as the editor has it now (no edit: the baseline for the next)."""
        self._texts[uri] = text.split("\n")
        self._texts.move_to_end(uri)
        while len(self._texts) > self.max_documents:
            self._texts.popitem(last=False)

    def close(self, uri: str) -> None:
        self._texts.pop(uri, None)  # its hunks stay: they are still what the developer did

    def change(self, uri: str, text: str) -> None:
        """The document's text after an edit."""
        before = self._texts.get(uri)
        if before is None:
            self.open(uri, text)
            return
        after = text.split("\n")
        self.open(uri, text)
        a, b, c = changed_lines(before, after)
        if b == a and c == a:
            return
        if _replaces_all(before, after, a, b, c):
            # a new text, not an edit (a paste over everything, a checkout): a new baseline; its
            # hunk would fill the slot with the file and swallow the keystrokes that follow
            self.hunks = deque((h for h in self.hunks if h.uri != uri), maxlen=self.hunks.maxlen)
            return
        last = self.hunks[-1] if self.hunks else None
        if last is not None and last.uri == uri and a <= last.start + len(last.new) and b >= last.start:
            # the newest hunk's lines again: one hunk from its first keystroke to now
            end = last.start + len(last.new)
            u0, u1 = min(a, last.start), max(b, end)
            old = (*before[u0 : last.start], *last.old, *before[end:u1])
            new = tuple(after[u0 : u1 + (c - b)])
            self.hunks.pop()
            if old != new:  # only the lines that differ (a line typed above one kept)
                x, y, z = changed_lines(list(old), list(new))
                self.hunks.append(Hunk(uri, u0 + x, old[x:y], new[x:z]))
            return
        for i1, i2, j1, j2 in _split(before[a:b], after[a:c]):
            self.hunks.append(
                Hunk(uri, a + j1, tuple(before[a + i1 : a + i2]), tuple(after[a + j1 : a + j2]))
            )

    def render(
        self, budget_tokens: int, count_tokens: Callable[[str], int], path_of: Callable[[str], str]
    ) -> str:
        """The newest hunks that fit `budget_tokens`, oldest first, as unified diffs (one
        `--- a/PATH` / `+++ b/PATH` header per run of hunks of one document); '' without any."""
        if budget_tokens <= 0 or not self.hunks:
            return ""
        chosen: list[Hunk] = []
        used = 0
        for hunk in reversed(self.hunks):
            cost = count_tokens(hunk.render()) + 8  # a header, when the document changes
            if used + cost > budget_tokens:
                break
            chosen.append(hunk)
            used += cost
        parts: list[str] = []
        current = None
        for hunk in reversed(chosen):
            if hunk.uri != current:
                path = path_of(hunk.uri)
                parts.append(f"--- a/{path}\n+++ b/{path}\n")
                current = hunk.uri
            parts.append(hunk.render())
        return "".join(parts)


class TenantEdits:
    """RecentEdits per tenant (the most recently active `max_tenants`)."""

    def __init__(self, max_hunks: int = 16, max_tenants: int = 1024) -> None:
        self.max_hunks = max_hunks
        self.max_tenants = max_tenants
        self._tenants: OrderedDict[str, RecentEdits] = OrderedDict()

    def of(self, tenant: str) -> RecentEdits:
        edits = self._tenants.get(tenant)
        if edits is None:
            edits = self._tenants[tenant] = RecentEdits(self.max_hunks)
            while len(self._tenants) > self.max_tenants:
                self._tenants.popitem(last=False)
        self._tenants.move_to_end(tenant)
        return edits

    def get(self, tenant: str) -> RecentEdits | None:
        return self._tenants.get(tenant)
