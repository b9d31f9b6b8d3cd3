"""`splice train exits`: train early-exit heads for a served model (splice.completion.early_exit).

The backbone stays frozen. Three stages, each resumable from the files it leaves in `out`:

1. features: FIM samples from a `splice data corpus` folder (the same stream as fine-tuning) are
   run through the model (with its adapter) once; for every middle token the final-normed hidden
   state at each exit layer, the last layer's normed state and the true next token are kept
   (`features-train.pt`, `features-heldout.pt`, fp16);
2. lenses: per exit layer an affine map, started from the least-squares fit to the last layer's
   state, then trained to match the full model's next-token distribution (KL through the model's
   own head, Belrose et al.'s tuned lens) (`checkpoint.pt` after each stage);
3. controller: Stop/Exit/Continue from teacher-forced labels (`controller_labels`).

The held-out features give the report (per-layer agreement with the full model, and for a few
exit thresholds the share of layers run and of tokens that change), written into the heads'
metadata and a model card.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from splice.completion.early_exit import (
    EXIT,
    EXITS_DIR,
    ExitHeads,
    controller_labels,
    model_identity,
    save_exit_heads,
)
from splice.completion.models import LoadedModel

Progress = Callable[[str, int, int], None]  # (stage, done, total)
REPORT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class ExitTrainConfig:
    """One `splice train exits` job."""

    data: str
    out: str
    model: str = "default"
    adapter: str = "default"
    exit_layers: tuple[int, ...] = ()  # empty: 60%, 70%, 80% and 90% of the depth
    samples: int = 300  # FIM samples for training (~90 middle tokens each)
    heldout_samples: int = 80
    seq_len: int = 512
    lens_steps: int = 200
    controller_steps: int = 600
    batch_tokens: int = 256
    lens_lr: float = 1e-4
    controller_lr: float = 1e-3
    controller_hidden: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "heldout_samples", "batch_tokens", "controller_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("lens_steps", "controller_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.seq_len < 64:
            raise ValueError("seq_len must be >= 64")

    def layers_for(self, depth: int) -> tuple[int, ...]:
        layers = self.exit_layers or tuple(sorted({round(depth * f) for f in (0.6, 0.7, 0.8, 0.9)}))
        bad = [x for x in layers if not 1 <= x < depth]
        if bad or list(layers) != sorted(set(layers)):
            raise ValueError(f"exit layers must be increasing and in [1, {depth - 1}], got {list(layers)}")
        return tuple(layers)


@dataclass
class Features:
    hidden: torch.Tensor  # [T, E, H] fp16: final-normed hidden state at each exit layer
    final: torch.Tensor  # [T, H] fp16: the last layer's normed state
    labels: torch.Tensor  # [T] the true next token

    def save(self, path: Path) -> None:
        torch.save({"hidden": self.hidden, "final": self.final, "labels": self.labels}, path)

    @classmethod
    def load(cls, path: Path) -> Features:
        data = torch.load(path)
        return cls(data["hidden"], data["final"], data["labels"])


@dataclass
class ExitReport:
    train_tokens: int = 0
    heldout_tokens: int = 0
    full_accuracy: float = 0.0  # held-out: the full model's next token is the true one
    layers: list[dict[str, float]] = field(default_factory=list)  # per exit layer
    thresholds: list[dict[str, float]] = field(default_factory=list)  # simulated exit policy
    seconds: float = 0.0


@torch.no_grad()
def collect_features(
    loaded: LoadedModel,
    texts: list[str],
    exit_layers: tuple[int, ...],
    config: ExitTrainConfig,
    n: int,
    progress: Progress,
    stage: str,
) -> Features:
    from splice.completion.fim import resolve_template
    from splice.training.data import FimStream

    model = loaded.model
    decoder: Any = model.model
    template = resolve_template(loaded.tokenizer, "auto")
    stream = FimStream(
        texts,
        loaded.tokenizer,
        template,
        seq_len=config.seq_len,
        fim_rate=1.0,
        spm_rate=0.0,
        span="mixed",
        loss_on="middle",
        seed=config.seed,
        shuffle=True,
    )
    hidden: list[torch.Tensor] = []
    final: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for i, sample in enumerate(stream.samples(1)):
        if i >= n:
            break
        ids = torch.tensor([sample.input_ids], device=loaded.device)
        target = torch.tensor(sample.labels)
        positions = (target != -100).nonzero().flatten()
        positions = positions[positions > 0] - 1  # the positions that predict a middle token
        out = decoder(input_ids=ids, output_hidden_states=True)
        states = [decoder.norm(out.hidden_states[layer][0, positions]) for layer in exit_layers]
        hidden.append(torch.stack(states, dim=1).half().cpu())  # [t, E, H]
        final.append(out.last_hidden_state[0, positions].half().cpu())
        labels.append(target[positions + 1])
        progress(stage, i + 1, n)
    if not labels:
        raise ValueError("the corpus gave no FIM samples")
    return Features(torch.cat(hidden), torch.cat(final), torch.cat(labels))


def _head(loaded: LoadedModel) -> torch.Tensor:
    return loaded.model.get_output_embeddings().weight.detach().float()  # [V, H]


def fit_lenses(
    heads: ExitHeads, feats: Features, head: torch.Tensor, config: ExitTrainConfig, progress: Progress
) -> None:
    """Least-squares start, then KL(full || lens) through the frozen head."""
    target = feats.final.float()
    for slot in range(len(heads.exit_layers)):
        lens: Any = heads.lenses[slot]
        x = torch.cat([feats.hidden[:, slot].float(), torch.ones(len(target), 1)], dim=1)
        solution = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1]), x.T @ target)  # [H+1, H]
        with torch.no_grad():
            lens.weight.copy_(solution[:-1].T)
            lens.bias.copy_(solution[-1])
    optimizer = torch.optim.AdamW(heads.lenses.parameters(), lr=config.lens_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    for step in range(config.lens_steps):
        index = torch.randint(0, len(target), (config.batch_tokens,), generator=generator)
        with torch.no_grad():
            teacher = torch.log_softmax(target[index] @ head.T, dim=-1)
        loss = torch.zeros(())
        for slot in range(len(heads.exit_layers)):
            student = torch.log_softmax(heads.lens(feats.hidden[index, slot].float(), slot) @ head.T, dim=-1)
            loss = loss + F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress("lenses", step + 1, config.lens_steps)


@torch.no_grad()
def predictions(heads: ExitHeads, feats: Features, head: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[T, E + 1] next-token predictions of each exit head, then of the full model."""
    out = []
    for start in range(0, len(feats.labels), chunk):
        rows = slice(start, start + chunk)
        per_slot = [
            (heads.lens(feats.hidden[rows, slot].float(), slot) @ head.T).argmax(-1)
            for slot in range(len(heads.exit_layers))
        ]
        per_slot.append((feats.final[rows].float() @ head.T).argmax(-1))
        out.append(torch.stack(per_slot, dim=1))
    return torch.cat(out)


