"""OpenELM-shaped models (per-layer head counts and FFN widths): layer-wise scaling, config errors,
PIE and document caches with per-layer shapes, and loading a saved one like any model folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from splice.completion.document_cache import DocumentKey
from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.models import LoadedModel, ModelSpec, load_model
from splice.completion.openelm import OpenELMConfig, layer_wise_scaling
from splice.completion.pie import encode_full
from splice_testkit.tiny import build_model, build_tokenizer, save_model_dir

CODE = '''import os


def walk(root):
    """Yield every file below root."""
    for path, dirs, files in os.walk(root):
        for name in sorted(files):
            yield os.path.join(path, name)


def total_size(root):
    size = 0
    for name in walk(root):
        size += os.path.getsize(name)
    return size


class Index:
    def __init__(self, root):
        self.root = root
        self.files = list(walk(root))

    def find(self, suffix):
        return [f for f in self.files if f.endswith(suffix)]
'''


def test_layer_wise_scaling_grows_heads_and_ffn_with_depth() -> None:
    shapes = layer_wise_scaling(1280, 16, 64)  # OpenELM-270M's width, depth and head size
    query, kv, ffn = shapes["num_query_heads"], shapes["num_kv_heads"], shapes["intermediate_sizes"]
    assert len(query) == len(kv) == len(ffn) == 16
    assert query == sorted(query) and ffn == sorted(ffn) and query[0] < query[-1] and ffn[0] < ffn[-1]
    assert all(q == 4 * k for q, k in zip(query, kv, strict=True))  # 4 GQA groups
    # qkv multipliers 0.5 .. 1.0 of the width, rounded to whole GQA groups: OpenELM-270M's 12 .. 20
    assert (query[0], query[-1], kv[0], kv[-1]) == (12, 20, 3, 5)
    assert (ffn[0], ffn[-1]) == (768, 5120)  # FFN multipliers 0.5 .. 4.0, rounded to 256
    assert all(f % 256 == 0 for f in ffn)


def test_config_refuses_inconsistent_layers() -> None:
    base = dict(vocab_size=50, hidden_size=32, head_dim=8, num_hidden_layers=2)
    with pytest.raises(ValueError, match="num_kv_heads needs 2"):
        OpenELMConfig(**base, num_query_heads=[2, 4], num_kv_heads=[1])
    with pytest.raises(ValueError, match="layer 1: 3 query heads"):
        OpenELMConfig(**base, num_query_heads=[2, 3], num_kv_heads=[1, 2])
    config = OpenELMConfig(**base, num_query_heads=[2, 4], num_kv_heads=[1, 2], intermediate_sizes=[16, 48])
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 48)
    layer = config.for_layer(0)
    assert (layer.num_attention_heads, layer.num_key_value_heads, layer.intermediate_size) == (2, 1, 16)
    assert layer.hidden_size == 32  # everything else comes from the model's config


def _engine(method: str = "pie+refresh") -> CompletionEngine:
    tokenizer = build_tokenizer("plain")
    model = build_model(tokenizer, "openelm", max_position_embeddings=1024)
    loaded = LoadedModel(
        model, tokenizer, "tiny-openelm", ModelSpec("dir", "tiny"), torch.device("cpu"), torch.float32, 1024
    )
    return CompletionEngine(loaded, EngineConfig(reuse_method=method))  # type: ignore[arg-type]


def test_document_cache_has_per_layer_shapes() -> None:
    model = build_model(build_tokenizer("plain"), "openelm")
    doc = encode_full(model, list(range(20, 61)))
    assert doc.layer_shapes == [(1, 41, 16), (2, 41, 16), (2, 41, 16), (2, 41, 16)]
    config = model.config
    assert [layer.self_attn.k_proj.out_features // 16 for layer in model.model.layers] == config.num_kv_heads


def test_exact_reuse_over_a_random_edit_sequence_equals_full_recomputation() -> None:
    """Edits anywhere in the document (typing, deleting, pasting; the cursor moves): with exact
    reuse (`prefix`: what changed and everything after it re-encoded) every cached completion
    equals the one from a fresh full encode, token for token, through caches of per-layer
    shapes. (PIE's approximate reuse of the stale tokens is checked in test_pie.py, where the
    OpenELM-shaped model is one of the variants: exact at layer 0 after 500 edits, exact for an
    edit at the end and with every deviant token refreshed.)"""
    engine = _engine("prefix")
    key = DocumentKey("t", "walk.py", "tiny-openelm")
    params = GenerationParams(max_tokens=8)
    rng = random.Random(4)
    text, reused = CODE, 0
    for _ in range(12):
        at = rng.randrange(0, len(text))
        cut = rng.randrange(0, 6)
        insert = rng.choice(["x", "    y = 1\n", "", "os.path", "# note\n"])
        text = text[:at] + insert + text[at + cut :]
        cursor = rng.randrange(len(text) // 2, len(text))
        inp = CompletionInput(text[:cursor], text[cursor:])
        cached = engine.complete(inp, params, document=key)
        fresh = engine.complete(inp, params)
        assert cached.raw == fresh.raw
        reused += cached.reused_prompt_tokens
    assert reused > 0  # the cache was really reused
    described = engine.kv.describe(key)
    assert described is not None and described["tokens"] > 0
    assert [heads for heads, _, _ in described["layers"]] == [1, 2, 2, 2]


def test_a_saved_openelm_folder_loads_and_serves(tmp_path: Path) -> None:
    folder = save_model_dir(tmp_path / "openelm", family="plain", arch="openelm")
    loaded = load_model(ModelSpec("dir", str(folder)), home=tmp_path / "home", progress=lambda _: None)
    assert type(loaded.model).__name__ == "OpenELMForCausalLM"
    reference = build_model(build_tokenizer("plain"), "openelm")
    ids = torch.tensor([list(range(30, 50))])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits)
