"""Completion telemetry (view / select / dismiss) behind a small store interface.

In memory for now; a Redis stream implements the same protocol later.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
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


class EventStore(Protocol):
    def record(self, event: CompletionEvent) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def recent(self, limit: int = 100) -> list[CompletionEvent]: ...


class InMemoryEventStore:
    """Keeps the last `maxlen` events and all-time counts per type."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[CompletionEvent] = deque(maxlen=maxlen)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, event: CompletionEvent) -> None:
        with self._lock:
            self._events.append(event)
            self._counts[event.type] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def recent(self, limit: int = 100) -> list[CompletionEvent]:
        with self._lock:
            return list(self._events)[-limit:]


def new_event(
    type_: str, completion_id: str, choice_index: int, elapsed_ms: int | None, tenant: str
) -> CompletionEvent:
    return CompletionEvent(type_, completion_id, choice_index, elapsed_ms, tenant, time.time())
