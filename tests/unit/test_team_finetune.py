"""A team fine-tune on a tiny config-built model and a real git repository: LoRA and SaRA each
train, pass through the gate, and export a delta adapter; served through `DeltaRouter`, the
adapter gives exactly the trained model's logits, only while it is active, and the base model's
otherwise. A killed run resumes from its checkpoint; a cancelled one stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from splice.completion.deltas import DeltaError, DeltaRouter, served_id
from splice.completion.models import load_model, parse_spec
from splice.training.team import Cancelled, TeamJobSpec, run_team_job
from splice_testkit.gitrepo import team_repository
from splice_testkit.tiny import save_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny"), "starcoder", "llama", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return team_repository(tmp_path_factory.mktemp("repos") / "team", functions=8)


def _spec(repo: Path, model_dir: Path, out: Path, method: str, **overrides: object) -> TeamJobSpec:
    settings: dict[str, object] = {
        "max_steps": 6, "batch_size": 2, "seq_len": 128, "gate_tasks": 6, "heldout_commits": 1, "lr": 5e-3,
    }  # fmt: skip
    settings.update(overrides)
    return TeamJobSpec(repo=str(repo), out=str(out), model=str(model_dir), base_adapter=None, method=method,
                       **settings)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("method", ["lora", "sara"])
def test_job_trains_gates_and_exports_a_delta_that_serves_exactly(
    method: str, repo: Path, model_dir: Path, tmp_path: Path
) -> None:
    phases: list[str] = []
    report = run_team_job(
        _spec(repo, model_dir, tmp_path, method), progress=lambda p: phases.append(p["phase"])
    )
    assert report["state"] == "trained"
    assert {"data", "gate_before", "train", "gate_after"} <= set(phases)
    gate = report["gate"]
    assert gate["tasks"] == len(json.loads((tmp_path / "gate-before.json").read_text())) > 0
    assert {"before", "after", "p_value"} <= set(gate["middle_loss"])
    assert isinstance(gate["beats_current"], bool)
    assert report["data"]["heldout_files"] >= 1 and report["method"] == method
    assert report["training"]["trained_parameters"] > 0

    base = load_model(parse_spec(str(model_dir)), device="cpu", dtype="float32")
    assert report["base_model_id"] == served_id(base)
    ids = torch.randint(5, 200, (1, 40))
    with torch.no_grad():
        plain = base.model(input_ids=ids).logits
    router = DeltaRouter(base.model, served_id(base))
    router.add("team-a", Path(report["adapter"]))
    with torch.no_grad():
        outside = base.model(input_ids=ids).logits
        with router.use("team-a"):
            adapted = base.model(input_ids=ids).logits
    torch.testing.assert_close(outside, plain)  # wrapped, but inactive: the base model exactly
    assert not torch.allclose(adapted, plain, atol=1e-5)

    # The trained model itself (peft LoRA / SaRA parametrization) from the checkpoint: same logits.
    trained = load_model(parse_spec(str(model_dir)), device="cpu", dtype="float32")
    from splice.training.config import FinetuneConfig
    from splice.training.trainer import latest_checkpoint, load_adapter_state, prepare_model

    cfg = FinetuneConfig.from_dict(report["config"])
    job = prepare_model(cfg, trained)
    checkpoint = latest_checkpoint(Path(cfg.out))
    assert checkpoint is not None
    load_adapter_state(job, checkpoint / "adapter.safetensors")
    with torch.no_grad():
        reference = job.inner(input_ids=ids).logits
    torch.testing.assert_close(adapted, reference, rtol=1e-4, atol=1e-4)


def test_an_adapter_for_another_base_model_is_refused(repo: Path, model_dir: Path, tmp_path: Path) -> None:
    report = run_team_job(_spec(repo, model_dir, tmp_path, "lora", max_steps=2))
    base = load_model(parse_spec(str(model_dir)), device="cpu", dtype="float32")
    with pytest.raises(DeltaError, match="trained on"):
        DeltaRouter(base.model, "some-other-model").add("x", Path(report["adapter"]))
    with pytest.raises(DeltaError, match="not loaded"), DeltaRouter(base.model, "m").use("missing"):
        pass


def test_a_stopped_run_resumes_and_a_cancelled_one_stops(repo: Path, model_dir: Path, tmp_path: Path) -> None:
    steps: list[int] = []

    def progress(p: dict[str, object]) -> None:
        if p["phase"] == "train":
            steps.append(int(p["step"]))  # type: ignore[call-overload]

    with pytest.raises(Cancelled):
        run_team_job(
            _spec(repo, model_dir, tmp_path, "lora"), progress=progress, should_stop=lambda: len(steps) >= 3
        )
    assert steps == [1, 2, 3]
    checkpoints = sorted((tmp_path / "train" / "checkpoints").glob("step-*"))
    assert checkpoints  # save_every is small: a checkpoint exists before the cancel
    steps.clear()
    report = run_team_job(_spec(repo, model_dir, tmp_path, "lora"), progress=progress)
    assert report["state"] == "trained"
    assert steps[0] > 1 and steps[-1] == 6  # resumed, not restarted
