"""The recent-edits slot end to end: what a tenant's editor typed over the WebSocket shows, as a
unified diff, in that tenant's next completions (REST and WS), takes prompt tokens, and never
shows in another tenant's; with SPLICE_EDIT_CONTEXT_TOKENS=0 there is no slot."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from unit.test_engine import make_engine

from splice.assistant.app import create_app
from splice.assistant.settings import Settings
from splice.completion.engine import CompletionEngine

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
TEXT = "def fetch(url, timeout):\n    return get(url, timeout)\n"
URI = "file:///work/shop/net.py"


@pytest.fixture(scope="module")
def engine() -> CompletionEngine:
    return make_engine(context=1024)


def _client(engine: CompletionEngine, tmp_path: Any, tokens: int) -> TestClient:
    settings = Settings(api_keys="key-a=team-a,key-b=team-b", home=tmp_path, edit_context_tokens=tokens)
    return TestClient(create_app(settings, engine))


def _rest(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    body = {
        "segments": {"prefix": "def get(", "suffix": "", "filepath": "shop/other.py"},
        "max_tokens": 2,
        "debug_options": {"return_snippets": True},
    }
    response = client.post("/v1/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _edit(ws: Any) -> None:
    ws.send_json({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": TEXT})
    at = TEXT.index("timeout") + len("timeout")
    for version, ch in enumerate("_s", start=2):  # typed one key at a time
        ws.send_json(
            {
                "type": "change",
                "uri": URI,
                "version": version,
                "changes": [
                    {
                        "range": {
                            "start": {"line": 0, "character": at + version - 2},
                            "end": {"line": 0, "character": at + version - 2},
                        },
                        "text": ch,
                    }
                ],
            }
        )
    ws.send_json({"type": "get", "uri": URI})
    assert ws.receive_json()["text"].startswith("def fetch(url, timeout_s):")


def test_a_tenants_edits_reach_its_prompts_only(engine: CompletionEngine, tmp_path: Any) -> None:
    with _client(engine, tmp_path, 256) as client:
        before = _rest(client, A)["debug_data"]
        assert before["recent_edits"] == ""
        with client.websocket_connect("/v1/documents", headers=A) as ws:
            _edit(ws)
            after = _rest(client, A)["debug_data"]
            assert after["recent_edits"] == (
                "--- a/work/shop/net.py\n+++ b/work/shop/net.py\n@@ -1,1 +1,1 @@\n"
                "-def fetch(url, timeout):\n+def fetch(url, timeout_s):\n"
            )
            assert after["context_tokens"] > before["context_tokens"]  # the slot is in the prompt
            assert _rest(client, B)["debug_data"]["recent_edits"] == ""  # another tenant's prompt
            ws.send_json(
                {"type": "complete", "uri": URI, "requestId": "r1", "position": {"line": 1, "character": 4}}
            )
            reply = ws.receive_json()
            while reply["type"] != "completion":
                reply = ws.receive_json()
            assert reply["requestId"] == "r1"


def test_no_slot_when_it_is_off(engine: CompletionEngine, tmp_path: Any) -> None:
    with _client(engine, tmp_path, 0) as client, client.websocket_connect("/v1/documents", headers=A) as ws:
        _edit(ws)
        data = _rest(client, A)["debug_data"]
        assert data["recent_edits"] == "" and data["context_tokens"] == 0
