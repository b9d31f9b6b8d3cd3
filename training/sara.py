"""SaRA (Hu et al., ICLR'25, "SaRA: High-efficient diffusion model fine-tuning with progressive
sparse low-rank adaptation"), for a causal LM's linear layers.

- **Sparse**: in each target matrix only the `budget` weights of smallest magnitude are trained
  (the paper's "ineffective" parameters: pruning them barely changes the model, so they are free
  capacity). A LoRA-sized budget, `r * (in + out)` per matrix, makes SaRA and LoRA comparable at
  the same number of trained parameters.
- **Low-rank**: a nuclear-norm penalty on each matrix's update, `weight * ||ΔW||_*`, keeps the
  sparse update low-rank (less overfitting). Summing it over every matrix each step is costly on
  CPU, so each step draws `nuclear_sample` matrices and scales their sum (an unbiased estimate).
- **Progressive**: at the fractions of training in `reselect_at` the trained values are frozen into
  the update, and the `budget` smallest-magnitude weights of the *updated* matrix are selected
  again and trained from zero, so weights that stayed ineffective get another chance. The trainable
  parameter objects stay the same (their values are zeroed and their optimizer state reset), so
  checkpoints and optimizers need no special cases.

The result is a sparse ΔW per matrix (indexes + values, at most `budget * (1 + len(reselect_at))`
entries), exported and served as such: `completion.deltas` adds `x @ ΔWᵀ` per request, so a
tenant's SaRA adapter never touches the shared base weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn


class SparseDelta(nn.Module):
    """The trainable sparse update of one weight matrix (of shape `shape`)."""

    index: torch.Tensor  # buffers: the trained positions (flat) and the frozen phases
    frozen_index: torch.Tensor
    frozen_values: torch.Tensor

    def __init__(self, weight: torch.Tensor, budget: int) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.budget = min(budget, weight.numel())
        self.values = nn.Parameter(torch.zeros(self.budget, dtype=torch.float32, device=weight.device))
        self.register_buffer("index", torch.zeros(self.budget, dtype=torch.long, device=weight.device))
        self.register_buffer("frozen_index", torch.zeros(0, dtype=torch.long, device=weight.device))
        self.register_buffer("frozen_values", torch.zeros(0, dtype=torch.float32, device=weight.device))
        self.select(weight)

    @torch.no_grad()
    def select(self, weight: torch.Tensor) -> None:
        """Train the `budget` weights of smallest magnitude of `weight` (+ this update) next."""
        current = weight.detach().float().flatten() + self.delta().detach().flatten()
        self.index.copy_(torch.topk(current.abs(), self.budget, largest=False).indices)

    @torch.no_grad()
    def freeze_and_reselect(self, weight: torch.Tensor) -> None:
        self.frozen_index = torch.cat([self.frozen_index, self.index.clone()])
        self.frozen_values = torch.cat([self.frozen_values, self.values.detach().clone()])
        self.values.zero_()
        self.select(weight)

    def delta(self) -> torch.Tensor:
        """ΔW, dense (differentiable in `values`)."""
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.float32, device=self.values.device)
        flat = flat.index_add(0, self.frozen_index, self.frozen_values)
        return flat.index_add(0, self.index, self.values).view(self.shape)

    def sparse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat indexes, values) of ΔW, duplicates summed, zeros dropped: what is exported."""
        index = torch.cat([self.frozen_index, self.index])
        values = torch.cat([self.frozen_values, self.values.detach()])
        unique, inverse = torch.unique(index, return_inverse=True)
        summed = torch.zeros(len(unique), dtype=values.dtype, device=values.device).index_add(
            0, inverse, values
        )
        keep = summed != 0
        return unique[keep], summed[keep]


class _AddDelta(nn.Module):
    def __init__(self, delta: SparseDelta) -> None:
        super().__init__()
        self.delta = delta

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta.delta().to(weight.dtype)


@dataclass
class SaraConfig:
    rank_equivalent: int = 8  # budget per matrix: rank_equivalent * (in + out), LoRA-r's count
    nuclear_weight: float = 1e-4
    nuclear_sample: int = 4
    reselect_at: tuple[float, ...] = (0.5,)


class Sara:
    """SaRA attached to `model`'s linear layers named in `targets` (suffixes, as peft's)."""

    def __init__(self, model: nn.Module, targets: tuple[str, ...], config: SaraConfig, seed: int = 0) -> None:
        self.config = config
        self.deltas: dict[str, SparseDelta] = {}
        self.layers: dict[str, nn.Linear] = {}
        self._rng = random.Random(seed)
        for p in model.parameters():
            p.requires_grad_(False)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
                out_f, in_f = module.weight.shape
                delta = SparseDelta(module.weight, config.rank_equivalent * (in_f + out_f))
                torch.nn.utils.parametrize.register_parametrization(module, "weight", _AddDelta(delta))
                self.deltas[name] = delta
                self.layers[name] = module
        if not self.deltas:
            raise ValueError(f"no linear layer named {targets} to adapt")
        self._done: set[float] = set()

    def parameters(self) -> list[nn.Parameter]:
        return [d.values for d in self.deltas.values()]

    def trained_parameters(self) -> int:
        return sum(d.budget for d in self.deltas.values())

    def regularizer(self) -> torch.Tensor:
        """The sampled nuclear-norm penalty (scaled to estimate the sum over every matrix)."""
        names = list(self.deltas)
        drawn = self._rng.sample(names, min(self.config.nuclear_sample, len(names)))
        total = sum(torch.linalg.matrix_norm(self.deltas[n].delta(), ord="nuc") for n in drawn)
        return self.config.nuclear_weight * (len(names) / len(drawn)) * total

    def after_step(self, step: int, max_steps: int, optimizer: torch.optim.Optimizer) -> bool:
        """Re-select at the configured fractions of training; True when it did."""
        due = [f for f in self.config.reselect_at if f not in self._done and step >= int(f * max_steps)]
        if not due:
            return False
        self._done.update(due)
        for name, delta in self.deltas.items():
            original = getattr(self.layers[name].parametrizations, "weight").original  # noqa: B009
            delta.freeze_and_reselect(original)
            optimizer.state.pop(delta.values, None)
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for name, d in self.deltas.items():
            state[f"{name}.values"] = d.values.detach().cpu().clone()
            state[f"{name}.index"] = d.index.cpu().clone()
            state[f"{name}.frozen_index"] = d.frozen_index.cpu().clone()
            state[f"{name}.frozen_values"] = d.frozen_values.cpu().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, d in self.deltas.items():
            d.values.copy_(state[f"{name}.values"])
            d.index.copy_(state[f"{name}.index"])
            d.frozen_index = state[f"{name}.frozen_index"].to(d.index.device)
            d.frozen_values = state[f"{name}.frozen_values"].to(d.index.device)
        phases = len(next(iter(self.deltas.values())).frozen_index) // next(iter(self.deltas.values())).budget
        self._done = set(sorted(self.config.reselect_at)[:phases])

    def export(self) -> dict[str, torch.Tensor]:
        """`<module>.index` (int64, flat) and `<module>.values` (fp32) of every ΔW, plus its shape."""
        out: dict[str, torch.Tensor] = {}
        for name, d in self.deltas.items():
            index, values = d.sparse()
            out[f"{name}.index"] = index.cpu()
            out[f"{name}.values"] = values.cpu()
            out[f"{name}.shape"] = torch.tensor(d.shape)
        return out
