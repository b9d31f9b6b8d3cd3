"""An OpenELM-shaped model folder served by the real app: the editor protocol completes after
edits with the document cache, and `GET /v1/documents` reports the cache's per-layer shapes."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from splice.assistant.app import create_app
from splice.assistant.settings import Settings
from splice.completion.engine import CompletionEngine
from splice.completion.models import ModelSpec, load_model
from splice_testkit.tiny import save_model_dir

URI = "file:///src/walk.py"
TEXT = "import os\n\n\ndef walk(root):\n    for path, dirs, files in os.walk(root):\n        \n"
KEYS = {"Authorization": "Bearer key-a"}


def test_openelm_folder_serves_editor_completions_with_per_layer_caches(tmp_path: Path) -> None:
    folder = save_model_dir(tmp_path / "openelm", family="plain", arch="openelm")
    loaded = load_model(ModelSpec("dir", str(folder)), home=tmp_path / "home", progress=lambda _: None)
    settings = Settings(api_keys="key-a=team-a,key-b=team-b", context_tokens=0)
    engine = CompletionEngine(loaded, settings.engine_config())
    with (
        TestClient(create_app(settings, engine)) as client,
        client.websocket_connect("/v1/documents", headers=KEYS) as ws,
    ):
        ws.send_json({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": TEXT})
        position = {"line": 5, "character": 8}
        ws.send_json({"type": "complete", "uri": URI, "position": position, "requestId": "a", "maxTokens": 6})
        first = ws.receive_json()
        assert first["type"] == "completion"
        rng = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}
        change = {"range": rng, "text": "import sys\n"}
        ws.send_json({"type": "change", "uri": URI, "version": 2, "changes": [change]})
        position = {"line": 6, "character": 8}
        ws.send_json({"type": "complete", "uri": URI, "position": position, "requestId": "b", "maxTokens": 6})
        second = ws.receive_json()
        assert second["type"] == "completion" and second["usage"]["reused_prompt_tokens"] > 0
        doc = client.get("/v1/documents", params={"uri": URI}, headers=KEYS).json()
        cache = doc["kvCache"]
        assert cache is not None and cache["tokens"] > 0 and cache["bytes"] > 0
        assert [layer[0] for layer in cache["layers"]] == [1, 2, 2, 2]  # KV heads by layer
        assert {layer[1] for layer in cache["layers"]} == {cache["tokens"]}
        assert {layer[2] for layer in cache["layers"]} == {16}
        # another tenant sees neither the document nor its cache
        other = client.get("/v1/documents", params={"uri": URI}, headers={"Authorization": "Bearer key-b"})
        assert other.status_code == 404
