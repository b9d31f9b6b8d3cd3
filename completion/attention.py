"""The decode-attention kernel inside the model's own attention layers, and masked grouped-query
attention on a CPU without copies.

transformers lets a model's attention modules call a registered attention function
(`AttentionInterface`). Splice registers `"splice"`: a decode step (one query token per sequence)
goes to `splice.kernels.decode_attention` (split-KV with FlashDecoding++'s unified max); every
other call (prefill, PIE's re-encoding under a custom mask, draft verification) goes to PyTorch
SDPA exactly as `"sdpa"` would. A decode step can use the kernel when it attends to a prefix of
the cache: with no mask (one sequence, everything before it), or in a batched pass, whose runner
passes each row's valid length (`splice_lengths`, `ModelRunner.run_batch`).

On a CPU, a pass of several query tokens under a mask (draft verification, PIE's re-encoding)
gets one more change: transformers' SDPA path copies every cached K/V head once per query group
(`repeat_kv`) when a mask is given, because CUDA's fused kernels cannot take grouped heads with a
mask. PyTorch's CPU SDPA can (`enable_gqa=True`), with bit-identical results and without the
copies: at 1,033 cached tokens a 9-token pass of the default model's 30 layers spends 14.4 ms in
attention instead of 22.7 ms (this project's 2-core CI machine).

`ModelRunner` switches a model to it when the kernels run on the model's device (`SPLICE_KERNELS`,
`splice.kernels.triton_util.use_triton`): on CUDA with Triton installed by default; on a CPU only
when asked for (the tests run it in Triton's interpreter). CPU models use it for the masked
grouped-query passes alone (`use_cpu_attention`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from splice.kernels import triton_util
from splice.kernels.decode_attention import decode_attention

NAME = "splice"
CPU_NAME = "splice-cpu"  # no kernels: SDPA, with masked grouped-query passes taking the groups itself


def splice_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    splice_lengths: torch.Tensor | None = None,
    kernels: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, Hq, Q, D], key/value [B, Hkv, S, D] -> ([B, Q, Hq, D], None), as SDPA's.
    kernels: decode steps through the Triton kernel (False: `"splice-cpu"`, SDPA throughout)."""
    decode = query.shape[2] == 1 and dropout == 0.0 and (attention_mask is None or splice_lengths is not None)
    if decode and query.dtype == key.dtype == value.dtype and kernels:
        out = decode_attention(
            query[:, :, 0], key, value, lengths=splice_lengths, scale=scaling, backend="triton"
        )
        return out.unsqueeze(1), None
    grouped = query.shape[1] != key.shape[1]
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if query.device.type == "cpu" and grouped and attention_mask is not None and query.shape[2] > 1 and plain:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    return output, None


def splice_cpu_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """`splice_attention` without the kernels."""
    return splice_attention(module, query, key, value, attention_mask, kernels=False, **kwargs)


def _register() -> None:
    AttentionInterface.register(NAME, splice_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    AttentionInterface.register(CPU_NAME, splice_cpu_attention)
    AttentionMaskInterface.register(CPU_NAME, sdpa_mask)


def use_cpu_attention(model: PreTrainedModel) -> bool:
    """Switch a CPU model that uses `"sdpa"` to `"splice-cpu"` (idempotent): its masked
    grouped-query passes then skip the K/V copies; everything else runs as under `"sdpa"`.
    Whether it uses it."""
    config = model.config
    if getattr(config, "_attn_implementation", None) == CPU_NAME:
        return True
    if (
        next(model.parameters()).device.type != "cpu"
        or getattr(config, "_attn_implementation", None) != "sdpa"
    ):
        return False
    _register()
    model.set_attn_implementation(CPU_NAME)
    return True


def use_kernel_attention(model: PreTrainedModel) -> bool:
    """Switch `model` to the `"splice"` attention when the kernels run on its device (idempotent);
    whether it uses it."""
    config = model.config
    if getattr(config, "_attn_implementation", None) == NAME:
        return True
    device = next(model.parameters()).device
    if not triton_util.use_triton("auto", device) or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True
