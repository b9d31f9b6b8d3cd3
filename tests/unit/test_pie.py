"""PIE on tiny random-weight models: reuse plans executed against full recomputation.

Exactness that must hold:
- an edit at the very end (nothing stale) gives the logits of full recomputation;
- `prefix` reuse is always exact (it re-encodes everything after the first change);
- layer-0 keys depend only on token and position, so after PIE every reused layer-0 key equals
  the freshly computed one, also after 500 successive edits (no compounding rounding error).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import PreTrainedModel

from splice.completion.pie import DocumentKV, apply_plan, encode_full
from splice.completion.pie_plan import plan_reuse
from splice.completion.token_edits import diff_tokens
from splice.kernels.rope import RopeSpec, rope_spec_from_config
from splice_testkit.tiny import build_model, build_tokenizer

VARIANTS = {
    "llama": ("llama", None),
    "openelm": ("openelm", None),  # per-layer KV heads 1/2/2/2 (splice.completion.openelm)
    "llama-yarn": (
        "llama",
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128},
    ),
    "qwen2-yarn": (
        "qwen2",
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128},
    ),
    "llama3": (
        "llama",
        {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    arch, rope = VARIANTS[request.param]
    return build_model(build_tokenizer("plain"), arch, rope_parameters=rope)


def spec_of(model: PreTrainedModel) -> RopeSpec:
    return rope_spec_from_config(model.config)


def update(model: PreTrainedModel, doc: DocumentKV, new: list[int], method: str = "pie") -> DocumentKV:
    plan = plan_reuse(
        doc.ids,
        new,
        diff_tokens(doc.ids, new),
        method,  # type: ignore[arg-type]
        refresh_first_k=2,
        logits_fresh=doc.logits is not None,
    )
    out, stats = apply_plan(model, doc, new, plan, spec_of(model))
    assert stats.encoded == plan.encoded
    return out


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(20, 550) for _ in range(n)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_edit_at_the_end_equals_full_recomputation(model: PreTrainedModel) -> None:
    old = tokens(60, 1)
    new = old[:-3] + tokens(7, 2)  # replace the last 3 tokens by 7: nothing after the edit is stale
    doc = update(model, encode_full(model, old), new)
    full = encode_full(model, new)
    assert doc.logits is not None and full.logits is not None
    torch.testing.assert_close(doc.logits, full.logits, rtol=1e-4, atol=1e-4)
    for k, v, fk, fv in zip(doc.keys, doc.values, full.keys, full.values, strict=True):
        torch.testing.assert_close(k, fk, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v, fv, rtol=1e-4, atol=1e-4)


def test_prefix_reuse_is_exact_for_any_edit(model: PreTrainedModel) -> None:
    old = tokens(60, 3)
    new = old[:20] + tokens(5, 4) + old[27:]
    doc = update(model, encode_full(model, old), new, method="prefix")
    full = encode_full(model, new)
    assert doc.logits is not None and full.logits is not None
    torch.testing.assert_close(doc.logits, full.logits, rtol=1e-4, atol=1e-4)


def test_middle_edit_reuses_rotated_keys_exactly_at_layer_zero(model: PreTrainedModel) -> None:
    old = tokens(60, 5)
    new = old[:15] + tokens(4, 6) + old[15:40] + old[45:]  # insertion and a later deletion
    doc = update(model, encode_full(model, old), new)
    full = encode_full(model, new)
    assert rel_err(doc.keys[0], full.keys[0]) < 1e-5  # every position: rotated or fresh
    assert doc.ids == new and doc.logits is not None
    # deeper layers of the moved suffix are PIE's approximation: close but not equal
    assert 0 < rel_err(doc.keys[-1], full.keys[-1]) < 0.5


def test_naive_reuse_leaves_moved_keys_at_the_wrong_position(model: PreTrainedModel) -> None:
    old = tokens(40, 7)
    new = tokens(3, 8) + old  # everything moves by 3
    naive = update(model, encode_full(model, old), new, method="naive")
    full = encode_full(model, new)
    assert rel_err(naive.keys[0], full.keys[0]) > 1e-2


def test_500_successive_edits_keep_layer_zero_keys_at_rounding_level(model: PreTrainedModel) -> None:
    rng = random.Random(9)
    ids = tokens(50, 10)
    doc = encode_full(model, ids)
    for step in range(500):
        at = rng.randrange(0, len(ids))
        cut = rng.randrange(0, 3)
        new = ids[:at] + tokens(rng.randrange(0, 3), step) + ids[at + cut :]
        if not new or new == ids:
            continue
        doc = update(model, doc, new)
        ids = new
    full = encode_full(model, ids)
    assert doc.ids == ids
    assert rel_err(doc.keys[0], full.keys[0]) < 1e-5
    assert int(doc.offset.abs().max()) > 0  # tokens really moved over the run


def test_unchanged_sequence_encodes_nothing() -> None:
    model = build_model(build_tokenizer("plain"), "llama")
    ids = tokens(30, 11)
    doc = encode_full(model, ids)
    plan = plan_reuse(ids, ids, diff_tokens(ids, ids), "pie", logits_fresh=True)
    again, stats = apply_plan(model, doc, ids, plan, spec_of(model))
    assert stats.encoded == 0 and again.logits is not None
    torch.testing.assert_close(again.logits, doc.logits)


def _middle_edit() -> tuple[list[int], list[int]]:
    old = tokens(60, 21)
    return old, old[:15] + tokens(4, 22) + old[15:40] + old[43:]


def test_refresh_of_every_deviant_token_equals_full_recomputation(model: PreTrainedModel) -> None:
    from splice.completion.pie import select_refresh

    old, new = _middle_edit()
    doc = encode_full(model, old)
    plan = plan_reuse(old, new, diff_tokens(old, new), "pie")
    refreshed = select_refresh(model, doc, new, plan, spec_of(model), ratio=1.0).plan
    out, _ = apply_plan(model, doc, new, refreshed, spec_of(model))
    full = encode_full(model, new)
    assert out.logits is not None and full.logits is not None
    torch.testing.assert_close(out.logits, full.logits, rtol=1e-4, atol=1e-4)


def test_partial_refresh_reencodes_the_ratio_and_reduces_the_error(model: PreTrainedModel) -> None:
    from splice.completion.pie import select_refresh

    old, new = _middle_edit()
    doc = encode_full(model, old)
    plan = plan_reuse(old, new, diff_tokens(old, new), "pie")
    candidates = sum(1 for d in plan.reuse_dst if d > plan.encode[0])
    probe = select_refresh(model, doc, new, plan, spec_of(model), ratio=0.25)
    refreshed = probe.plan
    assert refreshed.encoded == plan.encoded + round(0.25 * candidates)
    assert refreshed.refreshed == round(0.25 * candidates)
    # the probe ran layers 0..1 over the tokens from the first change on
    assert probe.probed_tokens == len(new) - plan.encode[0] and probe.probe_layers == 2
    layers = model.config.num_hidden_layers
    assert probe.token_equivalents(layers) == -(-probe.probed_tokens * 2 // layers)
    assert probe.stale_deviation > 0
    assert select_refresh(model, doc, new, plan, spec_of(model), ratio=0.0).plan == plan
    pie, _ = apply_plan(model, doc, new, plan, spec_of(model))
    better, _ = apply_plan(model, doc, new, refreshed, spec_of(model))
    full = encode_full(model, new)
    assert rel_err(better.keys[-1], full.keys[-1]) < rel_err(pie.keys[-1], full.keys[-1])
    assert not torch.equal(pie.keys[-1], better.keys[-1])


def test_threshold_refresh_takes_every_token_above_it(model: PreTrainedModel) -> None:
    from splice.completion.pie import select_refresh

    old, new = _middle_edit()
    doc = encode_full(model, old)
    plan = plan_reuse(old, new, diff_tokens(old, new), "pie")
    everything = select_refresh(model, doc, new, plan, spec_of(model), threshold=1e-9)
    candidates = sum(1 for d in plan.reuse_dst if d > plan.encode[0])
    assert everything.plan.refreshed == candidates and everything.stale_deviation == 0.0
    nothing = select_refresh(model, doc, new, plan, spec_of(model), threshold=1e9)
    assert nothing.plan == plan and nothing.stale_deviation > 0
    some = select_refresh(model, doc, new, plan, spec_of(model), threshold=nothing.stale_deviation)
    # the tokens above the mean deviation go; what stays stale deviates less on average
    assert 0 < some.plan.refreshed < candidates
    assert some.stale_deviation < nothing.stale_deviation


def test_a_draft_rides_on_the_encoding_pass_and_is_not_kept(model: PreTrainedModel) -> None:
    """A draft fed after the sequence in the pass that encodes an edit at the end: its logits
    and K/V are a full forward's over the sequence and the draft, and the document is the same
    as without it. An edit that leaves the last token's logits cached runs no draft."""
    ids = tokens(40, seed=3)
    doc = encode_full(model, ids)
    new, draft = [*ids, 7, 8], [9, 10, 11]
    plan = plan_reuse(doc.ids, new, diff_tokens(doc.ids, new), "pie", logits_fresh=True)
    plain, _ = apply_plan(model, doc, new, plan, spec_of(model))
    with_draft, stats = apply_plan(model, doc, new, plan, spec_of(model), draft=draft)
    full = encode_full(model, [*new, *draft])
    with torch.inference_mode():
        reference = model(input_ids=torch.tensor([[*new, *draft]])).logits[0, -4:].float()
    rows = stats.draft
    assert rows is not None and rows.tokens == draft
    torch.testing.assert_close(rows.logits, reference, rtol=1e-4, atol=1e-4)
    n = len(new)
    for layer, (k, v) in enumerate(zip(rows.keys, rows.values, strict=True)):
        torch.testing.assert_close(k[:, n:], full.keys[layer][:, n:], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v[:, n:], full.values[layer][:, n:], rtol=1e-4, atol=1e-4)
    assert rows.cache(model.config, 2).get_seq_length() == n + 2
    assert with_draft.ids == new and with_draft.keys[0].shape[1] == n
    for a, b in zip([*with_draft.keys, *with_draft.values], [*plain.keys, *plain.values], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert with_draft.logits is not None and plain.logits is not None
    torch.testing.assert_close(with_draft.logits, plain.logits)
    same = plan_reuse(new, new, diff_tokens(new, new), "pie", logits_fresh=True)  # nothing to encode
    again, unchanged = apply_plan(model, plain, new, same, spec_of(model), draft=draft)
    assert unchanged.draft is None and unchanged.encoded == 0 and again.keys[0] is plain.keys[0]
