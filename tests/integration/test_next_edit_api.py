"""Next-edit suggestions over REST (`POST /v1/next-edit`) and the editor protocol (`nextEdit`),
on a tiny random-weight model: the answer's window and edit are LSP ranges inside the document,
applying the edit changes only the window, asking never changes the server's document, and bad
requests get clear errors."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from unit.test_engine import make_engine

from splice.assistant import next_edits
from splice.assistant.app import create_app
from splice.assistant.documents import Position
from splice.assistant.settings import Settings
from splice.completion.engine import CompletionEngine, CompletionResult, GenerationParams, Timings
from splice.completion.next_edit import rewrite_input
from splice.completion.scheduler import Finished, Request
from splice_testkit.editor import lsp_position

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
URI = "file:///work/shop/cart.py"
TEXT = (
    "".join(f"def item_{i}(price, qty):\n    return price * qty + {i}\n\n" for i in range(12)) + "# é 𝄞 end\n"
)


@pytest.fixture(scope="module")
def engine() -> CompletionEngine:
    return make_engine(context=2048)


@pytest.fixture
def client(engine: CompletionEngine, tmp_path: Any) -> Any:
    settings = Settings(
        api_keys="key-a=team-a,key-b=team-b", home=tmp_path, edit_context_tokens=128, max_tokens_limit=200
    )
    with TestClient(create_app(settings, engine)) as c:
        yield c


def _offset(text: str, pos: dict[str, int]) -> int:
    lines = text.split("\n")
    before = sum(len(line) + 1 for line in lines[: pos["line"]])
    units, i, line = 0, 0, lines[pos["line"]]
    while units < pos["character"]:
        units += 2 if ord(line[i]) > 0xFFFF else 1
        i += 1
    return before + i


def _check_answer(text: str, body: dict[str, Any], cursor_line: int, before: int, after: int) -> None:
    window = body["window"]
    assert window["start"] == {"line": max(0, cursor_line - before), "character": 0}
    assert window["end"]["line"] == min(text.count("\n"), cursor_line + after + 1)
    finish = body.get("finish_reason", body.get("finishReason"))
    assert finish in ("stop", "length")
    assert len(body["edits"]) <= 1
    if finish == "length":
        assert body["edits"] == []  # a rewrite cut short is no suggestion
    for edit in body["edits"]:
        start, end = _offset(text, edit["range"]["start"]), _offset(text, edit["range"]["end"])
        w0, w1 = _offset(text, window["start"]), _offset(text, window["end"])
        assert w0 <= start <= end <= w1
        changed = text[:start] + edit["text"] + text[end:]
        assert changed != text
        assert changed[:w0] == text[:w0] and changed[len(changed) - (len(text) - w1) :] == text[w1:]


def test_rest_with_text(client: TestClient) -> None:
    pos = lsp_position(TEXT, TEXT.index("return price * qty + 4"))
    body = {"text": TEXT, "filepath": "shop/cart.py", "position": pos, "lines_before": 2, "lines_after": 3}
    response = client.post("/v1/next-edit", json=body, headers=A)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["object"] == "next_edit" and out["document"] is None and out["version"] is None
    _check_answer(TEXT, out, pos["line"], 2, 3)
    assert out["usage"]["completion_tokens"] >= 1
    metrics = client.get("/metrics").text
    assert "splice_next_edits_total{outcome=" in metrics


def test_a_synced_document_is_read_not_changed(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=A) as ws:
        ws.send_json({"type": "open", "uri": URI, "languageId": "python", "version": 3, "text": TEXT})
        pos = lsp_position(TEXT, TEXT.index("# é 𝄞 end") + len("# é 𝄞"))  # after an astral character
        response = client.post(
            "/v1/next-edit", json={"document": URI, "position": pos, "lines_before": 4}, headers=A
        )
        assert response.status_code == 200, response.text
        out = response.json()
        assert (out["document"], out["version"]) == (URI, 3)
        _check_answer(TEXT, out, pos["line"], 4, 5)
        doc = client.get("/v1/documents", params={"uri": URI}, headers=A).json()
        assert (doc["text"], doc["version"]) == (TEXT, 3)  # asking changed nothing
        # another tenant cannot ask about this tenant's document
        other = client.post("/v1/next-edit", json={"document": URI, "position": pos}, headers=B)
        assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_document"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"document": "file:///nope.py", "position": {"line": 0, "character": 0}}, 404, "unknown_document"),
        ({"text": "a\nb\n", "position": {"line": 5, "character": 0}}, 422, "out_of_range"),
        ({"text": "a\nb\n", "position": {"line": 0, "character": 9}}, 422, "out_of_range"),
        (
            {"text": "a\n", "position": {"line": 0, "character": 0}, "lines_before": 21},
            422,
            "invalid_request",
        ),
        ({"text": "a\n", "document": URI, "position": {"line": 0, "character": 0}}, 422, "invalid_request"),
        ({"position": {"line": 0, "character": 0}}, 422, "invalid_request"),
        ({"text": "a\n", "position": {"line": 0, "character": 0}, "max_tokens": 999}, 422, "invalid_request"),
        ({"text": "x" * 20_000 + "\n", "position": {"line": 0, "character": 0}}, 422, "window_too_large"),
        (
            {
                "text": "x = 1\n" * 90,
                "position": {"line": 40, "character": 0},
                "lines_before": 20,
                "lines_after": 20,
            },
            422,
            "window_too_large",
        ),  # needs more tokens than max_tokens_limit
    ],
)
def test_rest_bad_requests(client: TestClient, body: dict[str, Any], status: int, code: str) -> None:
    response = client.post("/v1/next-edit", json=body, headers=A)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_editor_next_edit(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=A) as ws:
        ws.send_json({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": TEXT})
        edited = TEXT.replace("def item_3(price, qty)", "def item_3(price, qty, tax)", 1)
        at = TEXT.index("qty)", TEXT.index("def item_3")) + 3
        start = lsp_position(TEXT, at)
        change = {"range": {"start": start, "end": start}, "text": ", tax"}
        ws.send_json({"type": "change", "uri": URI, "version": 2, "changes": [change]})
        pos = lsp_position(edited, at + 5)
        ws.send_json({"type": "nextEdit", "uri": URI, "position": pos, "requestId": 7, "linesAfter": 2})
        out = ws.receive_json()
        assert out["type"] == "nextEditResult", out
        assert (out["requestId"], out["uri"], out["version"]) == (7, URI, 2)
        _check_answer(edited, out, pos["line"], 5, 2)
        ws.send_json({"type": "get", "uri": URI})
        doc = ws.receive_json()
        assert (doc["text"], doc["version"]) == (edited, 2)  # the suggestion is not applied by itself


def test_editor_next_edit_errors(client: TestClient) -> None:
    with client.websocket_connect("/v1/documents", headers=A) as ws:
        origin = {"line": 0, "character": 0}
        ws.send_json({"type": "nextEdit", "uri": URI, "position": origin, "requestId": "a"})
        assert _error(ws) == ("unknown_document", "a")
        ws.send_json({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": "x\n"})
        ws.send_json(
            {"type": "nextEdit", "uri": URI, "position": {"line": 9, "character": 0}, "requestId": "b"}
        )
        assert _error(ws) == ("out_of_range", "b")
        ws.send_json(
            {"type": "nextEdit", "uri": URI, "position": origin, "requestId": "c", "linesBefore": 40}
        )
        assert _error(ws) == ("invalid_message", "c")
        ws.send_json({"type": "nextEdit", "uri": URI, "position": origin, "requestId": "d", "version": 5})
        assert _error(ws) == ("version_mismatch", "d")
        ws.send_json({"type": "change", "uri": URI, "version": 9, "changes": [{"text": "y\n"}]})  # a gap
        assert ws.receive_json()["type"] == "resync"
        ws.send_json({"type": "nextEdit", "uri": URI, "position": origin, "requestId": "e"})
        assert _error(ws) == ("resync_pending", "e")
        ws.send_json({"type": "get", "uri": URI})
        assert ws.receive_json()["text"] == "x\n"


def _error(ws: Any) -> tuple[str, Any]:
    msg = ws.receive_json()
    assert msg["type"] == "error", msg
    assert msg["message"]
    return msg["code"], msg.get("requestId")


def test_a_rewrite_becomes_a_minimal_edit_in_utf16_ranges(engine: CompletionEngine, tmp_path: Any) -> None:
    """The answer for a chosen rewrite (the model's part is the tests above): the edit covers
    only what changed, and its LSP characters count UTF-16 units after an astral character."""
    app = create_app(Settings(home=tmp_path), engine)
    service = app.state.splice.completions
    text = "x = 0\na = '𝄞'; b = 1\nc = 2\n"
    window, _ = next_edits.plan(service, text, Position(0, 0), 0, 2, None)
    assert window.anchor == "x = 0\n"  # the model writes the window after its first line
    rewrite = "a = '𝄞'; b = 10\nc = 2\n"
    request = Request(rewrite_input(window, "python", None), GenerationParams())
    job = next_edits.NextEditJob(request, window, text, None, None)
    result = CompletionResult(rewrite, rewrite, "stop", 10, 8, 0, Timings())
    out = next_edits.answer(service, job, Finished(result, 0.0))
    assert out["edits"] == [
        {"range": {"start": {"line": 1, "character": 15}, "end": {"line": 1, "character": 15}}, "text": "0"}
    ]
    assert out["window"] == {"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}}
    cut = CompletionResult(rewrite, rewrite, "length", 10, 8, 0, Timings())
    assert next_edits.answer(service, job, Finished(cut, 0.0))["edits"] == []


def test_next_edit_prompts_carry_the_recent_edits_by_default(engine: CompletionEngine, tmp_path: Any) -> None:
    """Completions leave the recent-edits slot off by default (SPLICE_EDIT_CONTEXT_TOKENS=0); a
    next-edit prompt has its own budget (SPLICE_NEXT_EDIT_CONTEXT_TOKENS, 256): the edits are
    what a suggestion follows from."""
    settings = Settings(home=tmp_path)
    assert settings.edit_context_tokens == 0 and settings.next_edit_context_tokens == 256
    with TestClient(create_app(settings, engine)) as c, c.websocket_connect("/v1/documents") as ws:
        ws.send_json({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": TEXT})
        at = lsp_position(TEXT, TEXT.index("qty)", TEXT.index("def item_3")) + 3)
        change = {"range": {"start": at, "end": at}, "text": ", tax"}
        ws.send_json({"type": "change", "uri": URI, "version": 2, "changes": [change]})
        ws.send_json({"type": "get", "uri": URI})
        text = ws.receive_json()["text"]
        service = c.app.state.splice.completions
        window, params = next_edits.plan(service, text, Position(at["line"], at["character"] + 5), 2, 2, None)
        job = c.portal.call(
            lambda: next_edits.prepare(
                service, window, params, text, tenant="default", uri=URI, filepath=None, language="python"
            )
        )
        context = job.request.input.context  # (commented: the tiny tokenizer has no file separator)
        assert "-def item_3(price, qty):" in context and "+def item_3(price, qty, tax):" in context
        assert service.recent_edits_text("default") == ""  # the completions' slot stays off
