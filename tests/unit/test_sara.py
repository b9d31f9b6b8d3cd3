"""SaRA on a tiny config-built Llama: only the smallest-magnitude weights move, by exactly the
exported sparse update; the nuclear-norm penalty is finite from a zero update (no nan gradient) and
lowers the update's rank; re-selection freezes the first phase and picks new weights; a saved state
restores the same model."""

from __future__ import annotations

import torch

from splice.training.sara import Sara, SaraConfig
from splice_testkit.tiny import build_model, build_tokenizer

TARGETS = ("q_proj", "v_proj", "down_proj")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(build_tokenizer("plain"), "llama")


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if n.split(".")[-1] in TARGETS}


def _train(model: torch.nn.Module, sara: Sara, steps: int, nuclear: bool = True) -> None:
    opt = torch.optim.AdamW(sara.parameters(), lr=1e-2)
    ids = torch.randint(0, 100, (2, 24))
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        if nuclear:
            loss = loss + sara.regularizer()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in sara.parameters() if p.grad is not None)
        opt.step()
        sara.after_step(step, steps, opt)


def test_only_the_smallest_weights_move_and_export_is_exact() -> None:
    model = _model()
    before = _snapshot(model)
    sara = Sara(model, TARGETS, SaraConfig(rank_equivalent=2, reselect_at=()))
    chosen = {n: d.index.clone() for n, d in sara.deltas.items()}
    _train(model, sara, 5)
    after = _snapshot(model)
    exported = sara.export()
    for name, w0 in before.items():
        flat0 = w0.flatten().abs()
        budget = sara.deltas[name].budget
        assert budget == 2 * sum(w0.shape)
        threshold = torch.sort(flat0).values[budget - 1]
        assert bool((flat0[chosen[name]] <= threshold).all())  # the smallest magnitudes were chosen
        moved = (after[name] != w0).flatten().nonzero().flatten()
        assert len(moved) > 0 and set(moved.tolist()) <= set(chosen[name].tolist())
        dense = torch.zeros(w0.numel())
        dense[exported[f"{name}.index"]] = exported[f"{name}.values"]
        torch.testing.assert_close(w0 + dense.view_as(w0), after[name])


def test_reselection_freezes_the_first_phase_and_trains_new_weights() -> None:
    model = _model()
    sara = Sara(model, TARGETS, SaraConfig(rank_equivalent=2, reselect_at=(0.5,)))
    first = {n: d.index.clone() for n, d in sara.deltas.items()}
    _train(model, sara, 6)
    for name, d in sara.deltas.items():
        assert len(d.frozen_index) == d.budget and bool(d.frozen_values.abs().sum() > 0)
        assert not torch.equal(d.index, first[name])  # moved weights left the smallest set
        index, _ = d.sparse()
        assert d.budget < len(index) <= 2 * d.budget


def test_nuclear_norm_lowers_the_updates_rank() -> None:
    def effective_rank(nuclear_weight: float) -> float:
        model = _model()
        sara = Sara(model, ("q_proj",), SaraConfig(rank_equivalent=4, nuclear_weight=nuclear_weight,
                                                   nuclear_sample=100, reselect_at=()))  # fmt: skip
        _train(model, sara, 12)
        ranks = []
        for d in sara.deltas.values():
            s = torch.linalg.svdvals(d.delta().detach())
            p = s / s.sum()
            ranks.append(float(torch.exp(-(p * torch.log(p + 1e-12)).sum())))
        return sum(ranks) / len(ranks)

    assert effective_rank(0.5) < effective_rank(0.0)


def test_state_round_trips() -> None:
    model = _model()
    sara = Sara(model, TARGETS, SaraConfig(rank_equivalent=2, reselect_at=(0.5,)))
    _train(model, sara, 4)
    state = sara.state_dict()
    trained = _snapshot(model)
    fresh = _model()
    again = Sara(fresh, TARGETS, SaraConfig(rank_equivalent=2, reselect_at=(0.5,)))
    again.load_state_dict(state)
    for name, w in _snapshot(fresh).items():
        torch.testing.assert_close(w, trained[name])