def train_controller(
    heads: ExitHeads, feats: Features, labels: torch.Tensor, config: ExitTrainConfig, progress: Progress
) -> None:
    """Cross-entropy on (token, exit slot) pairs; labels: [T, E]."""
    slots = len(heads.exit_layers)
    optimizer = torch.optim.AdamW(heads.controller.parameters(), lr=config.controller_lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(config.seed + 1)
    for step in range(config.controller_steps):
        index = torch.randint(0, len(labels), (config.batch_tokens,), generator=generator)
        loss = torch.zeros(())
        for slot in range(slots):
            logits = heads.decide(feats.hidden[index, slot].float(), slot)
            loss = loss + F.cross_entropy(logits, labels[index, slot])
        optimizer.zero_grad()
        (loss / slots).backward()
        optimizer.step()
        progress("controller", step + 1, config.controller_steps)


@torch.no_grad()
def simulate(
    heads: ExitHeads, feats: Features, predicted: torch.Tensor, depth: int, threshold: float
) -> dict[str, float]:
    """The exit policy on teacher-forced held-out tokens at one Exit threshold (Stop off)."""
    tokens = len(feats.labels)
    exit_probs = torch.stack(
        [
            torch.softmax(heads.decide(feats.hidden[:, s].float(), s), -1)[:, EXIT]
            for s in range(len(heads.exit_layers))
        ],
        dim=1,
    )  # [T, E]
    chosen = torch.full((tokens,), len(heads.exit_layers), dtype=torch.long)  # E: the full model
    for slot in reversed(range(len(heads.exit_layers))):
        chosen = torch.where(exit_probs[:, slot] >= threshold, torch.full_like(chosen, slot), chosen)
    layers = torch.tensor([*heads.exit_layers, depth], dtype=torch.float)[chosen]
    token = predicted.gather(1, chosen.unsqueeze(1)).squeeze(1)
    return {
        "exit_threshold": threshold,
        "exited": float((chosen < len(heads.exit_layers)).float().mean()),
        "layers_per_token": float(layers.mean()),
        "layer_savings": float(1.0 - layers.mean() / depth),
        "same_as_full": float((token == predicted[:, -1]).float().mean()),
        "accuracy": float((token == feats.labels).float().mean()),
    }


def train_exits(
    config: ExitTrainConfig,
    loaded: LoadedModel,
    train_texts: list[str],
    heldout_texts: list[str],
    progress: Progress,
) -> tuple[ExitHeads, ExitReport]:
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    text_config = loaded.model.config.get_text_config(decoder=True)
    depth = int(text_config.num_hidden_layers)
    exit_layers = config.layers_for(depth)
    random.Random(config.seed).shuffle(train_texts)
    feats = {}
    for name, texts, n in (
        ("train", train_texts, config.samples),
        ("heldout", heldout_texts, config.heldout_samples),
    ):
        path = out / f"features-{name}.pt"
        if path.is_file():
            feats[name] = Features.load(path)
        else:
            if not texts:
                raise ValueError(f"the corpus has no {name} files")
            feats[name] = collect_features(
                loaded, texts, exit_layers, config, n, progress, f"features ({name})"
            )
            feats[name].save(path)
        if feats[name].hidden.shape[1] != len(exit_layers):
            raise ValueError(
                f"{path} was collected for other exit layers; delete it or pass the same --exit-layers"
            )
    head = _head(loaded)
    heads = ExitHeads(int(text_config.hidden_size), exit_layers, config.controller_hidden)
    checkpoint = out / "checkpoint.pt"
    state: dict[str, Any] = torch.load(checkpoint) if checkpoint.is_file() else {"stage": ""}
    if state["stage"] in ("lenses", "controller"):
        heads.load_state_dict(state["heads"])
    else:
        fit_lenses(heads, feats["train"], head, config, progress)
        torch.save({"stage": "lenses", "heads": heads.state_dict(), "config": asdict(config)}, checkpoint)
    predicted = predictions(heads, feats["train"], head)
    correct = predicted == feats["train"].labels.unsqueeze(1)
    if state["stage"] != "controller":
        train_controller(heads, feats["train"], controller_labels(correct), config, progress)
        torch.save({"stage": "controller", "heads": heads.state_dict(), "config": asdict(config)}, checkpoint)
    heads.eval()

    held = feats["heldout"]
    predicted = predictions(heads, held, head)
    report = ExitReport(
        train_tokens=len(feats["train"].labels),
        heldout_tokens=len(held.labels),
        full_accuracy=float((predicted[:, -1] == held.labels).float().mean()),
    )
    for slot, layer in enumerate(exit_layers):
        report.layers.append(
            {
                "layer": layer,
                "same_as_full": float((predicted[:, slot] == predicted[:, -1]).float().mean()),
                "accuracy": float((predicted[:, slot] == held.labels).float().mean()),
            }
        )
    report.thresholds = [simulate(heads, held, predicted, depth, t) for t in REPORT_THRESHOLDS]
    report.seconds = time.perf_counter() - started
    folder = out / EXITS_DIR
    save_exit_heads(heads, folder, model_identity(loaded), asdict(report) | {"config": asdict(config)})
    write_model_card(folder, model_identity(loaded), exit_layers, report)
    return heads, report


def write_model_card(
    folder: Path, identity: dict[str, Any], exit_layers: tuple[int, ...], report: ExitReport
) -> None:
    lines = [
        f"# Early-exit heads for {identity['base_model_id']}"
        + (f" + {identity['adapter']}" if identity["adapter"] else ""),
        "",
        "Trained by `splice train exits` (splice.training.exits): per exit layer an affine lens into the",
        "model's own final norm space and LM head, and one Stop/Exit/Continue controller; backbone frozen.",
        f"Exit layers {list(exit_layers)} of {identity['num_layers']}; "
        f"{report.train_tokens:,} training tokens, {report.heldout_tokens:,} held-out tokens",
        f"(FIM middles of held-out corpus files); {report.seconds / 60:.1f} min.",
        "",
        f"Held-out: the full model predicts the true next token {report.full_accuracy:.1%} of the time.",
        "",
        "| exit layer | same token as the full model | true next token |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r['layer']} | {r['same_as_full']:.1%} | {r['accuracy']:.1%} |" for r in report.layers]
    lines += [
        "",
        "Teacher-forced simulation of the exit policy on the held-out tokens (Stop off):",
        "",
        "| exit threshold | tokens exited | layers per token | layer compute saved "
        "| same token as full | true next token |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['exit_threshold']} | {r['exited']:.1%} | {r['layers_per_token']:.1f} | "
        f"{r['layer_savings']:.1%} | "
        f"{r['same_as_full']:.1%} | {r['accuracy']:.1%} |"
        for r in report.thresholds
    ]
    lines += ["", "Generation quality and speed: `splice bench decode` (README)."]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
