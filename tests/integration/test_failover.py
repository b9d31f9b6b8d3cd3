"""Restart and failover lose nothing: real `splice serve` replicas on the real Redis of
SPLICE_TEST_REDIS_URL, behind a real HAProxy, and an editor typing over the WebSocket while a
replica is killed with SIGKILL.

An edit is acknowledged once the server has answered something that depends on it (a `get` here).
After each kill the editor reconnects through HAProxy and resumes its document (`open` without
text): the replica it lands on reads the document from Redis; every acknowledged edit must be
there, and the text Redis holds must be exactly the editor's text at that version. The editor
then re-sends what the dead replica never stored (a full `open`, as the VS Code client does) and
goes on typing. The first completion after a failover must equal a full recompute.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from splice.bench.cluster import Cluster, Replica, cluster, haproxy_binary
from splice_testkit.editor import EditorDocument, lsp_position

ROUNDS = 3  # kills
EDITS_PER_ROUND = 700  # 2,100 edits in all
ACK_EVERY = 25
UNACKED_BURST = 60  # edits sent after the last acknowledgement, in flight when the replica dies


@pytest.fixture(params=[1, 2], ids=["restart", "failover"])
def redis_cluster(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One replica (kill -9, then the editor waits for its restart) or two (the editor fails over
    to the other while the killed one restarts), behind HAProxy, on a Redis key prefix of their own."""
    url = os.environ.get("SPLICE_TEST_REDIS_URL")
    if not url:
        pytest.skip("SPLICE_TEST_REDIS_URL is not set (CI starts redis-server and sets it)")
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (CI installs Debian's package)")
    prefix = f"splice-test-{uuid.uuid4().hex}:"
    env = {
        "SPLICE_REDIS_PREFIX": prefix,
        "SPLICE_HOME": str(tmp_path_factory.mktemp("home")),
        "SPLICE_WS_RATE_PER_S": "1000000",
        "SPLICE_WS_RATE_BURST": "1000000",
    }
    with cluster(
        str(tiny_model_dir), url, replicas=request.param, env=env, workdir=tmp_path_factory.mktemp("c")
    ) as c:
        yield c
    client = redis.Redis.from_url(url)
    keys = client.keys(prefix + "*")
    if keys:
        client.delete(*keys)
    client.close()


def call(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(msg))
    reply: dict[str, Any] = json.loads(ws.recv(timeout=30))
    return reply


def holder(c: Cluster) -> Replica:
    """The replica that holds the editor's connection (its gauge says so)."""
    for node in c.replicas:
        metrics = httpx.get(f"{node.url}/metrics", timeout=10).text
        for line in metrics.splitlines():
            if line.startswith("splice_editor_connections ") and float(line.split()[1]) >= 1:
                return node
    raise AssertionError("no replica holds the editor's connection")


def connect_through(c: Cluster, stack: ExitStack) -> ClientConnection:
    deadline = time.monotonic() + 30
    while True:
        try:
            return stack.enter_context(connect(c.ws_url, max_size=None, open_timeout=5))
        except (OSError, ConnectionClosed, InvalidStatus, TimeoutError):  # 503 while HAProxy sees none up
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def complete(ws: ClientConnection, doc: EditorDocument, request_id: str) -> dict[str, Any]:
    offset = len(doc.text) // 2
    ws.send(
        json.dumps(
            {
                "type": "complete",
                "uri": doc.uri,
                "requestId": request_id,
                "position": lsp_position(doc.text, offset),
                "maxTokens": 8,
            }
        )
    )
    while True:
        reply: dict[str, Any] = json.loads(ws.recv(timeout=120))
        if reply.get("requestId") == request_id:
            return reply


def test_kill_9_while_typing_loses_no_acknowledged_edit(redis_cluster: Cluster) -> None:
    c = redis_cluster
    rng = random.Random(20261205)
    source = "".join(f"def step_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(40))
    doc = EditorDocument(f"file:///failover/{uuid.uuid4().hex}.py", source)
    texts = {doc.version: doc.text}
    acked = doc.version
    lost = resumed = edits = 0
    beyond: list[int] = []  # unacknowledged edits Redis had at each failover

    stack = ExitStack()
    ws = connect_through(c, stack)
    ws.send(json.dumps(doc.open_message()))
    for kill in range(ROUNDS + 1):
        if kill > 0:
            # failover: reconnect through HAProxy and resume from Redis
            ws = connect_through(c, stack)
            ws.send(
                json.dumps({"type": "open", "uri": doc.uri, "languageId": "python", "version": doc.version})
            )
            reply = call(ws, {"type": "get", "uri": doc.uri})  # silent resume: the get answers
            if reply.get("type") == "resync":
                assert json.loads(ws.recv(timeout=30))["code"] == "unknown_document"  # the get's answer
                stored = httpx.get(f"{c.url}/v1/documents", params={"uri": doc.uri}, timeout=10).json()
                assert "version" in stored, stored
                assert stored["version"] >= acked, f"acknowledged version {acked} lost: Redis has {stored}"
                assert stored["text"] == texts[stored["version"]], "Redis holds a text the editor never had"
                lost += max(0, acked - stored["version"])
                beyond.append(stored["version"] - acked)
                ws.send(json.dumps(doc.open_message()))  # what the dead replica never stored
                reply = call(ws, {"type": "get", "uri": doc.uri})
            else:
                resumed += 1
            assert (reply["version"], reply["text"]) == (doc.version, doc.text), reply
            acked = doc.version
            first = complete(ws, doc, f"after-kill-{kill}")
            assert first["type"] == "completion", first
            usage = first["usage"]
            assert usage["encoded_prompt_tokens"] == usage["prompt_tokens"]  # a fresh replica: no cache
            offset = len(doc.text) // 2
            full = httpx.post(
                f"{c.url}/v1/completions",
                json={
                    "segments": {
                        "prefix": doc.text[:offset],
                        "suffix": doc.text[offset:],
                        "filepath": doc.uri,
                    },
                    "language": "python",
                    "max_tokens": 8,
                    "debug_options": {"compare_full": True},
                },
                timeout=120,
            ).json()
            expected = full["debug_data"]["full_recompute"]["text"]
            got = first["items"][0]["text"] if first["items"] else ""
            assert got == expected, (got, expected)
        if kill == ROUNDS:
            break
        for step in range(EDITS_PER_ROUND):
            ws.send(json.dumps(doc.random_change(rng)))
            texts[doc.version] = doc.text
            edits += 1
            if step % ACK_EVERY == ACK_EVERY - 1 and step < EDITS_PER_ROUND - UNACKED_BURST:
                reply = call(ws, {"type": "get", "uri": doc.uri})
                assert (reply["version"], reply["text"]) == (doc.version, doc.text), f"diverged at {edits}"
                acked = doc.version
        victim = holder(c)
        victim.kill()  # edits of the last burst are in flight: some stored, some not
        closed = False
        for _ in range(2000):  # the editor keeps typing until it notices
            try:
                ws.send(json.dumps(doc.random_change(rng)))
                texts[doc.version] = doc.text
                edits += 1
                ws.recv(timeout=0.01)
            except TimeoutError:
                continue
            except ConnectionClosed:
                closed = True
                break
        assert closed, "the connection outlived its replica"
        victim.start()  # back for the next round; the other replica serves meanwhile
    final = call(ws, {"type": "get", "uri": doc.uri})
    assert (final["version"], final["text"]) == (doc.version, doc.text)
    stack.close()
    assert edits >= 2000 and lost == 0
    print(
        f"{len(c.replicas)} replica(s): {edits} edits, {ROUNDS} kill -9, 0 acknowledged edits lost, "
        f"{resumed} clean resumes, unacknowledged edits found stored: {beyond}"
    )
