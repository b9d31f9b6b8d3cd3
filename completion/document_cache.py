"""Per-document KV caches with a memory budget and LRU eviction.

One `DocumentKV` per (tenant, document, model, adapter). The store never touches tensors beyond
asking their size: it is a plain ordered map, testable on CPU with any object that has
`nbytes`. A document that alone exceeds the budget is not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


@dataclass(frozen=True)
class DocumentKey:
    tenant: str
    document: str
    model: str
    adapter: str | None = None


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class DocumentCacheStore(Generic[T]):
    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[DocumentKey, T] = OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: DocumentKey) -> bool:
        return key in self._items

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: DocumentKey) -> T | None:
        item = self._items.get(key)
        if item is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return item

    def look(self, key: DocumentKey) -> T | None:
        """`key`'s item without counting a hit or refreshing its place in the LRU order."""
        return self._items.get(key)

    def put(self, key: DocumentKey, item: T) -> list[DocumentKey]:
        """Store `item` as the most recently used; returns the keys evicted to make room."""
        self.drop(key)
        size = item.nbytes
        evicted: list[DocumentKey] = []
        if size > self.budget_bytes:
            return evicted
        while self._items and self._bytes + size > self.budget_bytes:
            old_key, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
            evicted.append(old_key)
            self.stats.evictions += 1
        self._items[key] = item
        self._bytes += size
        self._sync()
        return evicted

    def drop(self, key: DocumentKey) -> bool:
        item = self._items.pop(key, None)
        if item is None:
            return False
        self._bytes -= item.nbytes
        self._sync()
        return True

    def lru_order(self) -> list[DocumentKey]:
        """Least recently used first."""
        return list(self._items)

    def _sync(self) -> None:
        self.stats.entries = len(self._items)
        self.stats.bytes = self._bytes
