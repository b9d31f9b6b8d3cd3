"""Re-rotate cached RoPE keys when an edit shifts tokens: the kernel behind Positional Integrity Encoding.

Why this exists
---------------
A document's KV cache holds keys *after* rotary position embedding (RoPE). When the user edits the
document, every token after the edit moves from position ``p`` to ``p + Δ``. Recomputing those keys
means re-running the model over the whole tail; PIE (He et al., ICLR 2025, arXiv 2407.03157) instead
rotates the cached keys by ``R(Δ)``. Values carry no position and are left untouched.

The math
--------
RoPE splits the first ``rotary_dim`` dims of a head into ``rotary_dim / 2`` pairs ``(x1, x2)`` and
rotates pair ``j`` by the angle ``p · ω_j`` (``ω_j = inv_freq[j]``)::

    x1' = x1 · cos(pω) − x2 · sin(pω)
    x2' = x2 · cos(pω) + x1 · sin(pω)

Rotations compose, ``R((p + Δ)ω) = R(Δω) · R(pω)``, so ``RoPE_{p+Δ}(k) = R(Δω) · RoPE_p(k)``: exact up
to rounding, for every head and layer, with no model call. Two details decide exactness:

* ``ω`` must be the model's own inverse frequencies *including* frequency scaling (linear, llama3,
  YaRN, ...). :func:`rope_spec_from_config` gets them from transformers' ``ROPE_INIT_FUNCTIONS``, the
  same functions the model's rotary-embedding module calls.
* transformers multiplies cos/sin by an *attention factor* (YaRN's mscale). The cached keys already
  carry it once; building ``R(Δ)`` from the model's cos/sin would apply it twice. ``R(Δ)`` here is a
  pure rotation from ``inv_freq`` alone, computed in fp32.

Pairing differs by family: NeoX/``rotate_half`` models (Llama, Qwen, Mistral, ...) pair dim ``i`` with
``i + rotary_dim/2``; GPT-J-style models (GPT-J, CodeGen, Cohere, GLM) pair ``2i`` with ``2i + 1``.
Partial-rotary models (Phi, StableLM, GPT-NeoX, GLM) rotate only the leading ``rotary_dim`` dims.

RoPE types whose frequencies depend on the current sequence length ("dynamic" NTK, "longrope") cannot
be shifted this way: the frequencies themselves change as the document grows. They raise
:class:`UnsupportedRope` and the caller falls back to recomputation.

Repeated rotation of an already rotated key accumulates rounding error (slowly); the document cache
therefore keeps each key's rotation relative to a fixed original plus an accumulated offset, and rotates
once by the total (see ``tests/unit/test_rope.py::test_500_edits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

__all__ = ["RopeSpec", "UnsupportedRope", "apply_rope", "rope_spec_from_config", "rotate_keys"]


class UnsupportedRope(ValueError):
    """The model's RoPE cannot be re-rotated exactly; ``reason`` says why (for the fallback log line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Pairing of rotary dims by `config.model_type`: False = NeoX / `rotate_half` (i, i + r/2),
# True = GPT-J / `rotate_every_two` (2i, 2i + 1). Checked against each family's modeling file in
# transformers 5.x; a model type not listed here needs an explicit `interleaved=` argument.
_INTERLEAVED_BY_MODEL_TYPE: dict[str, bool] = {
    **dict.fromkeys(
        [
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3_text",
            "phi",
            "phi3",
            "stablelm",
            "gpt_neox",
            "starcoder2",
            "olmo",
            "olmo2",
            "granite",
            "granitemoe",
            "smollm3",
            "falcon",
            "persimmon",
            "exaone4",
            "openelm",  # splice.completion.openelm: Qwen3 layers, NeoX pairing
        ],
        False,
    ),
    **dict.fromkeys(["gptj", "codegen", "cohere", "cohere2", "glm", "glm4"], True),
}

# RoPE types whose inverse frequencies are recomputed from the sequence length at run time.
_POSITION_DEPENDENT = {
    "dynamic": "dynamic NTK scaling recomputes the frequencies from the current sequence length",
    "longrope": "longrope switches between short and long frequency factors with the sequence length",
}

