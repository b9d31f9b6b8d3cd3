"""The real `splice serve` in a subprocess on a free port, called over HTTP.

Uses tiny random-weight models saved as checkpoints (no hub). Covers both request styles,
streaming, events, metrics, queueing (429 + Retry-After), cancellation on client disconnect,
prompt trimming, and a table of malformed or hostile requests that must each get a clear 4xx
while the server keeps serving.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest

from splice.bench.hostile_requests import HostileCase, hostile_cases
from splice.bench.server import running_server
from splice_testkit.tiny import save_model_dir

MAX_BODY = 65_536
TOKENS_LIMIT = 3000


def _tiny_server(
    factory: pytest.TempPathFactory, family: str, arch: str, context: int, **env: str
) -> Iterator[str]:
    model = save_model_dir(factory.mktemp(f"srv-{family}"), family, arch, max_position_embeddings=context)
    with running_server(str(model), env={"SPLICE_HOME": str(factory.mktemp("home")), **env}) as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefix-only tiny Llama; no queue, so a second concurrent request gets 429."""
    yield from _tiny_server(
        tmp_path_factory,
        "plain",
        "llama",
        4096,
        SPLICE_MAX_BODY_BYTES=str(MAX_BODY),
        SPLICE_MAX_TOKENS_LIMIT=str(TOKENS_LIMIT),
        SPLICE_QUEUE_SIZE="0",
    )


