"""The decode-attention kernel inside the model's own attention layers.

transformers lets a model's attention modules call a registered attention function
(`AttentionInterface`). Splice registers `"splice"`: a decode step (one query token per sequence)
goes to `splice.kernels.decode_attention` (split-KV with FlashDecoding++'s unified max); every
other call (prefill, PIE's re-encoding under a custom mask, draft verification) goes to PyTorch
SDPA exactly as `"sdpa"` would. A decode step can use the kernel when it attends to a prefix of
the cache: with no mask (one sequence, everything before it), or in a batched pass, whose runner
passes each row's valid length (`splice_lengths`, `ModelRunner.run_batch`).

`ModelRunner` switches a model to it when the kernels run on the model's device (`SPLICE_KERNELS`,
`splice.kernels.triton_util.use_triton`): on CUDA with Triton installed by default; on a CPU only
when asked for (the tests run it in Triton's interpreter).
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


def splice_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    splice_lengths: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, Hq, Q, D], key/value [B, Hkv, S, D] -> ([B, Q, Hq, D], None), as SDPA's."""
    decode = query.shape[2] == 1 and dropout == 0.0 and (attention_mask is None or splice_lengths is not None)
    if decode and query.dtype == key.dtype == value.dtype:
        out = decode_attention(
            query[:, :, 0], key, value, lengths=splice_lengths, scale=scaling, backend="triton"
        )
        return out.unsqueeze(1), None
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    return output, None


def use_kernel_attention(model: PreTrainedModel) -> bool:
    """Switch `model` to the `"splice"` attention when the kernels run on its device (idempotent);
    whether it uses it."""
    config = model.config
    if getattr(config, "_attn_implementation", None) == NAME:
        return True
    device = next(model.parameters()).device
    if not triton_util.use_triton("auto", device) or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, splice_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
