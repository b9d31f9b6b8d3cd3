"""The LoRA FIM trainer on a tiny random-weight model: it learns, resumes exactly, and exports an
adapter that the serving side applies (merged) with the same outputs as the peft model."""

from __future__ import annotations

import inspect
import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from splice.completion.adapters import AdapterError, apply_adapter, read_adapter_meta, resolve_adapter
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.fim import build_prompt, detect_template
from splice.completion.models import LoadedModel, ModelSpec, quiet_peft
from splice.training.config import FinetuneConfig
from splice.training.export import export_adapter, record_eval
from splice.training.trainer import TrainingError, adapter_state, latest_checkpoint, prepare_model, train
from splice_testkit.tiny import build_model, build_tokenizer

TEXTS = [
    inspect.getsource(textwrap),
    inspect.getsource(json.encoder),
    inspect.getsource(inspect.getmodule(Path)),
]  # type: ignore[arg-type]


def _loaded(tied: bool = True) -> LoadedModel:
    tokenizer = build_tokenizer("plain")
    model = build_model(tokenizer, tie_word_embeddings=tied)
    return LoadedModel(
        model, tokenizer, "tiny", ModelSpec("dir", "/tiny"), torch.device("cpu"), torch.float32, 512
    )


def _config(out: Path, **overrides: object) -> FinetuneConfig:
    settings: dict[str, object] = dict(
        data="unused", out=str(out), seq_len=96, batch_size=2, max_steps=6, warmup_steps=1, eval_every=3,
        eval_rows=4, save_every=100, lr=3e-3, lora_r=4, lora_alpha=8, lora_dropout=0.1, seed=3,
    )  # fmt: skip
    settings.update(overrides)
    return FinetuneConfig(**settings)  # type: ignore[arg-type]


def _run(out: Path, steps: int | None = None, **overrides: object) -> tuple[object, object]:
    job = prepare_model(_config(out, **overrides), _loaded())
    state = train(job, TEXTS[:2], TEXTS[2:], stop_after=steps, show_progress=False)
    return job, state


def test_resume_from_checkpoint_gives_the_same_next_steps(tmp_path: Path) -> None:
    straight_job, straight = _run(tmp_path / "straight")
    _, first = _run(tmp_path / "resumed", steps=3)
    assert first.step == 3 and latest_checkpoint(tmp_path / "resumed") is not None  # type: ignore[attr-defined]
    resumed_job, resumed = _run(tmp_path / "resumed")
    assert resumed.step == straight.step == 6  # type: ignore[attr-defined]
    # the same losses step by step (dropout RNG, data position and optimizer state restored) ...
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in straight.history], rel=1e-5
    )  # type: ignore[attr-defined]
    # ... and the same weights at the end
    a, b = adapter_state(straight_job), adapter_state(resumed_job)  # type: ignore[arg-type]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_training_lowers_heldout_loss_and_trains_the_new_token_rows(tmp_path: Path) -> None:
    job, state = _run(tmp_path / "run", max_steps=12, eval_every=12)
    evals = state.evals  # type: ignore[attr-defined]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 12
    assert evals[-1]["heldout_loss"] < evals[0]["heldout_loss"]
    weights = adapter_state(job)  # type: ignore[arg-type]
    deltas = [v for k, v in weights.items() if "trainable_tokens_delta" in k]
    assert len(deltas) == 1 and deltas[0].shape[0] == 3 and deltas[0].abs().sum() > 0
    assert not any("base_layer" in k for k in weights)  # the adapter never carries the base embedding
    lines = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["event"] == "step"] == list(range(1, 13))


def test_horizon_length_head_trains_and_is_not_exported(tmp_path: Path) -> None:
    job, state = _run(tmp_path / "run", max_steps=3, hlp=True)
    head = job.hlp_head  # type: ignore[attr-defined]
    assert head is not None and head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0
    out = export_adapter(job, state, tmp_path / "adapter", name="hlp")  # type: ignore[arg-type]
    assert not any(
        "hlp" in k or k == "proj.weight" for k in load_file(str(out / "adapter_model.safetensors"))
    )
    assert read_adapter_meta(out)["config"]["hlp"] is True


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    _run(tmp_path / "run", steps=1)
    with pytest.raises(TrainingError, match=r"settings changed since it was written.*lora_r"):
        _run(tmp_path / "run", lora_r=8)


