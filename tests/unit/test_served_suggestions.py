"""Each file's latest suggestion, kept so the next completion can draft the rest of it while the
user types it through (`ServedCompletions.expected`): only where the text before the cursor is
the text it was made for plus its first characters, and only for the tenant it was served to."""

from __future__ import annotations

from splice.assistant.events import ServedCompletions

PREFIX = "def area(w, h):\n    return "
SUGGESTION = "w * h"


def served() -> ServedCompletions:
    s = ServedCompletions()
    s.remember("team-a", "c1", "file:///a.py", PREFIX, "\n", SUGGESTION)
    return s


def test_the_rest_of_a_suggestion_typed_through_is_expected() -> None:
    s = served()
    assert s.expected("team-a", "file:///a.py", PREFIX) == SUGGESTION  # asked again at the same place
    assert s.expected("team-a", "file:///a.py", PREFIX + "w ") == "* h"
    assert s.expected("team-a", "file:///a.py", PREFIX + "w * h") == ""  # typed whole: nothing left


def test_no_suggestion_where_it_no_longer_fits() -> None:
    s = served()
    assert s.expected("team-a", "file:///a.py", PREFIX + "h") == ""  # typed something else
    assert s.expected("team-a", "file:///a.py", PREFIX.replace("area", "size") + "w") == ""  # edited
    assert s.expected("team-a", "file:///a.py", PREFIX[:-3]) == ""  # the cursor moved back
    assert s.expected("team-a", "file:///b.py", PREFIX) == ""  # another file
    assert s.expected("team-a", None, PREFIX) == ""
    assert s.expected("team-b", "file:///a.py", PREFIX) == ""  # another tenant never sees it


def test_the_latest_suggestion_of_a_file_wins_and_memory_is_bounded() -> None:
    s = served()
    s.remember("team-a", "c2", "file:///a.py", PREFIX + "w ", "\n", "* h * d")
    assert s.expected("team-a", "file:///a.py", PREFIX + "w * ") == "h * d"
    s.remember("team-a", "c3", "file:///a.py", PREFIX, "\n", "")  # nothing shown: the last one stays
    assert s.expected("team-a", "file:///a.py", PREFIX + "w * ") == "h * d"
    small = ServedCompletions(capacity=2)
    for n in range(3):
        small.remember("t", f"c{n}", f"file:///{n}.py", PREFIX, "", SUGGESTION)
    assert small.expected("t", "file:///0.py", PREFIX) == ""  # the oldest file was forgotten
    assert small.expected("t", "file:///2.py", PREFIX) == SUGGESTION
