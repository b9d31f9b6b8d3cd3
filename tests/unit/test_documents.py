"""The editor text store: UTF-16 positions, strict versions, all-or-nothing changes."""

from __future__ import annotations

import asyncio
import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.assistant.documents import (
    Change,
    DocumentTooLarge,
    InMemoryDocumentStore,
    InvalidText,
    OutOfRange,
    Position,
    UnknownDocument,
    VersionGap,
    apply_changes,
    line_starts,
    offset_at,
    position_at,
)
from splice.assistant.redis_state import RedisDocumentStore
from splice_testkit.editor import ALPHABET, EditorDocument, lsp_position


class SyncStore:
    """A document store's coroutines run to completion on one event loop (the tests are sync)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store, self.loop = store, loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., SyncStore]]:
    """Stores of both kinds: in memory, and in the real Redis of SPLICE_TEST_REDIS_URL (under a
    key prefix of their own, deleted afterwards)."""
    loop = asyncio.new_event_loop()
    client = None
    prefix = f"splice-test-{uuid.uuid4().hex}:"

    def make(max_chars: int = 4 << 20) -> SyncStore:
        nonlocal client
        if request.param == "memory":
            return SyncStore(InMemoryDocumentStore(max_chars=max_chars), loop)
        url = os.environ.get("SPLICE_TEST_REDIS_URL")
        if not url:
            pytest.skip("SPLICE_TEST_REDIS_URL is not set (CI starts redis-server and sets it)")
        client = aioredis.Redis.from_url(url, decode_responses=True)
        return SyncStore(RedisDocumentStore(client, max_chars=max_chars, prefix=prefix), loop)

    yield make
    if client is not None:
        keys = loop.run_until_complete(client.keys(prefix + "*"))
        if keys:
            loop.run_until_complete(client.delete(*keys))
        loop.run_until_complete(client.aclose())
    loop.close()


def P(line: int, character: int) -> Position:
    return Position(line, character)


def test_utf16_positions_count_surrogate_pairs_as_two_units() -> None:
    text = "a😀b\nx"
    assert offset_at(text, P(0, 0)) == 0
    assert offset_at(text, P(0, 1)) == 1
    assert offset_at(text, P(0, 3)) == 2  # after the emoji: 1 + 2 units
    assert offset_at(text, P(0, 4)) == 3
    assert offset_at(text, P(1, 1)) == 5
    with pytest.raises(OutOfRange, match="surrogate pair"):
        offset_at(text, P(0, 2))


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_every_line_break_style_ends_a_line(eol: str) -> None:
    text = f"ab{eol}cd{eol}"
    assert offset_at(text, P(1, 0)) == 2 + len(eol)
    assert offset_at(text, P(2, 0)) == len(text)
    with pytest.raises(OutOfRange, match="past the end of line 0"):
        offset_at(text, P(0, 3))  # the line break is not a character of the line
    with pytest.raises(OutOfRange, match="line 3 is past the end"):
        offset_at(text, P(3, 0))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "\n", "\r", "😀", "é", "\u2028", "\x0b"]), max_size=40))
def test_line_starts_end_lines_at_lf_crlf_and_cr_only(text: str) -> None:
    # (the reference: a regular expression over the three LSP line breaks; U+2028 and VT are not ones)
    assert line_starts(text) == [0, *(m.end() for m in re.finditer(r"\r\n|\r|\n", text))]


def test_position_at_inverts_offset_at() -> None:
    text = "x😀\r\ny\rz\n"
    for off in range(len(text) + 1):
        if text[off - 1 : off + 1] == "\r\n":
            continue
        assert offset_at(text, position_at(text, off)) == off


def test_changes_apply_in_order_each_against_the_previous_text() -> None:
    # Two inserts at line 0: the second one's position already counts the first insert.
    text, edits = apply_changes("abc", [Change(P(0, 1), P(0, 1), "X"), Change(P(0, 3), P(0, 3), "Y")])
    assert text == "aXbYc"
    assert [(e.start, e.end, e.text) for e in edits] == [(1, 1, "X"), (3, 3, "Y")]


def test_full_content_change_replaces_everything() -> None:
    text, _ = apply_changes("old\ntext", [Change(None, None, "new"), Change(P(0, 3), P(0, 3), "!")])
    assert text == "new!"


def test_refused_multi_range_change_leaves_the_document_untouched(
    make_store: Callable[..., SyncStore],
) -> None:
    store = make_store()
    store.open("t", "u", "python", 1, "abc\n")
    with pytest.raises(OutOfRange):
        store.change("t", "u", 2, [Change(P(0, 0), P(0, 0), "ok"), Change(P(5, 0), P(5, 0), "bad")])
    doc = store.get("t", "u")
    assert (doc.text, doc.version) == ("abc\n", 1)
    with pytest.raises(OutOfRange, match="before its start"):
        store.change("t", "u", 2, [Change(P(0, 2), P(0, 1), "")])


def test_versions_apply_strictly_in_order(make_store: Callable[..., SyncStore]) -> None:
    store = make_store()
    store.open("t", "u", "python", 7, "")
    with pytest.raises(VersionGap) as gap:
        store.change("t", "u", 9, [Change(P(0, 0), P(0, 0), "x")])
    assert gap.value.expected == 8
    with pytest.raises(VersionGap):
        store.change("t", "u", 7, [Change(P(0, 0), P(0, 0), "x")])  # a replay is refused too
    doc, _ = store.change("t", "u", 8, [Change(P(0, 0), P(0, 0), "x")])
    assert (doc.text, doc.version) == ("x", 8)


def test_the_last_removed_text_is_kept_for_drafting(make_store: Callable[..., SyncStore]) -> None:
    store = make_store()
    store.open("t", "u", "python", 1, "a = 1\nreturn a + b\nz\n")
    doc, _ = store.change("t", "u", 2, [Change(P(1, 0), P(2, 0), "")])  # delete a line
    assert doc.removed == "return a + b\n"
    doc, _ = store.change("t", "u", 3, [Change(P(1, 0), P(1, 0), "ret")])  # type: removes nothing
    assert doc.removed == "return a + b\n"
    # several changes in one message: each range refers to the text after the previous change
    doc, _ = store.change("t", "u", 4, [Change(P(0, 0), P(0, 0), "# c\n"), Change(P(1, 0), P(1, 1), "b")])
    assert doc.text.startswith("# c\nb = 1\n") and doc.removed == "a"
    doc, _ = store.change("t", "u", 5, [Change(None, None, "new")])  # a full replace does not count
    assert doc.removed == "a"


def test_tenants_are_isolated_and_documents_are_reference_counted(
    make_store: Callable[..., SyncStore],
) -> None:
    store = make_store()
    store.open("a", "file:///x.py", "python", 1, "team a")
    with pytest.raises(UnknownDocument):
        store.get("b", "file:///x.py")
    store.open("a", "file:///x.py", "python", 1, "team a")  # a second editor window
    store.open("a", "file:///x.py", "python", 2, "resync", new_holder=False)
    store.close("a", "file:///x.py")
    assert store.get("a", "file:///x.py").text == "resync"
    store.close("a", "file:///x.py")
    with pytest.raises(UnknownDocument):
        store.get("a", "file:///x.py")


def test_lone_surrogates_and_oversized_documents_are_refused(make_store: Callable[..., SyncStore]) -> None:
    store = make_store(max_chars=10)
    with pytest.raises(InvalidText, match="lone surrogate"):
        store.open("t", "u", "python", 1, "a\ud800b")
    with pytest.raises(DocumentTooLarge):
        store.open("t", "u", "python", 1, "x" * 11)
    store.open("t", "u", "python", 1, "x" * 10)
    with pytest.raises(DocumentTooLarge):
        store.change("t", "u", 2, [Change(P(0, 0), P(0, 0), "y")])
    assert store.get("t", "u").version == 1


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), start=st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join))
def test_random_editor_changes_reproduce_the_editors_text(seed: int, start: str) -> None:
    rng = random.Random(seed)
    editor = EditorDocument("file:///fuzz.py", start)
    loop = asyncio.new_event_loop()
    store = SyncStore(InMemoryDocumentStore(), loop)
    store.open("t", editor.uri, "python", editor.version, editor.text)
    for _ in range(20):
        msg = editor.random_change(rng)
        changes = [
            Change(
                P(c["range"]["start"]["line"], c["range"]["start"]["character"]),
                P(c["range"]["end"]["line"], c["range"]["end"]["character"]),
                c["text"],
            )
            for c in msg["changes"]
        ]
        doc, _ = store.change("t", editor.uri, msg["version"], changes)
        assert doc.text == editor.text
        assert doc.version == editor.version
    loop.close()


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
def test_two_replicas_never_apply_one_version_twice(make_store: Callable[..., SyncStore]) -> None:
    """Two stores on one Redis (two replicas) race 200 times for the same next version: exactly
    one applies it, the other gets the version gap, and the text holds each winner's edit once."""
    first = make_store()
    second = SyncStore(RedisDocumentStore(first.store.client, prefix=first.store.prefix), first.loop)
    first.open("t", "u", "python", 1, "")

    async def race(version: int) -> list[object]:
        edits = [
            store.store.change("t", "u", version, [Change(P(0, 0), P(0, 0), tag)])
            for store, tag in ((first, "a"), (second, "b"))
        ]
        return await asyncio.gather(*edits, return_exceptions=True)

    winners = []
    for version in range(2, 202):
        outcomes = first.loop.run_until_complete(race(version))
        applied = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, VersionGap)]
        assert len(applied) == 1 and len(refused) == 1, outcomes
        winners.append(applied[0][0].text[0])  # type: ignore[index]
    doc = first.get("t", "u")
    assert doc.version == 201
    assert doc.text == "".join(reversed(winners))


def test_the_test_editor_positions_agree_with_a_hand_count() -> None:
    assert lsp_position("a😀\r\nb", 2) == {"line": 0, "character": 3}
    assert lsp_position("a😀\r\nb", 4) == {"line": 1, "character": 0}
