"""Model specs, device/dtype choice and loading from a local directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from splice.completion.models import (
    DEFAULT_MODEL_ID,
    ModelLoadError,
    cached_model_dir,
    check_rotary,
    is_pulled,
    load_model,
    parse_spec,
    resolve_device,
    resolve_dtype,
)


def test_parse_spec_kinds(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert parse_spec(None).kind == "default"
    assert parse_spec("default").model_id == DEFAULT_MODEL_ID
    assert parse_spec(str(tiny_model_dir)).kind == "dir"
    assert parse_spec("bigcode/starcoder2-3b") == parse_spec("bigcode/starcoder2-3b")
    assert parse_spec("bigcode/starcoder2-3b").kind == "hub"
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    spec = parse_spec(str(gguf))
    assert spec.kind == "gguf" and spec.model_id == "m.Q4"


@pytest.mark.parametrize("bad", ["/no/such/dir", "./missing", "missing.gguf"])
def test_parse_spec_rejects_missing_paths(bad: str) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        parse_spec(bad)


def test_parse_spec_rejects_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        parse_spec(str(tmp_path))


def test_cache_location_and_pulled_marker(tmp_path: Path, tiny_model_dir: Path) -> None:
    spec = parse_spec("default")
    assert cached_model_dir(spec, tmp_path) == tmp_path / "models" / DEFAULT_MODEL_ID
    assert not is_pulled(spec, tmp_path)
    assert is_pulled(parse_spec(str(tiny_model_dir)), tmp_path)  # directories load in place


def test_non_rotary_models_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="rotary"):
        check_rotary(GPT2Config(), "gpt2")


def test_device_and_dtype_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError):
        resolve_dtype("int3", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda")


def test_load_local_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(parse_spec(str(tiny_model_dir)), home=tmp_path, device="cpu", progress=lambda _: None)
    assert loaded.model_id == tiny_model_dir.name
    assert loaded.dtype == torch.float32
    assert loaded.context_window == 512
    assert loaded.tokenizer("def f", add_special_tokens=False).input_ids


def test_unreachable_hub_id_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not download 'splice-test/no-such-model'"):
        load_model(
            parse_spec("splice-test/no-such-model"), home=tmp_path, device="cpu", progress=lambda _: None
        )
