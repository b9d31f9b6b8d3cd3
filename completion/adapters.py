"""LoRA adapters made by `splice finetune`, applied to a loaded model for serving.

An adapter folder holds peft's `adapter_config.json` and `adapter_model.safetensors` and
Splice's `splice-adapter.json`: the base model it was trained on, the FIM tokens it added to
the vocabulary (in order) and the template they form, plus the training record (the model card).
Applying it adds those tokens to the tokenizer, grows the embedding, loads the LoRA weights and
merges them into the base weights, so serving runs the plain transformers model (document
caches and PIE see no difference) at no extra cost per token.

The project ships one adapter: the default model's FIM adapter (`DEFAULT_ADAPTER`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from splice.completion.early_exit import EXITS_DIR, ExitHeadsError, load_exit_heads
from splice.completion.models import LoadedModel, ModelLoadError, ModelSpec, load_model, quiet_peft

log = logging.getLogger(__name__)

ADAPTER_META = "splice-adapter.json"
DEFAULT_ADAPTER = Path(__file__).parent / "adapter_weights" / "smollm2-135m-fim"


class AdapterError(ModelLoadError):
    """An adapter folder is missing, malformed or made for another base model."""


def read_adapter_meta(path: Path) -> dict[str, Any]:
    meta_path = path / ADAPTER_META
    if not path.is_dir():
        raise AdapterError(f"adapter folder not found: {path}")
    missing = [
        n
        for n in (ADAPTER_META, "adapter_config.json", "adapter_model.safetensors")
        if not (path / n).is_file()
    ]
    if missing:
        raise AdapterError(f"{path} is not a Splice adapter: missing {', '.join(missing)}")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{meta_path} is not valid JSON: {exc}") from exc
    for key in ("base_model_id", "added_tokens", "fim_template"):
        if key not in meta:
            raise AdapterError(f"{meta_path} lacks {key!r}")
    return meta


def resolve_adapter(setting: str | None, spec: ModelSpec) -> Path | None:
    """The adapter to apply: `default` is the shipped adapter for the default model (none for other
    models), `none` or empty is none, anything else is a folder."""
    if setting is None or setting.strip().lower() in ("", "none", "off"):
        return None
    if setting.strip().lower() == "default":
        if spec.kind != "default":
            return None
        if not (DEFAULT_ADAPTER / ADAPTER_META).is_file():
            log.warning(
                "the shipped FIM adapter is missing from this installation (%s); serving without it",
                DEFAULT_ADAPTER,
            )
            return None
        return DEFAULT_ADAPTER
    return Path(setting).expanduser()


def load_served_model(spec: ModelSpec, adapter: str | None, **load_kwargs: Any) -> LoadedModel:
    """`load_model(spec, **load_kwargs)` with the adapter that `resolve_adapter(adapter, spec)`
    picks merged in: the model as `splice serve` serves it."""
    loaded = load_model(spec, **load_kwargs)
    path = resolve_adapter(adapter, spec)
    return loaded if path is None else apply_adapter(loaded, path)


def apply_adapter(loaded: LoadedModel, path: Path) -> LoadedModel:
    """Add the adapter's tokens, merge its LoRA weights, and return the model to serve."""
    meta = read_adapter_meta(path)
    if meta["base_model_id"] != loaded.model_id:
        raise AdapterError(
            f"adapter {path} was trained on {meta['base_model_id']!r}, "
            f"not on the loaded model {loaded.model_id!r}"
        )
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - peft is a core dependency
        raise AdapterError("applying an adapter needs peft (pip install peft)") from exc
    tokenizer, model = loaded.tokenizer, loaded.model
    added: list[str] = list(meta["added_tokens"])
    if added:
        new = [t for t in added if t not in tokenizer.get_vocab()]
        if new and new != added:
            raise AdapterError(f"the tokenizer already has some of the adapter's tokens {added}, not all")
        if new:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": new}, replace_extra_special_tokens=False
            )
        expected = meta.get("added_token_ids")
        got = [int(i) for i in tokenizer.convert_tokens_to_ids(added)]  # type: ignore[union-attr]
        if expected is not None and list(expected) != got:
            raise AdapterError(f"the adapter's tokens got ids {got}, it was trained with {expected}")
        if _vocab_rows(model) < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    try:
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(model, str(path), torch_dtype=loaded.dtype)
        merged = peft_model.merge_and_unload()
    except Exception as exc:
        raise AdapterError(f"could not apply adapter {path}: {exc}") from exc
    merged.to(dtype=loaded.dtype)
    merged.eval()
    name = str(meta.get("name") or path.name)
    log.info("applied adapter %s (%s template)", name, meta["fim_template"])
    mode = meta.get("fim_mode")
    if mode is not None and mode not in ("psm", "spm"):
        raise AdapterError(f"{path / ADAPTER_META}: fim_mode must be psm or spm, got {mode!r}")
    served = replace(loaded, model=merged, adapter=str(path), adapter_name=name, fim_mode=mode)
    if (path / EXITS_DIR).is_dir():  # early-exit heads trained for this model + adapter
        served = attach_exit_heads(served, path / EXITS_DIR)
    return served


def attach_exit_heads(loaded: LoadedModel, folder: Path) -> LoadedModel:
    """`loaded` with the early-exit heads in `folder` (refused if trained for another model)."""
    try:
        heads = load_exit_heads(folder, loaded)
    except ExitHeadsError as exc:
        raise AdapterError(str(exc)) from exc
    log.info("early-exit heads at layers %s loaded from %s", list(heads.exit_layers), folder)
    return replace(loaded, exit_heads=heads)


def _vocab_rows(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[0])
