"""`WS /v1/documents` in process (the real app and a tiny real model): the protocol's rules,
limits, tenants, and completions with latest-wins cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from splice.assistant.app import create_app
from splice.assistant.settings import Settings
from splice.completion.engine import CompletionEngine, EngineConfig
from splice.completion.models import LoadedModel, ModelSpec
from splice_testkit.tiny import build_model, build_tokenizer

URI = "file:///src/app.py"
TEXT = "import os\n\n\ndef main():\n    path = os.getcwd()\n    \n"
KEYS = {"Authorization": "Bearer key-a"}


@pytest.fixture(scope="module")
def engine() -> CompletionEngine:
    tokenizer = build_tokenizer("plain")
    model = build_model(tokenizer, "llama", max_position_embeddings=512)
    loaded = LoadedModel(
        model, tokenizer, "tiny-llama", ModelSpec("dir", "tiny"), torch.device("cpu"), torch.float32, 512
    )
    return CompletionEngine(loaded, EngineConfig())


def make_client(engine: CompletionEngine, **overrides: Any) -> TestClient:
    settings = Settings(api_keys="key-a=team-a,key-b=team-b", **overrides)
    return TestClient(create_app(settings, engine))


@pytest.fixture
def client(engine: CompletionEngine) -> Iterator[TestClient]:
    with make_client(engine) as c:
        yield c


def change(
    version: int, line: int, char: int, text: str, end: tuple[int, int] | None = None
) -> dict[str, Any]:
    e_line, e_char = end or (line, char)
    rng = {"start": {"line": line, "character": char}, "end": {"line": e_line, "character": e_char}}
    return {"type": "change", "uri": URI, "version": version, "changes": [{"range": rng, "text": text}]}


def open_msg(version: int = 1, text: str = TEXT, uri: str = URI) -> dict[str, Any]:
    return {"type": "open", "uri": uri, "languageId": "python", "version": version, "text": text}


def get(ws: Any, uri: str = URI) -> dict[str, Any]:
    ws.send_json({"type": "get", "uri": uri})
    reply: dict[str, Any] = ws.receive_json()
    return reply


def test_open_change_get_and_rest_view(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
        ws.send_json(open_msg())
        ws.send_json(change(2, 5, 4, "return path"))
        doc = get(ws)
        assert doc == {
            "type": "document",
            "uri": URI,
            "version": 2,
            "languageId": "python",
            "text": TEXT.replace("    \n", "    return path\n"),
        }
        rest = client.get("/v1/documents", params={"uri": URI}, headers=KEYS).json()
        assert rest["text"] == doc["text"] and rest["version"] == 2
        ws.send_json({"type": "ping", "id": 7})
        assert ws.receive_json() == {"type": "pong", "id": 7}
    # The connection's documents are released when it closes.
    gone = client.get("/v1/documents", params={"uri": URI}, headers=KEYS)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_document"


def test_version_gap_gets_resync_and_later_changes_wait_for_open(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
        ws.send_json(open_msg())
        ws.send_json(change(3, 0, 0, "# lost v2 before me\n"))
        assert ws.receive_json() == {
            "type": "resync",
            "uri": URI,
            "expectedVersion": 2,
            "reason": "version_gap",
            "message": "expected version 2, got 3",
        }
        ws.send_json(change(4, 0, 0, "x"))  # sent before the editor saw the resync: ignored
        ws.send_json(
            {"type": "complete", "uri": URI, "position": {"line": 0, "character": 0}, "requestId": "r"}
        )
        err = ws.receive_json()
        assert (err["type"], err["code"], err["requestId"]) == ("error", "resync_pending", "r")
        assert get(ws)["version"] == 1
        ws.send_json(open_msg(4, "x# v2\n" + TEXT))
        doc = get(ws)
        assert (doc["version"], doc["text"]) == (4, "x# v2\n" + TEXT)
        ws.send_json(change(5, 0, 1, "y"))
        assert get(ws)["text"].startswith("xy# v2")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (change(2, 40, 0, "x"), "out_of_range"),  # no line 40
        (change(2, 0, 99, "x"), "out_of_range"),  # past the end of line 0
        (change(2, 0, 5, "", end=(0, 2)), "out_of_range"),  # end before start
        (
            {"type": "change", "uri": URI, "version": 2, "changes": [{"range": {"start": 1}, "text": "x"}]},
            "invalid_change",
        ),
        (change(2, 0, 0, "\ud800"), "invalid_text"),
    ],
    ids=["line", "character", "reversed", "malformed", "lone-surrogate"],
)
def test_changes_that_cannot_be_applied_exactly_are_never_guessed(
    client: TestClient, bad: dict[str, Any], reason: str
) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
        ws.send_json(open_msg())
        ws.send_json(bad)
        reply = ws.receive_json()
        assert (reply["type"], reply["reason"], reply["expectedVersion"]) == ("resync", reason, 2)
        assert get(ws)["text"] == TEXT


def test_change_for_a_document_never_opened_gets_resync(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
        ws.send_json(change(2, 0, 0, "x"))
        assert ws.receive_json() == {
            "type": "resync",
            "uri": URI,
            "expectedVersion": None,
            "reason": "unknown_document",
        }


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "open", "uri": "u", "version": "1", "text": ""}', "invalid_message"),
        (
            '{"type": "complete", "uri": "u", "position": {"line": 0, "character": 0}, "requestId": "q"}',
            "unknown_document",
        ),
        ('{"type": "close", "uri": "nope"}', "unknown_document"),
    ],
)
def test_bad_messages_get_a_clear_error_and_the_session_goes_on(
    client: TestClient, raw: str, code: str
) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
        ws.send_text(raw)
        reply = ws.receive_json()
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert reply["message"]
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


def test_tenants_are_isolated_and_keys_are_required(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as a:
        a.send_json(open_msg(text="team a's secret"))
        get(a)
        with client.websocket_connect("/v1/documents?api_key=key-b") as b:  # browser style
            b.send_json({"type": "get", "uri": URI})
            assert b.receive_json()["code"] == "unknown_document"
        other = client.get("/v1/documents", params={"uri": URI}, headers={"Authorization": "Bearer key-b"})
        assert other.status_code == 404
    for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?api_key=wrong")):
        with client.websocket_connect("/v1/documents" + query, headers=headers) as ws:
            assert ws.receive_json()["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4401
    assert client.get("/v1/documents", params={"uri": URI}).status_code == 401
    assert client.post("/v1/completions", json={"prompt": "x"}).json()["error"]["code"] == "unauthorized"


def test_connection_limits(engine: CompletionEngine) -> None:
    with (
        make_client(
            engine, ws_max_documents=2, ws_max_message_bytes=2048, ws_rate_per_s=0.001, ws_rate_burst=4
        ) as c,
        c.websocket_connect("/v1/documents", headers=KEYS) as ws,
    ):
        ws.send_json(open_msg(uri="file:///1"))
        ws.send_json(open_msg(uri="file:///2"))
        ws.send_json(open_msg(uri="file:///3"))
        assert ws.receive_json()["code"] == "too_many_documents"
        ws.send_json(open_msg(uri="file:///1", text="x" * 5000))
        big = ws.receive_json()
        assert big["code"] == "message_too_large" and big["uri"] == "file:///1"
        ws.send_json({"type": "change", "uri": "file:///2", "version": 2, "changes": [{"text": "y" * 5000}]})
        assert ws.receive_json()["reason"] == "too_large"  # a refused change means resync
        # The 4th counted message (too large ones are refused before they are counted).
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["code"] == "rate_limited"


def gated(engine: CompletionEngine) -> tuple[threading.Event, Callable[[], None]]:
    """Hold the model's worker until the returned event is set (the real engine then runs)."""
    gate = threading.Event()
    real = engine.start

    def waiting(*args: Any, **kwargs: Any) -> Any:
        assert gate.wait(30), "test gate never opened"
        return real(*args, **kwargs)

    engine.start = waiting  # type: ignore[method-assign]

    def restore() -> None:
        engine.start = real  # type: ignore[method-assign]

    return gate, restore


