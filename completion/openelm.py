"""OpenELM-shaped models: a different number of attention heads and FFN width in every layer.

OpenELM (Mehta et al., 2024) scales its layers: layer i has `num_query_heads[i]` query heads,
`num_kv_heads[i]` KV heads (grouped-query attention) and an FFN of its own width, all growing
with depth (:func:`layer_wise_scaling`, the paper's formula). Each layer is otherwise a Qwen3
layer: pre-norm RMSNorm, q/k RMSNorm per head before RoPE (OpenELM's
`normalize_qk_projections`), NeoX rotary pairing, SwiGLU FFN, embeddings shared with the head.

So the model is built from transformers' own Qwen3 modules, one layer config per layer, and
registered as model type `openelm` (AutoConfig / AutoModelForCausalLM) when
`splice.completion.models` is imported: `splice serve --model DIR` serves a saved one. The model
runner, PIE and the document caches see per-layer shapes: every KV tensor is [H_kv(layer), S, D]
(`DocumentKV.layer_shapes`). Apple's released checkpoints use remote code and other weight
names (a fused `qkv_proj`, `proj_1`/`proj_2`); they are not converted here.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

__all__ = ["OpenELMConfig", "OpenELMForCausalLM", "OpenELMModel", "layer_wise_scaling", "register"]


def _divisible(value: float, divisor: int) -> int:
    """OpenELM's `make_divisible`: round to the nearest multiple, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def layer_wise_scaling(
    hidden_size: int,
    num_layers: int,
    head_dim: int,
    *,
    qkv_multipliers: tuple[float, float] = (0.5, 1.0),
    ffn_multipliers: tuple[float, float] = (0.5, 4.0),
    num_gqa_groups: int = 4,
    ffn_dim_divisor: int = 256,
) -> dict[str, list[int]]:
    """Per-layer query heads, KV heads and FFN widths, linearly scaled from the first layer to
    the last as OpenELM's configuration does (`qkv_multipliers`, `ffn_multipliers`)."""

    def linear(low: float, high: float) -> list[float]:
        step = (high - low) / max(1, num_layers - 1)
        return [round(low + step * i, 2) for i in range(num_layers)]

    query_dims = [_divisible(hidden_size * m, head_dim * num_gqa_groups) for m in linear(*qkv_multipliers)]
    query_heads = [dim // head_dim for dim in query_dims]
    return {
        "num_query_heads": query_heads,
        "num_kv_heads": [heads // num_gqa_groups for heads in query_heads],
        "intermediate_sizes": [
            _divisible(hidden_size * m, ffn_dim_divisor) for m in linear(*ffn_multipliers)
        ],
    }


@strict
class OpenELMConfig(Qwen3Config):
    """A Qwen3 config with per-layer `num_query_heads`, `num_kv_heads` and `intermediate_sizes`
    (each defaults to the flat value for every layer). The flat fields hold the largest."""

    model_type = "openelm"

    num_query_heads: list[int] | None = None
    num_kv_heads: list[int] | None = None
    intermediate_sizes: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        layers = self.num_hidden_layers
        kv = self.num_key_value_heads or self.num_attention_heads
        self.num_query_heads = list(self.num_query_heads or [self.num_attention_heads] * layers)
        self.num_kv_heads = list(self.num_kv_heads or [kv] * layers)
        self.intermediate_sizes = list(self.intermediate_sizes or [self.intermediate_size] * layers)
        for name in ("num_query_heads", "num_kv_heads", "intermediate_sizes"):
            values = getattr(self, name)
            if len(values) != layers or min(values) < 1:
                raise ValueError(f"{name} needs {layers} positive values (one per layer), got {values}")
        for layer, (q, k) in enumerate(zip(self.num_query_heads, self.num_kv_heads, strict=True)):
            if q % k:
                raise ValueError(f"layer {layer}: {q} query heads are not a multiple of {k} KV heads")
        self.num_attention_heads = max(self.num_query_heads)
        self.num_key_value_heads = max(self.num_kv_heads)
        self.intermediate_size = max(self.intermediate_sizes)
        super().__post_init__(**kwargs)

    def for_layer(self, layer: int) -> _LayerConfig:
        """The config layer `layer`'s modules are built from (a view: everything else, the
        attention implementation included, is read from this config when asked)."""
        assert self.num_query_heads and self.num_kv_heads and self.intermediate_sizes
        return _LayerConfig(
            self,
            num_attention_heads=self.num_query_heads[layer],
            num_key_value_heads=self.num_kv_heads[layer],
            intermediate_size=self.intermediate_sizes[layer],
        )


class _LayerConfig:
    """A per-layer view of an :class:`OpenELMConfig`: overridden head counts and FFN width."""

    def __init__(self, parent: OpenELMConfig, **overrides: int) -> None:
        self.__dict__["_parent"] = parent
        self.__dict__["_overrides"] = overrides

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_parent"], name)


class OpenELMModel(Qwen3Model):
    config_class = OpenELMConfig

    def __init__(self, config: OpenELMConfig) -> None:
        Qwen3PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [Qwen3DecoderLayer(config.for_layer(i), i) for i in range(config.num_hidden_layers)]  # type: ignore[arg-type]
        )
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in (config.layer_types or [])
        self.post_init()


class OpenELMForCausalLM(Qwen3ForCausalLM):
    config_class = OpenELMConfig

    def __init__(self, config: OpenELMConfig) -> None:
        Qwen3PreTrainedModel.__init__(self, config)
        self.model = OpenELMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


def register() -> None:
    """Make `openelm` loadable through AutoConfig / AutoModelForCausalLM (idempotent)."""
    AutoConfig.register("openelm", OpenELMConfig, exist_ok=True)
    AutoModelForCausalLM.register(OpenELMConfig, OpenELMForCausalLM, exist_ok=True)
