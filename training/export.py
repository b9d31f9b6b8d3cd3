"""Write a trained adapter the way the service loads it (`splice.completion.adapters`), with its
model card: the configuration, the data manifest's summary, the training record (tokens,
tokens/s, wall time, hardware, held-out loss curve) and any evaluation results added later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from splice.completion.adapters import ADAPTER_META
from splice.training.plot import write_loss_plot
from splice.training.trainer import Job, TrainState, adapter_state, hardware

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def training_record(job: Job, state: TrainState) -> dict[str, Any]:
    seconds = max(state.train_seconds, 1e-9)
    return {
        "steps": state.step,
        "tokens": state.tokens,
        "label_tokens": state.label_tokens,
        "tokens_per_s": round(state.tokens / seconds, 1),
        "wall_seconds": round(state.train_seconds, 1),
        "hardware": hardware(),
        "dtype": str(job.loaded.dtype).removeprefix("torch."),
        "heldout_loss": state.evals,
    }


def export_adapter(
    job: Job, state: TrainState, out: Path, *, name: str, manifest: dict[str, Any] | None = None
) -> Path:
    """Save adapter_config.json, adapter_model.safetensors (in `save_dtype`), splice-adapter.json,
    README.md and loss.png into `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = job.config
    job.model.peft_config["default"].save_pretrained(str(out))
    dtype = _DTYPES[cfg.save_dtype]
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in adapter_state(job).items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    tokenizer = job.loaded.tokenizer
    meta: dict[str, Any] = {
        "format": 1,
        "name": name,
        "base_model": cfg.model,
        "base_model_id": job.loaded.model_id,
        "fim_template": job.template.name,
        # SPM puts the prefix last, so the middle continues it: a briefly trained adapter keeps to
        # the cursor far better that way (measured on HumanEval infilling; see the README)
        "fim_mode": "spm" if cfg.spm_rate > 0 and "spm" in job.template.modes else "psm",
        "added_tokens": tokenizer.convert_ids_to_tokens(job.added_tokens),
        "added_token_ids": job.added_tokens,
        "vocab_size": len(tokenizer),
        "config": cfg.to_dict(),
        "data": _data_summary(manifest or {}),
        "training": training_record(job, state),
        "stages": previous_stages(Path(cfg.init_adapter)) if cfg.init_adapter else [],
        "eval": {},
    }
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")
    write_loss_plot(out / "loss.png", state.history, state.evals)
    write_model_card(out)
    return out


def previous_stages(init_adapter: Path) -> list[dict[str, Any]]:
    """The training stages behind the adapter a run started from (`init_adapter`), oldest first:
    each with its name, config and training record, so the card tells the whole history."""
    meta = json.loads((init_adapter / ADAPTER_META).read_text())
    stage = {"name": meta.get("name"), "config": meta.get("config", {}), "training": meta.get("training", {})}
    return [*meta.get("stages", []), stage]


def _data_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("files", "bytes_kept", "dropped", "by_license", "by_language", "config")
    summary = {k: manifest[k] for k in keys if k in manifest}
    if "sources" in manifest:
        summary["sources"] = [f"{s['name']} {s['version']} ({s['license']})" for s in manifest["sources"]]
    if "excluded_sources" in manifest:
        summary["excluded_sources"] = [f"{s['name']} ({s['license']})" for s in manifest["excluded_sources"]]
    return summary


def record_eval(adapter_dir: Path, report: dict[str, Any]) -> None:
    """Add an evaluation report to the adapter's metadata (keyed by set and template) and refresh the card."""
    meta_path = adapter_dir / ADAPTER_META
    meta = json.loads(meta_path.read_text())
    key = f"{report['set']}:{report.get('template', '?')}"
    meta.setdefault("eval", {})[key] = report
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(adapter_dir)


def _repo_context_line(cfg: dict[str, Any]) -> list[str]:
    if not cfg.get("repo_context"):
        return []
    excluded = ", ".join(cfg.get("repo_exclude", [])) or "none"
    return [
        f"- {cfg['repo_context']:.0%} of the samples with repository context (cross-file lines of the "
        f"corpus' own repositories, the served context within {cfg['repo_context_tokens']} tokens; "
        f"repositories left out for evaluation: {excluded})"
    ]


def _stage_lines(stages: list[dict[str, Any]]) -> list[str]:
    """A paragraph per earlier stage (this run started from the last one's weights)."""
    if not stages:
        return []
    lines = ["Earlier stages (this run started from the last one's weights):", ""]
    for i, stage in enumerate(stages, 1):
        cfg, train = stage.get("config", {}), stage.get("training", {})
        losses = train.get("heldout_loss", [])
        curve = (
            f", held-out loss {losses[0]['heldout_loss']:.3f} -> {losses[-1]['heldout_loss']:.3f}"
            if losses
            else ""
        )
        lines.append(
            f"{i}. `{stage.get('name')}`: {train.get('steps')} steps, {train.get('tokens', 0):,} tokens, "
            f"rows of {cfg.get('seq_len')} tokens, batch {cfg.get('batch_size')}, lr {cfg.get('lr')}{curve}, "
            f"{train.get('wall_seconds', 0) / 60:.1f} min on {train.get('hardware')} ({train.get('dtype')})"
        )
        lines += [f"   - {note}" for note in train.get("notes", [])]
    return [*lines, ""]


def write_model_card(adapter_dir: Path) -> None:
    meta = json.loads((adapter_dir / ADAPTER_META).read_text())
    cfg, train, data = meta["config"], meta["training"], meta.get("data", {})
    lines = [
        f"# {meta['name']}",
        "",
        f"A LoRA adapter that teaches {meta['base_model_id']} fill-in-the-middle with the "
        f"`{meta['fim_template']}` template (tokens added: {', '.join(meta['added_tokens']) or 'none'}).",
        "Made by `splice finetune`; applied and merged at load time by `splice serve` "
        "(`--no-adapter` turns it off).",
        "",
        "## Training",
        "",
        f"- LoRA r={cfg['lora_r']}, alpha={cfg['lora_alpha']}, dropout={cfg['lora_dropout']} on "
        f"{', '.join(cfg['target_modules'])}; new token rows via {cfg['token_training']}",
        f"- FIM rate {cfg['fim_rate']}, SPM rate {cfg['spm_rate']}, spans {cfg['span']}, "
        f"loss on {cfg['loss_on']}, "
        f"rows of {cfg['seq_len']} tokens, batch {cfg['batch_size']} x {cfg['grad_accum']}",
        f"- lr {cfg['lr']} (warmup {cfg['warmup_steps']}, cosine to {cfg['min_lr_ratio']}x), "
        f"{train['steps']} steps",
        f"- {train['tokens']:,} tokens seen ({train['label_tokens']:,} with a loss), "
        f"{train['tokens_per_s']} tokens/s, {train['wall_seconds'] / 60:.1f} min "
        f"on {train['hardware']} ({train['dtype']})",
        "",
        *(_repo_context_line(cfg)),
        *([f"- {note}" for note in train.get("notes", [])]),
        "",
        *(_stage_lines(meta.get("stages", []))),
        "Held-out loss (on the middle tokens of held-out files):",
        "",
        "| step | tokens | held-out loss |",
        "| ---: | ---: | ---: |",
        *(f"| {e['step']} | {int(e['tokens']):,} | {e['heldout_loss']:.4f} |" for e in train["heldout_loss"]),
        "",
        "![loss](loss.png)",
        "",
        "## Data",
        "",
    ]
    files = data.get("files", {})
    if files:
        lines.append(
            f"{files.get('kept', 0):,} files kept of {files.get('seen', 0):,} "
            f"({files.get('train', 0):,} train, {files.get('heldout', 0):,} held out); "
            f"licenses: {', '.join(f'{k} {v}' for k, v in data.get('by_license', {}).items())}."
        )
    if data.get("excluded_sources"):
        lines += ["", f"Excluded for their license: {', '.join(data['excluded_sources'])}."]
    if meta.get("eval"):
        lines += [
            "",
            "## Evaluation",
            "",
            "| set | adapter | template | n | pass@1 | exact match |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for report in meta["eval"].values():
            adapter = "this one" if report.get("adapter") else "none (base model)"
            lines.append(
                f"| {report['set']} | {adapter} | {report.get('template', '?')} | {report['n']} | "
                f"{report['pass@1']:.3f} | {report['exact_match']:.3f} |"
            )
    (adapter_dir / "README.md").write_text("\n".join(lines) + "\n")
