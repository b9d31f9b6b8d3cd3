"""Each tenant's fine-tuned adapters, under SPLICE_HOME/adapters/: one folder per adapter (the
delta adapter a fine-tune job exported, copied in whole: `splice-adapter.json` holds the base
model, data, method, gate numbers and created_at), and `current.json` naming the one the tenant's
completions use. Registering writes the folder under a temporary name, renames it, then replaces
`current.json` atomically, so a reader sees the old adapter or the new one, never half of one.

The service asks `current(tenant)` on every completion; it re-reads `current.json` only when the
file's mtime changed, so a newly registered adapter (by this process, a worker, or `splice
finetune --repo --tenant`) is picked up without a restart. Replicas share it through a shared
SPLICE_HOME, as they share repository indexes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splice.assistant.repositories import tenant_dir_name
from splice.completion.deltas import read_delta_meta


@dataclass(frozen=True)
class AdapterRecord:
    tenant: str
    id: str
    folder: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        """The name the delta router serves it under (unique across tenants)."""
        return f"{self.tenant}/{self.id}"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.meta.get("method"),
            "repository": self.meta.get("repository"),
            "base_model_id": self.meta.get("base_model_id"),
            "created_at": self.meta.get("created_at"),
            "gate": self.meta.get("gate"),
            "data": self.meta.get("data"),
        }


class AdapterRegistry:
    def __init__(self, home: Path) -> None:
        self.root = home / "adapters"
        self._cache: dict[str, tuple[int, AdapterRecord | None]] = {}
        self._lock = threading.Lock()

    def _tenant_root(self, tenant: str) -> Path:
        return self.root / tenant_dir_name(tenant)

    def register(self, tenant: str, folder: Path, label: str = "") -> AdapterRecord:
        """Copy `folder` in and make it `tenant`'s current adapter."""
        meta = read_delta_meta(folder)
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "adapter"
        adapter_id = f"{slug}-{uuid.uuid4().hex[:8]}"
        root = self._tenant_root(tenant)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{adapter_id}"
        shutil.copytree(folder, tmp)
        final = root / adapter_id
        tmp.rename(final)
        pointer = root / "current.json"
        staged = root / f".current-{adapter_id}.json"
        staged.write_text(json.dumps({"id": adapter_id}))
        os.replace(staged, pointer)
        return AdapterRecord(tenant, adapter_id, final, meta)

    def get(self, tenant: str, adapter_id: str) -> AdapterRecord | None:
        if not re.fullmatch(r"[a-z0-9-]{1,64}", adapter_id):
            return None
        folder = self._tenant_root(tenant) / adapter_id
        if not folder.is_dir():
            return None
        return AdapterRecord(tenant, adapter_id, folder, read_delta_meta(folder))

    def list(self, tenant: str) -> list[AdapterRecord]:
        root = self._tenant_root(tenant)
        if not root.is_dir():
            return []
        found = [
            self.get(tenant, p.name)
            for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]
        return sorted((r for r in found if r is not None), key=lambda r: str(r.meta.get("created_at", "")))

    def current(self, tenant: str) -> AdapterRecord | None:
        pointer = self._tenant_root(tenant) / "current.json"
        try:
            mtime = pointer.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        with self._lock:
            cached = self._cache.get(tenant)
            if cached is not None and cached[0] == mtime:
                return cached[1]
        try:
            adapter_id = str(json.loads(pointer.read_text())["id"])
        except (OSError, ValueError, KeyError):
            return None
        record = self.get(tenant, adapter_id)
        with self._lock:
            self._cache[tenant] = (mtime, record)
        return record