@pytest.fixture(scope="module")
def queued_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like `server`, but one request may wait for the model."""
    yield from _tiny_server(
        tmp_path_factory,
        "plain",
        "llama",
        4096,
        SPLICE_MAX_TOKENS_LIMIT=str(TOKENS_LIMIT),
        SPLICE_QUEUE_SIZE="1",
    )


@pytest.fixture(scope="module")
def fim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """StarCoder-style FIM tokens and a 128-token context, to exercise FIM prompts and trimming."""
    yield from _tiny_server(tmp_path_factory, "starcoder", "qwen2", 128)


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


def wait_for(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def complete(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


# --- happy paths -------------------------------------------------------------------------------


def test_health(server: str) -> None:
    body = httpx.get(f"{server}/v1/health").json()
    assert body["status"] == "ok"
    assert body["model"].startswith("srv-plain")
    assert body["device"] == "cpu"
    assert body["fim_template"] == "prefix-only"
    assert re.match(r"\d+\.\d+", body["version"])


def test_tabby_and_openai_bodies_give_the_same_completion(server: str) -> None:
    prefix, suffix = "import os\n\ndef main():\n    ", "\n\nmain()\n"
    tabby = complete(server, {"language": "python", "segments": {"prefix": prefix, "suffix": suffix}})
    openai = complete(server, {"prompt": prefix, "suffix": suffix})
    assert tabby.status_code == openai.status_code == 200
    a, b = tabby.json(), openai.json()
    assert a["id"].startswith("cmpl-") and a["id"] != b["id"]
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]
    assert a["usage"]["completion_tokens"] >= 1
    assert set(a["timings"]) >= {"queue_ms", "prompt_ms", "first_token_ms", "total_ms", "tokens_per_second"}


def stream_events(url: str, body: dict[str, object]) -> list[dict[str, object] | str]:
    events: list[dict[str, object] | str] = []
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize(
    "prefix,suffix",
    [("def foo(x):\n    return", ""), ("x = 1\n", ""), ("class A:\n    def f(self):\n        ", "\n")],
)
def test_stream_concatenates_to_the_plain_response(server: str, prefix: str, suffix: str) -> None:
    body = {"prompt": prefix, "suffix": suffix, "max_tokens": 60}
    plain = complete(server, body).json()
    events = stream_events(server, body)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    text = "".join(str(c["choices"][0]["text"]) for c in chunks)  # type: ignore[index]
    assert text == plain["choices"][0]["text"]
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]  # type: ignore[index]
    # the same tokens and text; the stream reuses the plain request's document cache (PIE) and
    # tokens (nothing changed: at most a window at the cursor is tokenized again)
    reuse = {"encoded_prompt_tokens", "reused_prompt_tokens", "refreshed_prompt_tokens", "tokenized_chars"}
    assert {k: v for k, v in final["usage"].items() if k not in reuse} == {  # type: ignore[union-attr]
        k: v for k, v in plain["usage"].items() if k not in reuse
    }
    assert final["usage"]["encoded_prompt_tokens"] < plain["usage"]["prompt_tokens"]  # type: ignore[index]
    assert final["usage"]["tokenized_chars"] <= plain["usage"]["tokenized_chars"] > 0  # type: ignore[index]


def test_stop_sequences(server: str) -> None:
    free = complete(server, {"prompt": "x = 1\n", "max_tokens": 30}).json()["choices"][0]["text"]
    assert len(free) > 4
    stop = free[2:4]
    cut = complete(server, {"prompt": "x = 1\n", "max_tokens": 30, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert stop not in cut["text"]


def test_early_exit_on_a_model_without_heads_is_a_clear_422(server: str) -> None:
    resp = complete(server, {"prompt": "x = 1\n", "max_tokens": 4, "early_exit": "on"})
    assert resp.status_code == 422
    assert "no exit heads" in resp.json()["error"]["message"]
    off = complete(server, {"prompt": "x = 1\n", "max_tokens": 4, "early_exit": "off"}).json()
    assert off["usage"]["exited_tokens"] == 0 and off["usage"]["decode_layers"] > 0


def test_events_are_recorded_and_counted(server: str) -> None:
    cid = complete(server, {"prompt": "x = 1\n", "max_tokens": 4}).json()["id"]
    before = metric(server, "splice_events_total", type="select")
    for kind in ("view", "select"):
        resp = httpx.post(f"{server}/v1/events", json={"type": kind, "completion_id": cid})
        assert resp.status_code == 200 and resp.json() == {"status": "recorded"}
    assert metric(server, "splice_events_total", type="select") == before + 1
    bad = httpx.post(f"{server}/v1/events", json={"type": "explode", "completion_id": cid})
    assert bad.status_code == 422 and "type" in bad.json()["error"]["message"]


def test_metrics_count_requests_latency_and_tokens(server: str) -> None:
    route = "/v1/completions"
    before = metric(server, "splice_requests_total", route=route, status="200")
    tokens_before = metric(server, "splice_completion_tokens_total")
    resp = complete(server, {"prompt": "a = 1\n", "max_tokens": 5}).json()
    assert metric(server, "splice_requests_total", route=route, status="200") == before + 1
    assert (
        metric(server, "splice_completion_tokens_total") == tokens_before + resp["usage"]["completion_tokens"]
    )
    assert metric(server, "splice_request_latency_seconds_count", route=route) >= 1
    assert metric(server, "splice_prompt_tokens_total") > 0


# --- queueing and cancellation -----------------------------------------------------------------

# A request that keeps the model busy for seconds: on this tiny model, greedy decoding after
# this prompt never emits an end token nor leaves the scope (checked by the first test below).
LONG = {"prompt": "a = [\n", "max_tokens": TOKENS_LIMIT}


def test_long_request_runs_to_its_limit(server: str) -> None:
    body = complete(server, {**LONG, "max_tokens": 400}).json()
    assert body["choices"][0]["finish_reason"] == "length", (
        "LONG no longer keeps the model busy: pick another"
    )


def _idle(url: str) -> bool:
    return metric(url, "splice_generation_in_progress") == 0


def test_busy_model_answers_429_with_retry_after(server: str) -> None:
    assert wait_for(lambda: _idle(server))
    results: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: results.append(complete(server, LONG)))
    worker.start()
    try:
        assert wait_for(lambda: metric(server, "splice_generation_in_progress") == 1)
        second = complete(server, {"prompt": "y = 2\n", "max_tokens": 4})
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "queue_full"
        assert int(second.headers["Retry-After"]) >= 1
    finally:
        worker.join(timeout=120)
    assert results and results[0].status_code == 200
    assert metric(server, "splice_queue_rejections_total") >= 1


def test_stream_disconnect_cancels_generation(server: str) -> None:
    assert wait_for(lambda: _idle(server))
    cancelled = metric(server, "splice_completions_total", finish_reason="cancelled")
    with httpx.stream("POST", f"{server}/v1/completions", json={**LONG, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200
        assert wait_for(lambda: metric(server, "splice_generation_in_progress") == 1)
    # leaving the block closes the connection mid-stream
    assert wait_for(
        lambda: metric(server, "splice_completions_total", finish_reason="cancelled") == cancelled + 1
    )
    assert wait_for(lambda: _idle(server))
    assert complete(server, {"prompt": "z = 3\n", "max_tokens": 3}).status_code == 200


def _send_raw(url: str, body: dict[str, object]) -> socket.socket:
    """Send a request on a raw socket, so the test decides when the client goes away."""
    host = urlparse(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((host.hostname, host.port))
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _cancelled(url: str) -> float:
    return metric(url, "splice_completions_total", finish_reason="cancelled")


def test_plain_request_disconnect_cancels_generation(server: str) -> None:
    assert wait_for(lambda: _idle(server))
    cancelled = _cancelled(server)
    with _send_raw(server, LONG):
        assert wait_for(lambda: metric(server, "splice_generation_in_progress") == 1)
    assert wait_for(lambda: _cancelled(server) == cancelled + 1)
    assert wait_for(lambda: _idle(server))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_request_abandoned_while_queued_leaves_the_queue(queued_server: str, stream: bool) -> None:
    """A client that leaves while waiting for the model frees its queue place; its job never runs."""
    url = queued_server
    assert wait_for(lambda: _idle(url))
    cancelled = _cancelled(url)
    with _send_raw(url, LONG):
        assert wait_for(lambda: metric(url, "splice_generation_in_progress") == 1)
        with _send_raw(url, {**LONG, "stream": stream}):
            assert wait_for(lambda: metric(url, "splice_queue_depth") == 1)
        assert wait_for(lambda: metric(url, "splice_queue_depth") == 0)  # left the queue at once
        assert _cancelled(url) == cancelled + 1
        assert metric(url, "splice_generation_in_progress") == 1  # the first one is still running
    assert wait_for(lambda: _cancelled(url) == cancelled + 2)
    assert wait_for(lambda: _idle(url))
    # nothing ran to its length: the abandoned request never started generating
    assert metric(url, "splice_completions_total", finish_reason="length") == 0


# --- FIM template and trimming -----------------------------------------------------------------


def test_fim_model_and_prompt_over_context_is_trimmed(fim_server: str) -> None:
    assert httpx.get(f"{fim_server}/v1/health").json()["fim_template"] == "starcoder"
    prefix = "".join(f"value_{i} = compute({i})\n" for i in range(300))
    resp = complete(
        fim_server, {"segments": {"prefix": prefix, "suffix": "print(1)\n" * 200}, "max_tokens": 16}
    )
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["prompt_tokens"] <= 128 - 16
    assert usage["trimmed_prompt_tokens"] > 0


# --- malformed and hostile requests ------------------------------------------------------------

HOSTILE = hostile_cases(MAX_BODY)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_request_gets_a_clear_4xx(server: str, case: HostileCase) -> None:
    if case.body is None:
        resp = httpx.get(f"{server}{case.path}")
    else:
        resp = httpx.post(
            f"{server}{case.path}", content=case.body, headers={"Content-Type": "application/json"}
        )
    assert resp.status_code == case.status, resp.text
    error = resp.json()["error"]
    assert error["code"] == case.code
    assert case.words.lower() in error["message"].lower(), error["message"]
    assert httpx.get(f"{server}/v1/health").status_code == 200  # still serving


def test_chunked_body_over_the_limit_is_413(server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(MAX_BODY // 1024 + 4):
            yield b"a" * 1024
        yield b'"}'

    resp = httpx.post(
        f"{server}/v1/completions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "body_too_large"
    assert httpx.get(f"{server}/v1/health").status_code == 200


def test_server_still_completes_after_the_hostile_table(server: str) -> None:
    assert complete(server, {"prompt": "print(", "max_tokens": 4}).status_code == 200
