"""What to re-encode after an edit: a pure plan over token indices (no tensors, no model).

Given the cached token sequence, the new one, and the token edit script between them, a
`ReusePlan` says which new positions take their KV from which old positions (and by how much
their position moved), and which new positions must be encoded by the model. The runner
(`splice.completion.pie`) executes it; this module only decides, so every reuse method is
testable on CPU with exact index assertions.

Methods (the benchmark compares them in one run):

- ``full``: reuse nothing; encode every token.
- ``prefix``: reuse the longest common prefix only (what vLLM / SGLang prefix caches do).
- ``naive``: reuse every kept token as it is, positions NOT fixed (the wrong baseline).
- ``pie``: reuse every kept token, its key re-rotated to its new position (Positional Integrity
  Encoding, He et al., ICLR 2025).
- ``pie+refresh``: PIE, and additionally re-encode the first `refresh_first_k` kept tokens after
  each edit (the tokens whose context changed most).

Every method re-encodes the last token, so decoding starts from fresh logits, unless the
sequence did not change at all and the cached logits are still valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from splice.completion.token_edits import TokenRun

ReuseMethod = Literal["full", "prefix", "naive", "pie", "pie+refresh"]
REUSE_METHODS: tuple[ReuseMethod, ...] = ("full", "prefix", "naive", "pie", "pie+refresh")


@dataclass(frozen=True)
class ReusePlan:
    new_length: int
    reuse_src: tuple[int, ...]  # old indices whose KV is reused, in new order
    reuse_dst: tuple[int, ...]  # the new index of each reused token
    encode: tuple[int, ...]  # new indices to run through the model, ascending
    rotate: bool  # re-rotate reused keys to their new positions (False only for "naive")
    refreshed: int = 0  # kept tokens re-encoded anyway (pie+refresh), a subset of `encode`

    @property
    def reused(self) -> int:
        return len(self.reuse_src)

    @property
    def encoded(self) -> int:
        return len(self.encode)

    def __post_init__(self) -> None:
        if len(self.reuse_src) != len(self.reuse_dst):
            raise ValueError("reuse_src and reuse_dst differ in length")
        covered = sorted([*self.reuse_dst, *self.encode])
        if covered != list(range(self.new_length)):
            raise ValueError("a plan must cover every new position exactly once")


def common_prefix(old: Sequence[int], new: Sequence[int]) -> int:
    n = min(len(old), len(new))
    i = 0
    while i < n and old[i] == new[i]:
        i += 1
    return i


def plan_reuse(
    old: Sequence[int],
    new: Sequence[int],
    script: Sequence[TokenRun],
    method: ReuseMethod,
    *,
    refresh_first_k: int = 0,
    logits_fresh: bool = False,
) -> ReusePlan:
    """Decide what to reuse and what to encode for `method` (see the module docstring).

    `script` transforms `old` into `new` (see `splice.completion.token_edits`). `logits_fresh`:
    the cache holds the logits after its last token, so an unchanged sequence encodes nothing.
    """
    if method not in REUSE_METHODS:
        raise ValueError(f"unknown reuse method {method!r}; choose from {', '.join(REUSE_METHODS)}")
    n = len(new)
    if n == 0:
        raise ValueError("cannot plan for an empty token sequence")
    if method == "full" or not old:
        return ReusePlan(n, (), (), tuple(range(n)), True)
    if list(old) == list(new) and logits_fresh:
        return ReusePlan(n, tuple(range(n)), tuple(range(n)), (), True)

    pairs: list[tuple[int, int]] = []  # (old index, new index) of kept tokens
    refreshed = 0
    if method == "prefix":
        p = common_prefix(old, new)
        pairs = [(i, i) for i in range(p)]
    else:
        refresh = refresh_first_k if method == "pie+refresh" else 0
        first_run = True
        for run in script:
            if run.op != "keep":
                continue
            # tokens right after an edit saw a changed context: refresh the first k of them
            skip = 0 if (first_run and run.old_start == 0 and run.new_start == 0) else refresh
            first_run = False
            for offset in range(run.new_end - run.new_start):
                if offset < skip:
                    refreshed += 1
                    continue
                pairs.append((run.old_start + offset, run.new_start + offset))
    # the last token is always re-encoded: decoding needs logits that saw the whole edit
    pairs = [(o, d) for o, d in pairs if d != n - 1]
    reused_dst = {d for _, d in pairs}
    encode = tuple(i for i in range(n) if i not in reused_dst)
    return ReusePlan(
        new_length=n,
        reuse_src=tuple(o for o, _ in pairs),
        reuse_dst=tuple(d for _, d in pairs),
        encode=encode,
        rotate=method != "naive",
        refreshed=refreshed,
    )
