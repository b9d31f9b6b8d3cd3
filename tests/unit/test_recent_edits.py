"""Recent edits: keystrokes merge into line-level hunks, an undone edit leaves nothing, edits
elsewhere start new hunks, and the slot renders the newest hunks that fit, oldest first."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from splice.completion.recent_edits import RecentEdits, TenantEdits, changed_lines

BASE = "def fetch(url, timeout):\n    return get(url, timeout)\n\n\ndef other():\n    pass\n"


def _type(edits: RecentEdits, uri: str, text: str, at: int, typed: str) -> str:
    """Type `typed` one character at a time at offset `at`; the final text."""
    for i, ch in enumerate(typed):
        text = text[: at + i] + ch + text[at + i :]
        edits.change(uri, text)
    return text


@given(
    st.lists(st.sampled_from(["a", "b", "", "c d"]), max_size=8),
    st.lists(st.sampled_from(["a", "x", ""]), max_size=8),
)
def test_changed_lines_rebuilds_the_new_text(old: list[str], new: list[str]) -> None:
    a, b, c = changed_lines(old, new)
    assert old[:a] + new[a:c] + old[b:] == new
    assert old[:a] == new[:a] and old[b:] == new[c:]


def test_keystrokes_merge_into_one_line_hunk() -> None:
    edits = RecentEdits()
    edits.open("file:///p/a.py", BASE)
    at = BASE.index("timeout") + len("timeout")
    text = _type(edits, "file:///p/a.py", BASE, at, "_s")
    at2 = text.index("timeout)") + len("timeout")
    text = _type(edits, "file:///p/a.py", text, at2, "_s")
    assert len(edits.hunks) == 1
    hunk = edits.hunks[0]
    assert hunk.start == 0
    assert hunk.old == ("def fetch(url, timeout):", "    return get(url, timeout)")
    assert hunk.new == ("def fetch(url, timeout_s):", "    return get(url, timeout_s)")
    diff = edits.render(200, len, lambda uri: uri.rsplit("/", 1)[-1])
    assert diff == (
        "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n"
        "-def fetch(url, timeout):\n-    return get(url, timeout)\n"
        "+def fetch(url, timeout_s):\n+    return get(url, timeout_s)\n"
    )


def test_an_undone_edit_leaves_no_hunk_and_a_new_line_is_one_hunk() -> None:
    edits = RecentEdits()
    edits.open("u", BASE)
    at = BASE.index("pass")
    text = _type(edits, "u", BASE, at, "xy")
    text = text[:at] + text[at + 2 :]  # deleted again
    edits.change("u", text)
    assert text == BASE and list(edits.hunks) == []
    end = BASE.index("\n") + 1
    _type(edits, "u", BASE, end, "    check(url)\n")
    assert [(h.old, h.new) for h in edits.hunks] == [((), ("    check(url)",))]


def test_edits_elsewhere_and_in_other_documents_start_new_hunks_newest_kept() -> None:
    edits = RecentEdits(max_hunks=3)
    edits.open("a", BASE)
    edits.open("b", BASE)
    text_a = _type(edits, "a", BASE, 0, "# top\n")
    text_b = _type(edits, "b", BASE, 0, "import os\n")
    _type(edits, "a", text_a, len(text_a), "# end\n")  # same document, far from its last hunk
    assert [h.uri for h in edits.hunks] == ["a", "b", "a"]
    _type(edits, "b", text_b, len(text_b), "x = 1\n")
    assert len(edits.hunks) == 3 and edits.hunks[0].uri == "b"  # the oldest left
    render = edits.render(10_000, len, str)
    assert render.count("--- a/") == 3 and render.index("import os") < render.index("# end")
    # a small budget keeps the newest hunks only, still oldest first
    newest = edits.hunks[-1].render()
    small = edits.render(len(newest) + 8, len, str)
    assert "x = 1" in small and "# end" not in small
    assert edits.render(0, len, str) == ""


def test_an_unknown_document_is_a_baseline_and_tenants_are_apart() -> None:
    tenants = TenantEdits(max_tenants=2)
    tenants.of("t1").change("u", BASE)  # first sight: no hunk
    assert list(tenants.of("t1").hunks) == []
    _type(tenants.of("t1"), "u", BASE, 0, "z")
    assert len(tenants.of("t1").hunks) == 1 and list(tenants.of("t2").hunks) == []
    tenants.of("t3")
    assert tenants.get("t1") is None  # the least recently active tenant left


def test_one_change_far_apart_is_several_hunks() -> None:
    edits = RecentEdits()
    lines = [f"line {i}" for i in range(30)]
    edits.open("u", "\n".join(lines))
    changed = list(lines)
    changed[3] = "LINE 3"
    changed[20:22] = ["new a", "new b", "new c"]
    edits.change("u", "\n".join(changed))  # one change message (a paste, a formatter)
    assert [(h.start, h.old, h.new) for h in edits.hunks] == [
        (3, ("line 3",), ("LINE 3",)),
        (20, ("line 20", "line 21"), ("new a", "new b", "new c")),
    ]


def test_replacing_the_whole_text_is_a_new_baseline_not_an_edit() -> None:
    edits = RecentEdits()
    edits.open("a.py", BASE)
    text = _type(edits, "a.py", BASE, BASE.index("timeout"), "t_")
    assert len(edits.hunks) == 1
    other = "import json\n\n\ndef summarize(orders):\n    count = 0\n    return count\n"
    edits.change("a.py", other)  # the editor's whole text replaced (a paste, a checkout)
    assert list(edits.hunks) == []
    renamed = other.replace("count = 0", "total = 0")
    edits.change("a.py", renamed)  # the next keystrokes are an edit of the new text, shown alone
    assert [(h.old, h.new) for h in edits.hunks] == [(("    count = 0",), ("    total = 0",))]
    assert text != renamed
    # a small document edited on most of its lines is still an edit
    small = RecentEdits()
    small.open("b.py", "x = 1\ny = 2\n")
    small.change("b.py", "x = 10\ny = 20\n")
    assert len(small.hunks) == 1


def test_changed_lines_finds_the_longest_common_head_and_tail() -> None:
    def by_hand(old: list[str], new: list[str]) -> tuple[int, int, int]:
        n, a = min(len(old), len(new)), 0
        while a < n and old[a] == new[a]:
            a += 1
        tail = 0
        while tail < n - a and old[-1 - tail] == new[-1 - tail]:
            tail += 1
        return a, len(old) - tail, len(new) - tail

    rng = random.Random(0)
    for _ in range(2000):
        old = [rng.choice("ab") for _ in range(rng.randint(0, 9))]
        new = [rng.choice("ab") for _ in range(rng.randint(0, 9))]
        assert changed_lines(old, new) == by_hand(old, new), (old, new)
