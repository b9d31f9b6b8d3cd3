"""Completion telemetry (view / select / dismiss) behind a small store interface.

In memory by default; `redis_state.RedisEventStore` keeps them in a Redis stream per tenant.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CompletionEvent:
    type: str
    completion_id: str
    choice_index: int
    elapsed_ms: int | None
    tenant: str
    at: float
    # on `select`: what was accepted, in the document it was accepted in (training data for the
    # tenant's fine-tunes): {filepath, prefix, suffix, text}
    accepted: dict[str, str] | None = None


class EventStore(Protocol):
    async def record(self, event: CompletionEvent) -> None: ...
    async def counts(self) -> dict[str, int]: ...
    async def recent(self, tenant: str, limit: int = 100) -> list[CompletionEvent]: ...


class InMemoryEventStore:
    """Keeps the last `maxlen` events and all-time counts per type."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[CompletionEvent] = deque(maxlen=maxlen)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def record(self, event: CompletionEvent) -> None:
        with self._lock:
            self._events.append(event)
            self._counts[event.type] += 1

    async def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    async def recent(self, tenant: str, limit: int = 100) -> list[CompletionEvent]:
        """`tenant`'s last `limit` events, oldest first."""
        with self._lock:
            return [e for e in self._events if e.tenant == tenant][-limit:]


def new_event(
    type_: str,
    completion_id: str,
    choice_index: int,
    elapsed_ms: int | None,
    tenant: str,
    accepted: dict[str, str] | None = None,
) -> CompletionEvent:
    return CompletionEvent(type_, completion_id, choice_index, elapsed_ms, tenant, time.time(), accepted)


class ServedCompletions:
    """The last `capacity` completions served, per (tenant, completion id), with the document around
    them, so that a `select` event can record what was accepted where; and each file's latest
    suggestion, per (tenant, file), so that the next completion there can draft the rest of it
    while the user types it through (`expected`). Bounded, in memory: a select for a completion
    served by another replica or long ago records no text, and drafts nothing there."""

    PREFIX_CHARS = 6000
    SUFFIX_CHARS = 3000
    ANCHOR_CHARS = 256  # the text before a suggestion's cursor that must be unchanged to draft it

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._served: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        # (tenant, file) -> (cursor offset, the text before it (ANCHOR_CHARS), the suggestion)
        self._latest: OrderedDict[tuple[str, str], tuple[int, str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, tenant: str, completion_id: str, filepath: str | None, prefix: str, suffix: str,
                 text: str) -> None:  # fmt: skip
        if not text or not filepath:
            return
        entry = {
            "filepath": filepath,
            "prefix": prefix[-self.PREFIX_CHARS :],
            "suffix": suffix[: self.SUFFIX_CHARS],
            "text": text,
        }
        with self._lock:
            self._served[(tenant, completion_id)] = entry
            self._served.move_to_end((tenant, completion_id))
            self._latest[(tenant, filepath)] = (len(prefix), prefix[-self.ANCHOR_CHARS :], text)
            self._latest.move_to_end((tenant, filepath))
            for table in (self._served, self._latest):
                while len(table) > self.capacity:
                    table.popitem(last=False)

    def expected(self, tenant: str, filepath: str | None, prefix: str) -> str:
        """The rest of `tenant`'s latest suggestion in `filepath` if the text before the cursor is
        the text it was made for plus its first characters (typed through), else ""."""
        if not filepath:
            return ""
        with self._lock:
            latest = self._latest.get((tenant, filepath))
        if latest is None:
            return ""
        offset, anchor, text = latest
        typed = prefix[offset:]
        if len(prefix) < offset or len(typed) >= len(text) or not text.startswith(typed):
            return ""
        if not prefix[:offset].endswith(anchor):
            return ""
        return text[len(typed) :]

    def accepted(self, tenant: str, completion_id: str) -> dict[str, str] | None:
        with self._lock:
            return self._served.get((tenant, completion_id))
