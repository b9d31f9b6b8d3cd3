"""Per-request weight deltas: a tenant's fine-tuned adapter applied to the shared base model
without merging it and without reloading anything.

`DeltaRouter.add(name, folder)` wraps the adapter's linear layers once (`DeltaLinear`); each keeps
the base layer and, per adapter name, either a LoRA pair (`A` [r, in], `B` [out, r], scale:
`y += scale * (x Aᵀ) Bᵀ`) or SaRA's sparse ΔW (COO: `y += x ΔWᵀ`, O(nnz) per token).
`router.use(name)` selects the adapter the next forwards apply (None: the base model alone); the
step scheduler sets it around every step of a request, so one worker thread serves requests of
different tenants with different adapters in turn. Until an adapter is added nothing is wrapped,
so a server without team adapters runs exactly the plain model.

Adapter folders (`splice finetune --repo`, fine-tune jobs) hold `splice-adapter.json` (kind
"delta": base model id, method, data, gate numbers, created_at) and `delta.safetensors`:
`<module>.lora_A`, `<module>.lora_B`, `<module>.scale` for LoRA; `<module>.index` (flat, int64),
`<module>.values`, `<module>.shape` for SaRA; module names as in `model.named_modules()`.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

DELTA_META = "splice-adapter.json"
DELTA_WEIGHTS = "delta.safetensors"


def served_id(loaded: Any) -> str:
    """What a delta adapter must have been trained on: the model and its merged base adapter."""
    return f"{loaded.model_id}+{loaded.adapter_name}" if loaded.adapter_name else str(loaded.model_id)


class DeltaError(ValueError):
    """An adapter folder is missing, malformed, or made for another base model."""


class _Lora:
    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self.a, self.b, self.scale = a, b, scale

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.to(x.dtype).T) @ (self.b.to(x.dtype).T * self.scale)


class _Sparse:
    def __init__(self, index: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> None:
        rows, cols = index // shape[1], index % shape[1]
        coo = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values.float(), shape, check_invariants=True
        ).coalesce()
        self.matrix = coo

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()  # [T, in]
        out = torch.sparse.mm(self.matrix, flat.T).T  # [T, out]
        return out.reshape(*x.shape[:-1], -1).to(x.dtype)


class DeltaLinear(nn.Module):
    """A linear layer plus the active adapter's delta (if it has one for this layer)."""

    def __init__(self, base: nn.Linear, router: DeltaRouter, name: str) -> None:
        super().__init__()
        self.base = base
        self.router = router
        self.name = name
        self.deltas: dict[str, _Lora | _Sparse] = {}

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` (PIE probes, exits) sees the base
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        active = self.router.active
        if active is not None:
            delta = self.deltas.get(active)
            if delta is not None:
                y = y + delta.apply(x)
        return y


class DeltaRouter:
    def __init__(self, model: nn.Module, base_model_id: str) -> None:
        self.model = model
        self.base_model_id = base_model_id
        self.layers: dict[str, DeltaLinear] = {}
        self.loaded: dict[str, Path] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def active(self) -> str | None:
        return getattr(self._local, "active", None)

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Apply adapter `name` (added before) to this thread's forwards inside the block."""
        if name is not None and name not in self.loaded:
            raise DeltaError(f"adapter {name!r} is not loaded")
        previous = self.active
        self._local.active = name
        try:
            yield
        finally:
            self._local.active = previous

    def _wrap(self, module_name: str) -> DeltaLinear:
        layer = self.layers.get(module_name)
        if layer is not None:
            return layer
        parent_name, _, child = module_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        base = getattr(parent, child, None)
        if not isinstance(base, nn.Linear):
            raise DeltaError(f"the model has no linear layer {module_name!r}")
        layer = DeltaLinear(base, self, module_name)
        setattr(parent, child, layer)
        self.layers[module_name] = layer
        return layer

    def add(self, name: str, folder: Path) -> dict[str, Any]:
        """Load the adapter in `folder` under `name` (idempotent); returns its metadata."""
        with self._lock:
            if name in self.loaded:
                return self.meta[name]
            meta = read_delta_meta(folder)
            if meta["base_model_id"] != self.base_model_id:
                raise DeltaError(
                    f"adapter {name!r} was trained on {meta['base_model_id']}, not on the served "
                    f"{self.base_model_id}"
                )
            tensors = load_file(str(folder / DELTA_WEIGHTS))
            modules = sorted({key.rsplit(".", 1)[0] for key in tensors})
            device = next(self.model.parameters()).device
            parsed: dict[str, _Lora | _Sparse] = {}
            for module in modules:
                if f"{module}.lora_A" in tensors:
                    a = tensors[f"{module}.lora_A"].to(device)
                    b = tensors[f"{module}.lora_B"].to(device)
                    parsed[module] = _Lora(a, b, float(tensors[f"{module}.scale"]))
                elif f"{module}.index" in tensors:
                    shape = tuple(int(v) for v in tensors[f"{module}.shape"].tolist())
                    index = tensors[f"{module}.index"].to(device)
                    parsed[module] = _Sparse(index, tensors[f"{module}.values"].to(device), shape)  # type: ignore[arg-type]
                else:
                    raise DeltaError(f"{folder}: module {module} has neither lora_A nor index")
            for module, delta in parsed.items():
                self._wrap(module).deltas[name] = delta
            self.loaded[name] = folder
            self.meta[name] = meta
            return meta

    def remove(self, name: str) -> None:
        with self._lock:
            for layer in self.layers.values():
                layer.deltas.pop(name, None)
            self.loaded.pop(name, None)
            self.meta.pop(name, None)


def read_delta_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / DELTA_META
    if not meta_path.is_file() or not (folder / DELTA_WEIGHTS).is_file():
        raise DeltaError(f"{folder} is not a Splice delta adapter ({DELTA_META} + {DELTA_WEIGHTS})")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DeltaError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("kind") != "delta" or "base_model_id" not in meta:
        raise DeltaError(f"{meta_path} is not a delta adapter's metadata")
    return meta
