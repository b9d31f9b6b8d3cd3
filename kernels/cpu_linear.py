"""Packed weights for decoding on a CPU: linear layers whose cost barely grows from 1 to 16 rows.

Decoding feeds one token a pass (or 1 + k when a draft is verified), so every linear layer is a
matrix product with 1–16 rows against a weight that does not fit in the caches. PyTorch's CPU
`F.linear` calls MKL: a matrix-vector product for one row, a matrix product for more. Measured on
this project's 2-core CI machine (the default model's 211 linear layers, weights streamed from
memory, one pass each):

    rows                         1      2      4      8     16
    F.linear (MKL)            50.9   74.7   64.1   58.4   72.7   ms
    packed (oneDNN, here)     28.8   33.4   26.7   27.0   34.0   ms

MKL's matrix product re-packs the weight on every call, so a 2-row pass reads it about twice;
a weight packed once, in oneDNN's blocked layout (`mkldnn._reorder_linear_weight`), is read once
at any row count, near the memory bandwidth. Two consequences for decoding: a one-token step
costs less, and verifying a draft of up to ~8 tokens costs about what one token does, which is
what lookup drafting needs to pay off (`completion/drafting.py`).

A second property matters for lossless drafting: oneDNN computes each output row the same way
whatever the number of rows (tested: the row of a 1-row product is bit-identical to that row of
a 9-row one). MKL's matrix-vector and matrix-matrix paths round differently (~3e-5 apart), so
without packing a verification pass sees slightly different numbers than a one-token step.

`pack_linears(model)` gives each `nn.Linear` of at least `min_params` weights a packed copy and
a forward that uses it when the input is a CPU tensor of the weight's dtype, autograd is off and
the weight is unchanged since it was packed (same storage and version counter: an in-place
update, such as merging an adapter, re-packs on the next call). Anything else runs `F.linear`,
so training, CUDA and other dtypes behave as before. The cost is memory: the packed copies are as
large as the weights they pack (the default model: +0.5 GB in fp32). `SPLICE_CPU_LINEAR=plain`
turns it off; `auto` (the default) packs fp32 weights where oneDNN is available.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Mode = Literal["auto", "packed", "plain"]
MODES: tuple[Mode, ...] = ("auto", "packed", "plain")

_ATTR = "_splice_packed"
_PACK_ROWS = 8  # the row count oneDNN is told to expect; the layout serves any count
_plain = threading.local()  # `plain_linears()` on this thread: packed layers run F.linear


@dataclass
class _Packed:
    weight: torch.Tensor  # the packed copy (an mkldnn tensor)
    ptr: int  # the weight's storage when packed
    version: int | None  # and its version counter (None: an inference tensor, which has none)


@cache
def supported() -> bool:
    """Whether this PyTorch build runs oneDNN's packed linear (checked once, on a tiny layer)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w, x = torch.randn(4, 8), torch.randn(3, 8)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, _PACK_ROWS)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(out, F.linear(x, w), atol=1e-5))


def resolve_mode(mode: Mode | None = None) -> Mode:
    """`mode`, or `SPLICE_CPU_LINEAR` (auto|packed|plain) when None."""
    value = mode if mode is not None else os.environ.get("SPLICE_CPU_LINEAR", "auto")
    if value not in MODES:
        raise ValueError(f"SPLICE_CPU_LINEAR must be one of {', '.join(MODES)}, got {value!r}")
    return value


def _version(weight: torch.Tensor) -> int | None:
    try:
        return int(weight._version)
    except RuntimeError:  # inference tensors keep no version counter
        return None


def _pack(weight: torch.Tensor) -> _Packed:
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS)
    return _Packed(packed, weight.data_ptr(), _version(weight))


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if x.device.type != "cpu" or x.dtype != weight.dtype or torch.is_grad_enabled() or _plain.__dict__:
        return F.linear(x, weight, self.bias)
    state: _Packed = getattr(self, _ATTR)
    if state.ptr != weight.data_ptr() or state.version != _version(weight):
        state = _pack(weight)
        setattr(self, _ATTR, state)
    return torch.ops.mkldnn._linear_pointwise(x, state.weight, self.bias, "none", [], "")


def pack_linears(model: nn.Module, mode: Mode | None = None, *, min_params: int = 65_536) -> int:
    """Give the model's CPU linear layers packed weights (see the module docstring). Idempotent:
    layers already packed are skipped. Returns how many layers are packed now."""
    mode = resolve_mode(mode)
    if mode == "plain":
        unpack_linears(model)
        return 0
    if not supported():
        if mode == "packed":
            raise RuntimeError("SPLICE_CPU_LINEAR=packed needs a PyTorch build with oneDNN (mkldnn)")
        return 0
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if weight.device.type != "cpu" or weight.numel() < min_params:
            continue
        if weight.dtype != torch.float32 and mode == "auto":  # bf16/fp16 need CPU support oneDNN may lack
            continue
        if not hasattr(module, _ATTR):
            setattr(module, _ATTR, _pack(weight))
            module.forward = types.MethodType(_packed_forward, module)  # type: ignore[method-assign]
        count += 1
    return count


def unpack_linears(model: nn.Module) -> int:
    """Undo `pack_linears`: drop the packed copies and restore `nn.Linear.forward`. Returns how
    many layers were unpacked."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and hasattr(module, _ATTR):
            delattr(module, _ATTR)
            del module.forward  # the instance attribute; the class's forward shows again
            count += 1
    return count


@contextlib.contextmanager
def plain_linears() -> Iterator[None]:
    """Within this block, on this thread, packed layers run `F.linear` (a benchmark's baseline:
    `splice bench decode`'s `greedy-unpacked`). Blocks nest."""
    outer = bool(_plain.__dict__)
    _plain.on = True
    try:
        yield
    finally:
        if not outer:
            del _plain.on


def packed_bytes(model: nn.Module) -> int:
    """Memory the packed copies take (their weights' size)."""
    return sum(
        m.weight.numel() * m.weight.element_size()
        for m in model.modules()
        if isinstance(m, nn.Linear) and hasattr(m, _ATTR)
    )
