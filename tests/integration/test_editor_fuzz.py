"""10,000 random editor edits over a real WebSocket to a live `splice serve`: after every
version the server's text equals the editor's; injected version gaps and out-of-range edits are
answered with resync and recover; nothing is lost."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from splice.bench.server import running_server
from splice_testkit.editor import EditorDocument, random_text

EDITS = 10_000
DOCUMENTS = 3


@pytest.fixture(scope="module")
def ws_url(tiny_model_dir: Path) -> Iterator[str]:
    env = {"SPLICE_WS_RATE_PER_S": "1000000", "SPLICE_WS_RATE_BURST": "1000000"}
    with running_server(str(tiny_model_dir), env=env) as url:
        yield url.replace("http://", "ws://") + "/v1/documents"


def call(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(msg))
    reply: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return reply


def assert_in_sync(ws: ClientConnection, doc: EditorDocument, step: int) -> None:
    server = call(ws, {"type": "get", "uri": doc.uri})
    assert server["type"] == "document", server
    assert (server["version"], server["text"]) == (doc.version, doc.text), f"diverged at edit {step}"


def test_ten_thousand_random_edits_stay_in_sync(ws_url: str) -> None:
    rng = random.Random(20261122)
    docs = [EditorDocument(f"file:///fuzz/{i}.py", random_text(rng, 200)) for i in range(DOCUMENTS)]
    gaps = out_of_range = resyncs = 0
    with connect(ws_url, max_size=None) as ws:
        for doc in docs:
            ws.send(json.dumps(doc.open_message()))
            assert_in_sync(ws, doc, 0)
        for step in range(1, EDITS + 1):
            doc = rng.choice(docs)
            if len(doc.text) > 3000:  # keep documents at a realistic size
                doc.text = doc.text[:1500]
                doc.version += 1
                ws.send(
                    json.dumps(
                        {
                            "type": "change",
                            "uri": doc.uri,
                            "version": doc.version,
                            "changes": [{"text": doc.text}],
                        }
                    )
                )
            fault = rng.random()
            if fault < 0.01:  # a lost message: the next change has a version gap
                doc.random_change(rng)
                gaps += 1
                expected, reason = doc.version, "version_gap"
                msg = doc.random_change(rng)
            elif fault < 0.02:  # a buggy client: a range past the end of the document
                doc.version += 1
                lines = doc.text.count("\n") + doc.text.count("\r") + 5
                bad = {
                    "range": {
                        "start": {"line": lines, "character": 0},
                        "end": {"line": lines, "character": 0},
                    },
                    "text": "x",
                }
                msg = {"type": "change", "uri": doc.uri, "version": doc.version, "changes": [bad]}
                out_of_range += 1
                expected, reason = doc.version, "out_of_range"
            else:
                msg = doc.random_change(rng)
                expected = None
            ws.send(json.dumps(msg))
            if expected is not None:
                reply = json.loads(ws.recv(timeout=10))
                assert reply["type"] == "resync", reply
                assert (reply["uri"], reply["expectedVersion"], reply["reason"]) == (
                    doc.uri,
                    expected,
                    reason,
                )
                resyncs += 1
                # Changes sent before the editor saw the resync are ignored until its open.
                ws.send(json.dumps(doc.random_change(rng)))
                ws.send(json.dumps(doc.open_message()))
            assert_in_sync(ws, doc, step)
        for doc in docs:
            assert_in_sync(ws, doc, EDITS)
    assert gaps > 50 and out_of_range > 50 and resyncs == gaps + out_of_range
