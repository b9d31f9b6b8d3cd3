"""Completion telemetry (view / select / dismiss) behind a small store interface.

In memory by default; `redis_state.RedisEventStore` keeps them in a Redis stream per tenant.
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
    type_: str, completion_id: str, choice_index: int, elapsed_ms: int | None, tenant: str
) -> CompletionEvent:
    return CompletionEvent(type_, completion_id, choice_index, elapsed_ms, tenant, time.time())
