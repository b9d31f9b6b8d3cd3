"""A memory budget that holds: many editors with many open documents against one real server whose
KV budget (`SPLICE_DOCUMENT_CACHE_MB`) holds a fraction of them. Caches are evicted least
recently used first, the budget gauge is never exceeded, evictions are counted in /metrics, an
evicted document is re-encoded at its next completion (no completion fails), and every document
on the server equals its editor's text at the end (`splice bench load`'s own check).

The small form runs in CI; `-m slow` runs 1,000 documents over 50 connections."""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from splice.bench.server import running_server
from splice_testkit.tiny import save_model_dir


def histories(path: Path, count: int) -> Path:
    """Synthetic edit histories (the shape of ../shared/data/edit-histories): files of 30k
    characters, each step a unified diff that adds a line to a function."""
    rng = random.Random(7)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for h in range(count):
            lines = [f"def f_{h}_{i}(x):\n    return x * {rng.randint(0, 99)} + {i}\n\n" for i in range(800)]
            original = "".join(lines)
            steps = []
            for s in range(5):
                at = 3 * (10 * s + 1) + 2  # after a function's return line
                steps.append(f"@@ -{at},0 +{at + 1},1 @@\n+    y_{s} = x + {s}\n")
            fh.write(json.dumps({"id": f"h{h}", "original": original, "steps": steps}) + "\n")
    return path


def load(
    model: Path, data: Path, tmp: Path, editors: int, documents: int, budget_mb: int, seconds: int
) -> dict:  # type: ignore[type-arg]
    out = tmp / "load.json"
    cmd = [
        sys.executable, "-m", "splice.bench.load", "--data", str(data), "--model", str(model),
        "--editors", str(editors), "--documents", str(documents), "--duration", str(seconds),
        "--doc-tokens", "2000", "6000", "--max-tokens", "4", "--typing-cps", "200",
        "--env", f"document_cache_mb={budget_mb}", "--env", "max_prompt_tokens=6000",
        "--env", f"ws_max_documents={documents}", "--env", "queue_size=64", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    result: dict = json.loads(out.read_text())  # type: ignore[type-arg]
    return result


def check(result: dict, documents: int, budget_mb: int) -> None:  # type: ignore[type-arg]
    assert result["documents"] == documents
    assert result["diverged"] == 0  # every server copy equals its editor's text
    assert result["refused"].get("internal", 0) == 0 and result["completions"] > 0
    assert set(result["refused"]) <= {"queue_full"}, result["refused"]  # eviction never fails one
    assert result["kv_budget_mb"] == [budget_mb]
    assert result["evictions"][0] > 0  # the budget held a fraction of the documents
    assert result["reencoded_after_eviction"] > 0  # evicted documents came back by re-encoding


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("m"), "plain", "llama", max_position_embeddings=8192)


def test_the_budget_holds_with_many_open_documents(long_model: Path, tmp_path: Path) -> None:
    data = histories(tmp_path / "h.jsonl.gz", 12)
    check(load(long_model, data, tmp_path, editors=6, documents=10, budget_mb=8, seconds=25), 60, 8)


def test_the_kv_gauge_never_passes_the_budget(long_model: Path, tmp_path: Path) -> None:
    """Documents completed one after another: after each, the caches' bytes are within budget."""
    with running_server(
        str(long_model), env={"SPLICE_DOCUMENT_CACHE_MB": "2", "SPLICE_HOME": str(tmp_path)}
    ) as url:
        budget = 2 << 20
        for i in range(12):
            prefix = f"def g_{i}(x):\n" + "    x = x + 1\n" * (150 + 40 * i)
            body = {"segments": {"prefix": prefix, "suffix": ""}, "document": f"doc-{i}", "max_tokens": 2}
            assert httpx.post(f"{url}/v1/completions", json=body, timeout=120).status_code == 200
            metrics = httpx.get(f"{url}/metrics").text
            held = float(re.search(r"^splice_document_cache_bytes (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
            assert 0 < held <= budget
        evicted = float(re.search(r"^splice_document_cache_evictions_total (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
        assert evicted > 0


@pytest.mark.slow
def test_a_thousand_documents_over_fifty_connections(long_model: Path, tmp_path: Path) -> None:
    data = histories(tmp_path / "h.jsonl.gz", 40)
    check(load(long_model, data, tmp_path, editors=50, documents=20, budget_mb=64, seconds=120), 1000, 64)