def complete_msg(rid: str, uri: str = URI, line: int = 5, char: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "type": "complete",
        "uri": uri,
        "position": {"line": line, "character": char},
        "requestId": rid,
        **extra,
    }


def test_completion_and_cache_reuse(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
        ws.send_json(open_msg())
        ws.send_json(complete_msg("r1", maxTokens=8))
        first = ws.receive_json()
        assert first["type"] == "completion" and first["requestId"] == "r1" and first["version"] == 1
        assert first["usage"]["prompt_tokens"] > 0 and first["usage"]["reused_prompt_tokens"] == 0
        for item in first["items"]:
            assert item["text"] and item["range"]["start"] == {"line": 5, "character": 4}
        ws.send_json(change(2, 0, 0, "import sys\n"))
        ws.send_json(complete_msg("r2", line=6, maxTokens=8))
        second = ws.receive_json()
        assert second["version"] == 2
        assert second["usage"]["reused_prompt_tokens"] > 0  # the document cache followed the edit
        assert second["usage"]["encoded_prompt_tokens"] < second["usage"]["prompt_tokens"]
        ws.send_json(complete_msg("r3", version=1))
        assert ws.receive_json()["code"] == "version_mismatch"
        ws.send_json(complete_msg("r4", line=6, char=40))
        assert ws.receive_json()["code"] == "out_of_range"


def test_newer_complete_cancels_the_older_and_cancel_stops_a_request(
    client: TestClient, engine: CompletionEngine
) -> None:
    gate, restore = gated(engine)
    try:
        with client.websocket_connect("/v1/documents", headers=KEYS) as ws:
            ws.send_json(open_msg())
            ws.send_json(open_msg(uri="file:///other.py"))
            ws.send_json(complete_msg("busy", uri="file:///other.py", line=0, char=0, maxTokens=2))
            ws.send_json(complete_msg("old"))  # queued behind "busy"
            ws.send_json(complete_msg("new", maxTokens=2))  # latest wins
            ws.send_json(complete_msg("gone", uri="file:///other.py", line=0, char=0))  # replaces "busy"
            ws.send_json({"type": "cancel", "requestId": "gone"})
            replies = [ws.receive_json() for _ in range(2)]
            gate.set()
            replies += [ws.receive_json() for _ in range(2)]
    finally:
        restore()
    by_id = {r["requestId"]: r for r in replies}
    assert by_id["old"]["code"] == "cancelled"
    assert by_id["gone"]["code"] == "cancelled"
    assert by_id["busy"]["code"] == "cancelled"  # running when "gone" replaced it: stopped
    assert by_id["new"]["type"] == "completion"


def test_playground_is_served_from_its_build_and_only_from_there(
    engine: CompletionEngine, tmp_path: Any
) -> None:
    with make_client(engine, playground_dir=tmp_path / "missing") as c:
        missing = c.get("/playground/")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "playground_not_built"
        assert "npm run build" in missing.json()["error"]["message"]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<title>Splice playground</title>")
    (tmp_path / "secret.txt").write_text("not for the web")
    with make_client(engine, playground_dir=tmp_path / "site") as c:
        assert c.get("/playground", follow_redirects=False).headers["location"] == "/playground/"
        page = c.get("/playground/")
        assert page.status_code == 200 and "Splice playground" in page.text
        assert c.get("/playground/..%2Fsecret.txt").status_code == 404
        assert c.get("/playground/nope.js").json()["error"]["code"] == "not_found"
