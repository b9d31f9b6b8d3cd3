"""ReusePlan: exact indices per reuse method, on hand-written edit scripts (no model)."""

from __future__ import annotations

import pytest

from splice.completion.pie_plan import REUSE_METHODS, ReusePlan, plan_reuse
from splice.completion.token_edits import TokenRun

OLD = [10, 11, 12, 13, 14, 15, 16, 17]
# replace old[3:5] (13, 14) by three tokens: new = 10 11 12 90 91 92 15 16 17
NEW = [10, 11, 12, 90, 91, 92, 15, 16, 17]
SCRIPT = [
    TokenRun("keep", 0, 3, 0, 3),
    TokenRun("delete", 3, 5, 3, 3),
    TokenRun("insert", 5, 5, 3, 6, (90, 91, 92)),
    TokenRun("keep", 5, 8, 6, 9),
]


def test_full_encodes_everything() -> None:
    plan = plan_reuse(OLD, NEW, SCRIPT, "full")
    assert plan.encode == tuple(range(9)) and plan.reused == 0


def test_prefix_reuses_only_the_common_prefix() -> None:
    plan = plan_reuse(OLD, NEW, SCRIPT, "prefix")
    assert plan.reuse_src == (0, 1, 2) and plan.reuse_dst == (0, 1, 2)
    assert plan.encode == (3, 4, 5, 6, 7, 8)


@pytest.mark.parametrize("method", ["pie", "naive"])
def test_pie_reuses_every_kept_token_but_the_last(method: str) -> None:
    plan = plan_reuse(OLD, NEW, SCRIPT, method)  # type: ignore[arg-type]
    assert plan.reuse_src == (0, 1, 2, 5, 6)
    assert plan.reuse_dst == (0, 1, 2, 6, 7)  # moved by +1
    assert plan.encode == (3, 4, 5, 8)  # the inserted run and the last token
    assert plan.rotate == (method == "pie")


def test_refresh_reencodes_the_first_k_after_each_edit() -> None:
    plan = plan_reuse(OLD, NEW, SCRIPT, "pie+refresh", refresh_first_k=2)
    assert plan.reuse_src == (0, 1, 2)  # 15, 16 refreshed, 17 is last
    assert plan.encode == (3, 4, 5, 6, 7, 8)
    # the leading keep run is before any edit: never refreshed
    assert plan_reuse(OLD, NEW, SCRIPT, "pie+refresh", refresh_first_k=1).reuse_src == (0, 1, 2, 6)


def test_edit_at_the_start_refreshes_the_first_run() -> None:
    new = [99, *OLD]
    script = [TokenRun("insert", 0, 0, 0, 1, (99,)), TokenRun("keep", 0, 8, 1, 9)]
    plan = plan_reuse(OLD, new, script, "pie+refresh", refresh_first_k=2)
    assert plan.encode == (0, 1, 2, 8)


def test_unchanged_sequence_encodes_nothing_when_logits_are_fresh() -> None:
    script = [TokenRun("keep", 0, 8, 0, 8)]
    assert plan_reuse(OLD, OLD, script, "pie", logits_fresh=True).encoded == 0
    assert plan_reuse(OLD, OLD, script, "pie", logits_fresh=False).encode == (7,)


def test_deletion_at_the_end_reencodes_only_the_new_last_token() -> None:
    new = OLD[:5]
    script = [TokenRun("keep", 0, 5, 0, 5), TokenRun("delete", 5, 8, 5, 5)]
    for method in ("pie", "prefix"):
        plan = plan_reuse(OLD, new, script, method)  # type: ignore[arg-type]
        assert plan.encode == (4,) and plan.reuse_src == (0, 1, 2, 3)


@pytest.mark.parametrize("method", REUSE_METHODS)
def test_every_plan_covers_each_new_position_once(method: str) -> None:
    plan = plan_reuse(OLD, NEW, SCRIPT, method)  # type: ignore[arg-type]
    assert sorted([*plan.reuse_dst, *plan.encode]) == list(range(len(NEW)))


def test_invalid_plans_and_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        ReusePlan(3, (0,), (0,), (0, 1, 2), True)
    with pytest.raises(ValueError, match="unknown reuse method"):
        plan_reuse(OLD, NEW, SCRIPT, "magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        plan_reuse(OLD, [], [], "pie")
