"""Drift measurement against full recomputation (splice.completion.drift) on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from splice.completion.drift import distance_after_edit, kv_deviation, next_token_drift
from splice.completion.pie import apply_plan, encode_full
from splice.completion.pie_plan import plan_reuse
from splice.completion.token_edits import diff_tokens
from splice.kernels.rope import rope_spec_from_config
from splice_testkit.tiny import build_model, build_tokenizer


def test_distance_after_edit_on_a_hand_made_script() -> None:
    old = [1, 2, 3, 4, 5, 6, 7, 8]
    new = [1, 2, 9, 9, 3, 4, 5, 7, 8]  # insert two after 2, delete 6
    script = diff_tokens(old, new)
    assert distance_after_edit(script, len(new)) == [None, None, 0, 1, 0, 1, 2, 0, 1]


def test_next_token_drift() -> None:
    logits = torch.tensor([1.0, 3.0, 0.5])
    same = next_token_drift(logits, logits.clone())
    assert same.kl == pytest.approx(0.0, abs=1e-7) and same.top1_agree
    other = next_token_drift(logits, torch.tensor([3.0, 1.0, 0.5]))
    p = torch.softmax(logits, -1)
    q = torch.softmax(torch.tensor([3.0, 1.0, 0.5]), -1)
    assert other.kl == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert not other.top1_agree
    with pytest.raises(ValueError, match="shape"):
        next_token_drift(logits, torch.zeros(4))


def test_kv_deviation_is_zero_for_exact_reuse_and_positive_after_a_mid_edit() -> None:
    model = build_model(build_tokenizer("plain"), "llama")
    spec = rope_spec_from_config(model.config)
    old_ids = list(range(5, 45))
    new_ids = [*old_ids[:10], 100, 101, 102, *old_ids[10:]]
    old = encode_full(model, old_ids)
    full = encode_full(model, new_ids)
    for method in ("prefix", "pie"):
        plan = plan_reuse(old.ids, new_ids, diff_tokens(old.ids, new_ids), method)
        doc, _ = apply_plan(model, old, new_ids, plan, spec)
        keys, values = kv_deviation(full, doc)
        assert keys.shape == values.shape == (len(full.keys), len(new_ids))
        assert float(keys[:, :10].abs().max()) < 1e-5  # before the edit: exact either way
        if method == "prefix":  # re-encodes everything after the first change: exact
            assert float(keys.max()) < 1e-4 and float(values.max()) < 1e-4
        else:  # reused tokens after the edit kept K/V computed without the inserted tokens
            assert float(keys[0].max()) < 1e-4  # layer 0 keys see no context: exact
            assert float(values[1:, 13:-1].mean()) > 1e-3
        assert doc.logits is not None and full.logits is not None
        drift = next_token_drift(full.logits, doc.logits)
        assert math.isfinite(drift.kl)
    with pytest.raises(ValueError, match="different"):
        kv_deviation(full, old)


def test_drift_policy_per_family_with_overrides() -> None:
    from splice.completion.drift_policy import FAMILY_POLICIES, GENERIC, DriftPolicy, policy_for

    policy, source = policy_for("qwen2")
    assert policy == FAMILY_POLICIES["qwen2"] and source == "measured for qwen2"
    policy, source = policy_for("some-new-family")
    assert policy == GENERIC and source == "generic"
    assert GENERIC.probes  # a family nobody measured gets a probe and a bound
    policy, source = policy_for("llama", first_k=32, probe_ratio=None)
    assert policy.first_k == 32 and policy.probe_ratio == FAMILY_POLICIES["llama"].probe_ratio
    assert source.endswith("with overrides")
    with pytest.raises(ValueError, match="unknown drift policy fields: nope"):
        policy_for("llama", nope=1)
    with pytest.raises(ValueError, match="first_k"):
        DriftPolicy(first_k=-1)
    assert not DriftPolicy(first_k=8).probes
