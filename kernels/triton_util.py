"""How the Triton kernels are built and when they run.

Triton is optional (`pip install 'splice[gpu]'`; the tests install it). Kernels are compiled
for CUDA tensors; CI runs the same kernel source on CPU tensors through Triton's interpreter
(`TRITON_INTERPRET=1`), which is slow but exact enough to test against the torch references.
Kernel bodies are plain functions written against `triton.language`; :func:`build` jits them on
first use. The interpreter must be switched on before anything imports `triton` (transformers
does, when it is installed): `tests/conftest.py` sets `TRITON_INTERPRET=1` first thing on a
machine without CUDA.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import torch

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[Backend, ...] = ("auto", "triton", "torch")


def available() -> bool:
    """Whether the `triton` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether kernels on CPU tensors run in Triton's interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def use_triton(backend: Backend, device: torch.device) -> bool:
    """Resolve `backend` for tensors on `device`.

    "auto" follows `SPLICE_KERNELS` (auto|triton|torch) when it is set; otherwise it compiles for
    CUDA when Triton is installed and uses the torch reference elsewhere (a CPU never runs the
    interpreter unless asked: it is for tests). "triton" insists: on a CPU it needs
    `TRITON_INTERPRET=1`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":  # the service's setting, when there is one
        backend = os.environ.get("SPLICE_KERNELS", "auto")  # type: ignore[assignment]
        if backend not in BACKENDS:
            raise ValueError(f"SPLICE_KERNELS must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and available()
    if not available():
        raise RuntimeError("the triton backend needs the `triton` package: pip install triton")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 (Triton's interpreter)")
    return True


def build(functions: tuple[Callable[..., None], ...], device: torch.device) -> tuple[Any, ...]:
    """`functions` (plain Python kernel bodies written against `triton.language`) jitted on first
    use. Whether they compile or are interpreted is Triton's own choice, made from
    TRITON_INTERPRET when `triton` is first imported (its standard library, `tl.sum` and the
    like, is decorated then): a process runs kernels either compiled for CUDA or interpreted."""
    if device.type != "cuda" and not interpreting():
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 (Triton's interpreter)")
    return _build(functions)


@cache
def _build(functions: tuple[Callable[..., None], ...]) -> tuple[Any, ...]:
    import triton

    return tuple(triton.jit(fn) for fn in functions)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