# GPT-J and CodeGen hard-code this base and have no `rope_parameters`.
_LEGACY_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class RopeSpec:
    """What :func:`rotate_keys` needs to know about a model's RoPE."""

    inv_freq: torch.Tensor  # [rotary_dim // 2] fp32, frequency-scaled, no attention factor
    rotary_dim: int  # leading head dims that are rotated (< head_dim for partial rotary)
    head_dim: int
    interleaved: bool  # False: pairs (i, i + rotary_dim/2); True: pairs (2i, 2i + 1)
    rope_type: str

    def __post_init__(self) -> None:
        if self.rotary_dim <= 0 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(
                f"rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}"
            )
        if self.inv_freq.shape != (self.rotary_dim // 2,) or self.inv_freq.dtype != torch.float32:
            raise ValueError(
                f"inv_freq must be fp32 of shape ({self.rotary_dim // 2},), "
                f"got {self.inv_freq.dtype} {tuple(self.inv_freq.shape)}"
            )


def rope_spec_from_config(config: PreTrainedConfig, *, interleaved: bool | None = None) -> RopeSpec:
    """Build the :class:`RopeSpec` of a transformers model config, or raise :class:`UnsupportedRope`.

    ``interleaved=None`` infers the pairing from ``config.model_type``; pass it explicitly for model
    types outside the table above.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model_type = str(getattr(config, "model_type", ""))
    if interleaved is None:
        if model_type not in _INTERLEAVED_BY_MODEL_TYPE:
            raise UnsupportedRope(
                f"unknown RoPE pairing for model_type {model_type!r}; pass interleaved= explicitly"
            )
        interleaved = _INTERLEAVED_BY_MODEL_TYPE[model_type]
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    params: dict[str, Any] | None = getattr(config, "rope_parameters", None)
    if not params:
        # Legacy configs (GPT-J, CodeGen): default RoPE with base 10000 on the first `rotary_dim` dims.
        rotary_dim = getattr(config, "rotary_dim", None) or head_dim
        base = float(getattr(config, "rope_theta", None) or _LEGACY_ROPE_THETA)
        inv_freq = _default_inv_freq(base, int(rotary_dim))
        return RopeSpec(inv_freq, int(rotary_dim), head_dim, interleaved, "default")

    nested = (
        config.nested_rope_parameter_keys(params) if hasattr(config, "nested_rope_parameter_keys") else []
    )
    if nested:
        raise UnsupportedRope(f"per-layer-type RoPE parameters ({', '.join(nested)}) are not supported")

    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type in _POSITION_DEPENDENT or "dynamic" in rope_type:
        reason = _POSITION_DEPENDENT.get(rope_type, "the frequencies depend on the sequence length")
        raise UnsupportedRope(f"rope type {rope_type!r} is position-dependent: {reason}")

    if rope_type == "default":
        # Each modeling file has its own `compute_default_rope_parameters`; all share this formula.
        partial = _partial_rotary_factor(config, params)
        inv_freq = _default_inv_freq(float(params["rope_theta"]), int(head_dim * partial))
    elif rope_type in ROPE_INIT_FUNCTIONS:
        # The attention factor (second return value) is already inside the cached keys: drop it.
        inv_freq, _attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    else:
        raise UnsupportedRope(f"rope type {rope_type!r} is not supported by PIE re-rotation")

    inv_freq = inv_freq.detach().to(device="cpu", dtype=torch.float32)
    rotary_dim = 2 * inv_freq.numel()
    if rotary_dim == 0 or rotary_dim > head_dim:
        raise UnsupportedRope(
            f"rope type {rope_type!r} gives rotary_dim {rotary_dim} for head_dim {head_dim}"
        )
    return RopeSpec(inv_freq, rotary_dim, head_dim, interleaved, rope_type)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """Rotate post-RoPE ``keys`` from positions ``p`` to ``p + delta`` (per token).

    keys: [..., S, D] (e.g. [B, H_kv, S, D]); delta: [S] integer or float, may be negative or zero
    (a 0-dim tensor shifts every token by the same amount). Returns a tensor of ``keys.dtype``; the
    rotation is computed in fp32 and the dims past ``spec.rotary_dim`` are copied bit for bit.
    """
    if keys.shape[-1] != spec.head_dim:
        raise ValueError(f"keys last dim {keys.shape[-1]} != head_dim {spec.head_dim}")
    seq_len = keys.shape[-2]
    if delta.dim() == 0:
        delta = delta.expand(seq_len)
    if delta.shape != (seq_len,):
        raise ValueError(f"delta must have shape ({seq_len},), got {tuple(delta.shape)}")

    r, half = spec.rotary_dim, spec.rotary_dim // 2
    inv_freq = spec.inv_freq.to(device=keys.device)  # [r/2]
    # Same product order as transformers (position.float() * inv_freq) so fp32 angles match.
    angle = delta.to(device=keys.device, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [S, r/2]
    cos, sin = angle.cos(), angle.sin()  # [S, r/2], broadcast over leading dims

    rot = keys[..., :r].float()  # [..., S, r]
    if spec.interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]  # [..., S, r/2] each
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if r == spec.head_dim:
        return rotated.to(keys.dtype)
    return torch.cat((rotated.to(keys.dtype), keys[..., r:]), dim=-1)  # [..., S, D]


def apply_rope(x: torch.Tensor, positions: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """RoPE of pre-RoPE vectors ``x`` [..., S, D] at absolute ``positions`` [S].

    A pure rotation: unlike transformers it does not multiply by the attention factor (YaRN's mscale).
    """
    return rotate_keys(x, positions, spec)


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    """Inverse frequencies of unscaled RoPE, the formula of every `compute_default_rope_parameters`."""
    if dim <= 0 or dim % 2:
        raise UnsupportedRope(f"rotary dim {dim} must be a positive even number")
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # [dim/2]


def _partial_rotary_factor(config: PreTrainedConfig, params: dict[str, Any]) -> float:
    """Fraction of head dims that are rotated, under any of the names configs use for it."""
    for value in (
        params.get("partial_rotary_factor"),
        getattr(config, "partial_rotary_factor", None),
        getattr(config, "rotary_pct", None),
    ):
        if value is not None:
            return float(value)
    return 1.0