def test_exported_adapter_serves_like_the_peft_model(tmp_path: Path) -> None:
    job, state = _run(tmp_path / "run", max_steps=4)
    out = export_adapter(job, state, tmp_path / "adapter", name="tiny-fim", manifest={"files": {"kept": 3}})  # type: ignore[arg-type]
    meta = read_adapter_meta(out)
    assert meta["fim_template"] == "starcoder" and meta["added_tokens"] == [
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
    ]
    assert meta["training"]["steps"] == 4 and meta["training"]["tokens"] > 0
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert all(v.dtype == torch.float16 for v in load_file(str(out / "adapter_model.safetensors")).values())

    # reference: the trained peft model on a FIM prompt
    tokenizer = job.loaded.tokenizer  # type: ignore[attr-defined]
    ids = build_prompt(
        tokenizer, detect_template(tokenizer), "def f(x):\n    return ", "\n", mode="psm"
    ).input_ids
    job.model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = job.model(input_ids=torch.tensor([ids])).logits.float()  # type: ignore[attr-defined]

    served = apply_adapter(_loaded(), out)  # a fresh base model, as `splice serve` loads it
    assert served.adapter_name == "tiny-fim"
    assert detect_template(served.tokenizer).name == "starcoder"
    with torch.no_grad():
        logits = served.model(input_ids=torch.tensor([ids])).logits.float()
    torch.testing.assert_close(logits, reference, rtol=2e-2, atol=2e-2)  # fp16 adapter weights
    engine = CompletionEngine(served)
    assert engine.template.name == "starcoder"
    assert (meta["fim_mode"], engine.fim_mode) == ("spm", "spm")  # the adapter's layout, by default
    assert CompletionEngine(served, EngineConfig(fim_mode="psm")).fim_mode == "psm"  # unless set
    inp = CompletionInput("def f(x):\n    return ", "\n")
    prompt = engine.prepare(inp, 4).input_ids  # token healing may hold back the prefix's last token
    sentinels = served.tokenizer.convert_tokens_to_ids(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])
    assert prompt[:2] == sentinels[:2] and sentinels[2] in prompt  # SPM: <pre><suf> suffix <mid> prefix
    assert engine.complete(inp, GenerationParams(max_tokens=4)).prompt_tokens == len(prompt)

    record_eval(
        out,
        {
            "set": "SingleLine",
            "template": "starcoder",
            "adapter": "tiny-fim",
            "n": 3,
            "pass@1": 0.5,
            "exact_match": 0.25,
        },
    )
    record_eval(
        out,
        {
            "set": "SingleLine",
            "template": "prefix-only",
            "adapter": None,
            "n": 3,
            "pass@1": 0.25,
            "exact_match": 0.0,
        },
    )
    card = (out / "README.md").read_text()
    assert "| SingleLine | this one | starcoder | 3 | 0.500 | 0.250 |" in card
    assert "| SingleLine | none (base model) | prefix-only | 3 | 0.250 | 0.000 |" in card


def test_peft_calls_show_no_deprecation_users_cannot_act_on(tmp_path: Path) -> None:
    # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning at every
    # adapter load and LoRA wrap): dropped where Splice calls peft, and only that warning.
    job, state = _run(tmp_path / "run", max_steps=2)
    out = export_adapter(job, state, tmp_path / "adapter", name="tiny-fim", manifest={})  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_model(_config(tmp_path / "again"), _loaded())
        apply_adapter(_loaded(), out)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_peft():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, 1)
            warnings.warn("another deprecation", FutureWarning, 1)
    assert [str(w.message) for w in caught] == ["another deprecation"]


def test_apply_adapter_refuses_another_base_model(tmp_path: Path) -> None:
    job, state = _run(tmp_path / "run", max_steps=2)
    out = export_adapter(job, state, tmp_path / "adapter", name="tiny-fim")  # type: ignore[arg-type]
    other = _loaded()
    other.model_id = "someone-else"
    with pytest.raises(AdapterError, match="trained on 'tiny'"):
        apply_adapter(other, out)
    with pytest.raises(AdapterError, match="not a Splice adapter"):
        apply_adapter(_loaded(), tmp_path)
    with pytest.raises(AdapterError, match="not found"):
        apply_adapter(_loaded(), tmp_path / "nope")


def test_resolve_adapter_setting() -> None:
    assert resolve_adapter("none", ModelSpec("default", "default")) is None
    assert (
        resolve_adapter("default", ModelSpec("dir", "/m")) is None
    )  # the shipped adapter is for the default model
    assert resolve_adapter("/some/dir", ModelSpec("dir", "/m")) == Path("/some/dir")


def test_config_validation_and_round_trip(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.save(tmp_path / "c.json")
    assert FinetuneConfig.load(tmp_path / "c.json") == config
    (tmp_path / "c.toml").write_text('data = "d"\nlora_r = 4\nspan = "line"\n')
    assert FinetuneConfig.load(tmp_path / "c.toml").span == "line"
    with pytest.raises(ValueError, match="unknown fine-tuning settings: rank"):
        FinetuneConfig.from_dict({"rank": 4})
    with pytest.raises(ValueError, match="span must be one of"):
        FinetuneConfig(span="word")
    with pytest.raises(ValueError, match="warmup_steps"):
        FinetuneConfig(max_steps=5, warmup_steps=5)


def _distributed_worker(rank: int, out: str, port: int) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        job = prepare_model(_config(Path(out), batch_size=1, max_steps=3, eval_every=3), _loaded())
        state = train(job, TEXTS[:2], TEXTS[2:], show_progress=False)
        torch.save({"state": adapter_state(job), "history": state.history}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_one_model(tmp_path: Path) -> None:
    """Data-parallel (gloo on CPU, as under `torchrun --nproc-per-node 2`): both ranks end with the
    same weights although each saw different rows, and only rank 0 writes the run's files."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(str(tmp_path), port), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=0, atol=0)
    assert ranks[0]["history"] == ranks[1]["history"]  # the logged loss is the ranks' average
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert sum('"event": "step"' in line for line in lines) == 3  # rank 0 alone logs
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]
