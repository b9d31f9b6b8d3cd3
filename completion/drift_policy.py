"""Drift policies: what `pie+refresh` re-encodes beyond the edited tokens, per model family.

PIE fixes the positions of reused keys, not their content (see `splice.completion.drift` for
the measurements). A policy says how much of that stale content to refresh after an edit:

- ``first_k``: the first k kept tokens after each edit (their context changed most; a window
  whose start moved gets its new head, the attention sink, re-encoded the same way);
- ``probe_ratio`` / ``probe_threshold``: CacheBlend-style selection. A probe re-runs layers
  0..``probe_layer`` over the tokens from the first change on (the cost is counted in
  `encoded` tokens as token-layers / layers) and re-encodes the kept tokens whose keys deviate
  most from fresh ones there: the top ``probe_ratio`` of them, and every one above
  ``probe_threshold``;
- ``full_bound``: when the probe's mean deviation of the tokens that would stay stale exceeds it,
  the cache is thrown away and the prompt encoded in full (a forced full re-encode).

Defaults are per model family (`FAMILY_POLICIES`, keyed by the transformers `model_type`),
chosen from `splice bench edits` on real edit histories; a family without measurements gets
`GENERIC`, the most conservative. Settings override single fields (`SPLICE_REFRESH_*`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class DriftPolicy:
    first_k: int = 8
    probe_ratio: float = 0.0
    probe_threshold: float = 0.0  # 0: off
    probe_layer: int = 1
    full_bound: float = 0.0  # 0: never force a full re-encode

    def __post_init__(self) -> None:
        if self.first_k < 0:
            raise ValueError("refresh first_k must be >= 0")
        if not 0.0 <= self.probe_ratio <= 1.0:
            raise ValueError("refresh probe_ratio must be in [0, 1]")
        if not (self.probe_threshold >= 0.0 and math.isfinite(self.probe_threshold)):
            raise ValueError("refresh probe_threshold must be a finite number >= 0")
        if self.probe_layer < 1:
            raise ValueError("refresh probe_layer must be >= 1 (layer 0's keys are exact after PIE)")
        if not (self.full_bound >= 0.0 and math.isfinite(self.full_bound)):
            raise ValueError("drift full_bound must be a finite number >= 0")

    @property
    def probes(self) -> bool:
        """Whether the policy runs the deviation probe."""
        return self.probe_ratio > 0 or self.probe_threshold > 0 or self.full_bound > 0

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


# The generic policy for families nobody measured: also the CacheBlend probe, which lowered the
# next-token KL to full further on both measured families, at ~1.5x plain PIE's encoded tokens.
GENERIC = DriftPolicy(first_k=8, probe_ratio=0.1)

# Measured with `splice bench edits` (README, "Drift"): on both families re-encoding the first 8
# kept tokens after each edit removes almost all of plain PIE's next-token KL to full (Qwen2.5-Coder:
# 4.77 -> 0.009 nats; SmolLM2: 0.20 -> 0.004) for ~1.1-1.3x its tokens; the probe halves what is
# left at a cost in time to first token, and the stale-deviation bound did not predict the steps
# whose completion differed, so neither is on by default.
FAMILY_POLICIES: dict[str, DriftPolicy] = {
    "llama": DriftPolicy(first_k=8),
    "qwen2": DriftPolicy(first_k=8),
}


def policy_for(model_type: str | None, **overrides: object) -> tuple[DriftPolicy, str]:
    """The family's policy with `overrides` (None values ignored) and where it came from."""
    base = FAMILY_POLICIES.get(model_type or "")
    source = f"measured for {model_type}" if base is not None else "generic"
    policy = base or GENERIC
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        unknown = set(given) - {f.name for f in fields(DriftPolicy)}
        if unknown:
            raise ValueError(f"unknown drift policy fields: {', '.join(sorted(unknown))}")
        policy = replace(policy, **given)  # type: ignore[arg-type]
        source += " with overrides"
    return policy, source
