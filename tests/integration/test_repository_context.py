"""The repository index follows the editor (in process: the real app, a tiny real model):
unsaved definitions from `WS /v1/documents` are searchable and used as context before any save,
recent edits of other files come back, secret buffers are never indexed, closing a document
returns the index to the file on disk, and files changed on disk are picked up by stat."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from starlette.testclient import TestClient

from splice.assistant.app import create_app
from splice.assistant.settings import Settings
from splice.completion.engine import CompletionEngine, EngineConfig
from splice.completion.models import LoadedModel, ModelSpec
from splice_testkit.tiny import build_model, build_tokenizer

UTIL = "def slow_helper(x):\n    return x\n"
MAIN = "import util\n\n\ndef main():\n    pass\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Path, str]]:
    root = tmp_path / "allowed" / "proj"
    root.mkdir(parents=True)
    (root / "util.py").write_text(UTIL)
    (root / "main.py").write_text(MAIN)
    tokenizer = build_tokenizer("plain")
    model = build_model(tokenizer, "llama", max_position_embeddings=1024)
    loaded = LoadedModel(
        model, tokenizer, "tiny-llama", ModelSpec("dir", "tiny"), torch.device("cpu"), torch.float32, 1024
    )
    settings = Settings(
        home=tmp_path / "home", repository_roots=str(tmp_path / "allowed"), index_refresh_s=0.0
    )
    with TestClient(create_app(settings, CompletionEngine(loaded, EngineConfig()))) as client:
        r = client.post("/v1/repositories", json={"path": str(root)})
        assert r.status_code == 202, r.text
        repo_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/repositories/{repo_id}").json()["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client, root, repo_id


def _search(client: TestClient, repo_id: str, query: str) -> list[dict[str, Any]]:
    r = client.post("/v1/search", json={"repository": repo_id, "query": query})
    assert r.status_code == 200, r.text
    return list(r.json()["snippets"])


def _context(client: TestClient, repo_id: str, root: Path, prefix: str) -> list[dict[str, Any]]:
    body = {
        "segments": {"prefix": prefix, "filepath": str(root / "main.py")},
        "repository": repo_id,
        "max_tokens": 2,
        "debug_options": {"return_snippets": True},
    }
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return list(r.json()["debug_data"]["snippets"])


def test_unsaved_edits_are_indexed_used_and_dropped_on_close(world: tuple[TestClient, Path, str]) -> None:
    client, root, repo_id = world
    uri = (root / "util.py").as_uri()
    added = "\n\ndef fresh_unsaved_helper(items):\n    return sorted(items)\n"
    with client.websocket_connect("/v1/documents") as ws:
        ws.send_json({"type": "open", "uri": uri, "languageId": "python", "version": 1, "text": UTIL})
        end = {"line": 2, "character": 0}
        change = {"range": {"start": end, "end": end}, "text": added}
        ws.send_json({"type": "change", "uri": uri, "version": 2, "changes": [change]})
        ws.send_json({"type": "get", "uri": uri})
        assert ws.receive_json()["text"] == UTIL + added

        hits = _search(client, repo_id, "fresh_unsaved_helper")
        assert hits and hits[0]["path"] == "util.py" and hits[0]["name"] == "fresh_unsaved_helper"
        # another file's completion sees the unsaved definition through its import
        snippets = _context(
            client, repo_id, root, "import util\n\n\ndef main():\n    util.fresh_unsaved_helper("
        )
        defs = [s for s in snippets if s["source"] == "definition"]
        assert defs and defs[0]["path"] == "util.py" and "fresh_unsaved_helper" in defs[0]["names"]
        assert "return sorted(items)" in defs[0]["text"]
        # ... and the edited region comes back as a recent edit where no definition covers it
        recent = _context(client, repo_id, root, "x = 1\n")
        assert any(s["source"] == "recent_edit" and "fresh_unsaved_helper" in s["text"] for s in recent)

        # a secret typed into an editor buffer is never indexed
        env_uri = (root / ".env").as_uri()
        secret = "API_TOKEN=ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
        ws.send_json({"type": "open", "uri": env_uri, "languageId": "dotenv", "version": 1, "text": secret})
        key_uri = (root / "keys.py").as_uri()
        pem = 'K = """-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7y\n-----END RSA PRIVATE KEY-----"""\n'
        ws.send_json({"type": "open", "uri": key_uri, "languageId": "python", "version": 1, "text": pem})
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
        for query in ("API_TOKEN", "ghp", "PRIVATE KEY", "MIIEowIBAAKCAQEA7y"):
            assert _search(client, repo_id, query) == [], query

        ws.send_json({"type": "close", "uri": uri})
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
    # closed without saving: the index holds the file on disk again
    names = [hit["name"] for hit in _search(client, repo_id, "fresh_unsaved_helper")]
    assert "fresh_unsaved_helper" not in names and "slow_helper" in names


def test_files_changed_on_disk_are_reindexed(world: tuple[TestClient, Path, str]) -> None:
    client, root, repo_id = world
    (root / "extra.py").write_text("def written_by_git_checkout():\n    return 1\n")
    deadline = time.monotonic() + 30
    while True:
        _context(client, repo_id, root, "x = 1\n")  # a request triggers the stat refresh
        if _search(client, repo_id, "written_by_git_checkout"):
            break
        assert time.monotonic() < deadline, "the new file was never indexed"
        time.sleep(0.05)
