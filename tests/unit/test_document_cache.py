"""DocumentCacheStore: LRU order, budget, eviction, oversize items (plain objects, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass

from splice.completion.document_cache import DocumentCacheStore, DocumentKey


@dataclass
class Blob:
    nbytes: int


def key(name: str) -> DocumentKey:
    return DocumentKey("tenant", name, "model")


def test_lru_eviction_within_budget() -> None:
    store: DocumentCacheStore[Blob] = DocumentCacheStore(100)
    assert store.put(key("a"), Blob(40)) == []
    assert store.put(key("b"), Blob(40)) == []
    assert store.get(key("a")) is not None  # a is now most recent
    assert store.put(key("c"), Blob(40)) == [key("b")]
    assert store.lru_order() == [key("a"), key("c")] and store.bytes == 80
    assert store.stats.evictions == 1 and store.stats.hits == 1


def test_replacing_an_entry_updates_the_byte_count() -> None:
    store: DocumentCacheStore[Blob] = DocumentCacheStore(100)
    store.put(key("a"), Blob(60))
    store.put(key("a"), Blob(30))
    assert store.bytes == 30 and len(store) == 1


def test_item_over_the_budget_is_not_kept_and_evicts_nothing() -> None:
    store: DocumentCacheStore[Blob] = DocumentCacheStore(100)
    store.put(key("a"), Blob(50))
    assert store.put(key("huge"), Blob(101)) == []
    assert key("huge") not in store and key("a") in store


def test_get_of_missing_key_counts_a_miss_and_drop_frees_bytes() -> None:
    store: DocumentCacheStore[Blob] = DocumentCacheStore(100)
    assert store.get(key("x")) is None and store.stats.misses == 1
    store.put(key("x"), Blob(10))
    assert store.drop(key("x")) and store.bytes == 0 and not store.drop(key("x"))
