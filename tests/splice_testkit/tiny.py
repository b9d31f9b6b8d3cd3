"""Tiny, real tokenizers and random-weight models for tests (no hub access).

The tokenizers are byte-level BPE models trained in a fraction of a second on Python source
from the standard library, with the exact special-token strings of each FIM model family, so
template detection and token handling are exercised on real `tokenizers` objects. The models
are real transformers classes (Llama, Qwen2, and Qwen3 layers shaped as OpenELM) built from
small configs with fixed seeds.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from splice.completion.openelm import OpenELMConfig, OpenELMForCausalLM, layer_wise_scaling

# Special tokens per family, copied from each family's released tokenizer.
FAMILY_SPECIAL_TOKENS: dict[str, list[str]] = {
    "plain": ["<|endoftext|>"],
    "starcoder": [
        "<|endoftext|>",
        "<fim_prefix>",
        "<fim_middle>",
        "<fim_suffix>",
        "<fim_pad>",
        "<filename>",
        "<gh_stars>",
        "<repo_name>",
        "<file_sep>",
    ],
    "qwen": [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ],
    "deepseek": [
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁begin｜>",
        "<｜fim▁end｜>",
        "<|EOT|>",
    ],
    "codellama": ["<unk>", "<s>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"],
}

_EOS = {
    "plain": "<|endoftext|>",
    "starcoder": "<|endoftext|>",
    "qwen": "<|endoftext|>",
    "deepseek": "<｜end▁of▁sentence｜>",
    "codellama": "</s>",
}
_BOS = {"deepseek": "<｜begin▁of▁sentence｜>", "codellama": "<s>"}


def _training_text() -> list[str]:
    import argparse
    import dataclasses
    import json as json_mod
    import textwrap

    sources = [inspect.getsource(m) for m in (textwrap, dataclasses, json_mod, argparse)]
    sources.append("héllo wörld — naïve café ✓ 你好 😀 \r\n\t")
    return sources


@functools.cache
def _trained_tokenizer_json(family: str, vocab_size: int) -> str:
    specials = FAMILY_SPECIAL_TOKENS[family]
    if family == "codellama":
        # sentencepiece-like: metaspace with a dummy prefix and byte fallback
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Sequence([])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials[:3] + byte_tokens, show_progress=False
        )
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    if family == "codellama":
        tok.add_special_tokens(specials[3:])
    return tok.to_str()


def build_tokenizer(family: str = "plain", vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A real fast tokenizer with `family`'s special tokens (see FAMILY_SPECIAL_TOKENS)."""
    if family not in FAMILY_SPECIAL_TOKENS:
        raise ValueError(f"unknown family {family!r}")
    raw = Tokenizer.from_str(_trained_tokenizer_json(family, vocab_size))
    kwargs: dict[str, str] = {"eos_token": _EOS[family]}
    if family in _BOS:
        kwargs["bos_token"] = _BOS[family]
    if family == "codellama":
        kwargs["unk_token"] = "<unk>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **kwargs)
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    arch: str = "llama",
    *,
    max_position_embeddings: int = 512,
    seed: int = 0,
    rope_parameters: dict[str, object] | None = None,
    tie_word_embeddings: bool = False,
) -> PreTrainedModel:
    """A tiny random-weight causal LM (fp32) whose vocabulary matches `tokenizer`."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    if rope_parameters is not None:
        common["rope_parameters"] = rope_parameters
    torch.manual_seed(seed)
    if arch == "llama":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "openelm":  # layer-wise scaling: 2/4/4/4 query heads, 1/2/2/2 KV heads, FFN 32..256
        common.update(num_hidden_layers=4, head_dim=16)
        scaling = layer_wise_scaling(64, 4, 16, num_gqa_groups=2, ffn_dim_divisor=32)
        model = OpenELMForCausalLM(OpenELMConfig(**common, **scaling))  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown arch {arch!r}")
    with torch.no_grad():
        # Random init gives near-uniform logits; widen them so greedy decoding is decisive and
        # varied rather than a tie-break over noise.
        model.lm_head.weight.normal_(0.0, 1.0)  # the embedding too when tied
    return model.eval()


def save_model_dir(
    path: Path, family: str = "plain", arch: str = "llama", *, max_position_embeddings: int = 512
) -> Path:
    """Write a loadable model directory (config, safetensors, tokenizer) and return it."""
    tokenizer = build_tokenizer(family)
    model = build_model(tokenizer, arch, max_position_embeddings=max_position_embeddings)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "TINY_MODEL.json").write_text(json.dumps({"family": family, "arch": arch}))
    return path
