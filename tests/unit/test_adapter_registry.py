"""The per-tenant adapter registry: registering copies the folder and switches the tenant's current
adapter (seen by the next lookup, no restart), tenants never see each other's adapters, and bad
folders or ids are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from splice.assistant.adapter_registry import AdapterRegistry
from splice.completion.deltas import DELTA_META, DELTA_WEIGHTS, DeltaError


def _adapter(folder: Path, created: str) -> Path:
    folder.mkdir(parents=True)
    save_file({"model.layers.0.mlp.down_proj.lora_A": torch.zeros(2, 4)}, str(folder / DELTA_WEIGHTS))
    meta = {"kind": "delta", "base_model_id": "m", "method": "lora", "created_at": created, "gate": {"x": 1}}
    (folder / DELTA_META).write_text(json.dumps(meta))
    return folder


def test_register_switches_the_current_adapter_for_that_tenant_only(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "home")
    assert registry.current("team-a") is None
    first = registry.register("team-a", _adapter(tmp_path / "a1", "2026-01-01T00:00:00"), "attrs-lora")
    assert first.id.startswith("attrs-lora-") and first.name == f"team-a/{first.id}"
    assert registry.current("team-a") == first
    # another process registers: the next lookup sees it (the pointer's mtime changed)
    other = AdapterRegistry(tmp_path / "home")
    second = other.register("team-a", _adapter(tmp_path / "a2", "2026-01-02T00:00:00"), "attrs-sara")
    pointer = tmp_path / "home" / "adapters"
    os.utime(next(pointer.glob("*/current.json")), ns=(1, 10**18))  # a distinct mtime, whatever the clock
    assert registry.current("team-a") == second
    assert [r.id for r in registry.list("team-a")] == [first.id, second.id]
    assert registry.current("team-b") is None and registry.list("team-b") == []
    assert registry.get("team-b", first.id) is None  # another tenant's id is unknown
    assert registry.get("team-a", "../../etc") is None
    assert (first.folder / DELTA_WEIGHTS).is_file() and first.public()["gate"] == {"x": 1}


def test_a_folder_that_is_not_a_delta_adapter_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    with pytest.raises(DeltaError, match="not a Splice delta adapter"):
        AdapterRegistry(tmp_path / "home").register("team-a", tmp_path / "junk")
