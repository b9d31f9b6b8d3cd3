"""Early exit: emit a decoded token from an intermediate layer when a small controller is sure.

Dynamic inference for code completion (Sun et al., ICSE'24): many tokens of code (indentation,
closing brackets, the rest of an identifier) are already decided part-way up the decoder. At a
few exit layers a controller looks at the hidden state and says one of

- Continue: run more layers;
- Exit: this layer's head is right; emit its token and skip the remaining layers;
- Stop: no layer will be right; the completion is likely wrong, end it here.

The exit heads are a tuned lens (Belrose et al. 2023): per exit layer an affine map from the
final-normed hidden state to what the last layer's normed state would be, followed by the model's
own LM head. The default model's shared norm + head alone agree with the last layer on 2-47% of
next tokens at layers 1-29 (held-out FIM middles); the maps trained by `splice train exits` raise
that to the numbers in the shipped heads' model card, for ~0.66 MB per exit layer in fp16.

The controller is one small MLP over [normed hidden state, one-hot exit slot] -> 3 classes,
trained on teacher-forced labels (`controller_labels`); the backbone stays frozen.

An exited token's skipped layers still get K/V, computed from the exited hidden state (state
propagation, `ModelRunner.propagate`), so every cache stays full-depth and PIE works on it.

The heads are saved next to the adapter they were trained with (`exits/` in the adapter folder)
and refused at load time for any other model (`load_exit_heads`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONTINUE, EXIT, STOP = 0, 1, 2
DECISIONS = ("continue", "exit", "stop")
HEADS_FILE = "exit_heads.safetensors"
META_FILE = "exit_heads.json"
EXITS_DIR = "exits"  # inside an adapter folder
FORMAT = 1


class ExitHeadsError(ValueError):
    """Exit heads are missing, malformed, or made for another model."""


@dataclass(frozen=True)
class ExitThresholds:
    """When the controller's probabilities act: Exit at >= `exit`, Stop at >= `stop`;
    1.0 turns either off."""

    exit: float = 0.98  # from `splice bench decode` (tune split); see the README
    stop: float = 1.0

    def __post_init__(self) -> None:
        for name in ("exit", "stop"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0 or math.isnan(value):
                raise ValueError(f"early-exit {name} threshold must be in (0, 1], got {value}")


class ExitHeads(nn.Module):
    """Per exit layer an affine lens (identity at init) and one shared controller."""

    def __init__(self, hidden_size: int, exit_layers: tuple[int, ...], controller_hidden: int = 128) -> None:
        super().__init__()
        if not exit_layers or list(exit_layers) != sorted(set(exit_layers)) or exit_layers[0] < 1:
            raise ExitHeadsError(f"exit layers must be increasing layer counts >= 1, got {exit_layers}")
        self.hidden_size = hidden_size
        self.exit_layers = tuple(int(x) for x in exit_layers)
        self.slot = {layer: i for i, layer in enumerate(self.exit_layers)}
        lenses = [nn.Linear(hidden_size, hidden_size) for _ in self.exit_layers]
        for lens in lenses:
            nn.init.eye_(lens.weight)
            nn.init.zeros_(lens.bias)
        self.lenses = nn.ModuleList(lenses)
        self.controller_hidden = controller_hidden
        self.controller = nn.Sequential(
            nn.Linear(hidden_size + len(self.exit_layers), controller_hidden),
            nn.GELU(),
            nn.Linear(controller_hidden, len(DECISIONS)),
        )

    def lens(self, normed: torch.Tensor, slot: int) -> torch.Tensor:
        """normed: [..., H] after the model's final norm -> [..., H] for the LM head."""
        return self.lenses[slot](normed)

    def decide(self, normed: torch.Tensor, slot: int) -> torch.Tensor:
        """normed: [N, H] -> controller logits [N, 3] (CONTINUE, EXIT, STOP)."""
        onehot = torch.zeros(normed.shape[0], len(self.exit_layers), dtype=normed.dtype, device=normed.device)
        onehot[:, slot] = 1.0
        return self.controller(torch.cat([normed, onehot], dim=-1))


def controller_labels(correct: torch.Tensor) -> torch.Tensor:
    """Teacher-forced controller labels (Sun et al.).

    correct: [T, E + 1] bool: whether the head at each exit layer, and last the full model,
    predicts token t's true next token. Returns [T, E] labels: STOP at every slot when no head is
    right, EXIT at the slots at or after the first right exit head, else CONTINUE.
    """
    exits = correct.shape[1] - 1
    labels = torch.full((correct.shape[0], exits), CONTINUE, dtype=torch.long)
    any_right = correct.any(dim=1)
    labels[~any_right] = STOP
    right = correct[:, :exits]
    seen = torch.cumsum(right.long(), dim=1) > 0  # a right head at this slot or before
    labels[seen & any_right.unsqueeze(1)] = EXIT
    return labels


def model_identity(loaded: Any) -> dict[str, Any]:
    """What exit heads must match: the model, its adapter, and the decoder's shape."""
    config = loaded.model.config.get_text_config(decoder=True)
    return {
        "base_model_id": loaded.model_id,
        "adapter": loaded.adapter_name,
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "vocab_size": int(loaded.model.get_output_embeddings().weight.shape[0]),
    }


def save_exit_heads(heads: ExitHeads, folder: Path, identity: dict[str, Any], report: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(folder / HEADS_FILE))
    meta = {
        "format": FORMAT,
        **identity,
        "exit_layers": list(heads.exit_layers),
        "controller_hidden": heads.controller_hidden,
        "report": report,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_exit_meta(folder: Path) -> dict[str, Any]:
    if not (folder / META_FILE).is_file() or not (folder / HEADS_FILE).is_file():
        raise ExitHeadsError(f"{folder} holds no exit heads ({META_FILE} and {HEADS_FILE})")
    try:
        meta: dict[str, Any] = json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ExitHeadsError(f"{folder / META_FILE} is not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ExitHeadsError(f"{folder / META_FILE}: unknown format {meta.get('format')!r}")
    return meta


def load_exit_heads(folder: Path, loaded: Any) -> ExitHeads:
    """The heads in `folder`, checked against the loaded (and adapted) model."""
    from safetensors.torch import load_file

    meta = read_exit_meta(folder)
    identity = model_identity(loaded)
    wrong = [
        f"{key}: heads {meta.get(key)!r}, model {value!r}"
        for key, value in identity.items()
        if meta.get(key) != value
    ]
    if wrong:
        raise ExitHeadsError(f"exit heads in {folder} were trained for another model ({'; '.join(wrong)})")
    heads = ExitHeads(identity["hidden_size"], tuple(meta["exit_layers"]), int(meta["controller_hidden"]))
    if heads.exit_layers[-1] >= identity["num_layers"]:
        raise ExitHeadsError(
            f"exit layers {heads.exit_layers} must be below the model's {identity['num_layers']}"
        )
    try:
        heads.load_state_dict(load_file(str(folder / HEADS_FILE)))
    except RuntimeError as exc:
        raise ExitHeadsError(f"{folder / HEADS_FILE} does not match its metadata: {exc}") from exc
    dtype = loaded.model.get_output_embeddings().weight.dtype
    return heads.to(device=loaded.device, dtype=dtype).eval()
