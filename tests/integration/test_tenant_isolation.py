"""Tenant isolation: two tenants (API keys of team-a and team-b) on one server, in memory and with
the real Redis of SPLICE_TEST_REDIS_URL. Every route and editor message is tried with the other
tenant's ids: each answers 404 (or the protocol's unknown_document), exactly as for an id that
does not exist, and nothing one tenant did shows in another's answers. A property test then runs
random sequences of both tenants' calls against a model of what each owns."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from unit.test_engine import make_engine

from splice.assistant.app import create_app
from splice.assistant.redis_state import RedisDocumentStore, scoped
from splice.assistant.settings import Settings
from splice.completion.engine import CompletionEngine

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
SOURCES = {
    "shop/pricing.py": "TAX_RATE = 0.2\n\n\ndef compute_discount(total, pct):\n    return total * pct\n",
    "shop/cart.py": "from .pricing import compute_discount\n\n\ndef checkout(xs):\n    return sum(xs)\n",
}


@pytest.fixture(scope="module")
def engine() -> CompletionEngine:
    return make_engine(context=1024)


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(
    request: pytest.FixtureRequest, engine: CompletionEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    """A server with two tenants, repository roots, and team-a's repository registered and indexed."""
    roots = tmp_path_factory.mktemp("roots")
    repo = roots / "shop-repo"
    for rel, text in SOURCES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    env: dict[str, Any] = {}
    prefix = f"splice-test-{uuid.uuid4().hex}:"
    if request.param == "redis":
        url = os.environ.get("SPLICE_TEST_REDIS_URL")
        if not url:
            pytest.skip("SPLICE_TEST_REDIS_URL is not set (CI starts redis-server and sets it)")
        env = {"redis_url": url, "redis_prefix": prefix}
    settings_ = Settings(
        api_keys="key-a=team-a,key-b=team-b",
        repository_roots=str(roots),
        home=tmp_path_factory.mktemp("home"),
        **env,
    )
    with TestClient(create_app(settings_, engine)) as client:
        yield client, repo
        if request.param == "redis":  # the suite ran on Redis indeed: documents, events, registry
            r = redis.Redis.from_url(os.environ["SPLICE_TEST_REDIS_URL"], decode_responses=True)
            deadline = time.monotonic() + 10  # the last connections' releases may be in flight
            while r.keys(prefix + "doc:*") and time.monotonic() < deadline:
                time.sleep(0.05)
            kinds = {key[len(prefix) :].split(":")[0] for key in r.keys(prefix + "*")}
            r.close()
            assert {"events", "repositories", "repository-status"} <= kinds, kinds
            assert "doc" not in kinds  # every editor connection released its documents
    if request.param == "redis":
        r = redis.Redis.from_url(os.environ["SPLICE_TEST_REDIS_URL"])
        keys = r.keys(prefix + "*")
        if keys:
            r.delete(*keys)
        r.close()


def register(client: TestClient, repo: Path, headers: dict[str, str]) -> str:
    r = client.post("/v1/repositories", json={"path": str(repo)}, headers=headers)
    assert r.status_code == 202, r.text
    repo_id: str = r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/repositories/{repo_id}", headers=headers).json()["status"] != "ready":
        assert time.monotonic() < deadline, "indexing did not finish"
        time.sleep(0.05)
    return repo_id


def not_found(r: Any, code: str) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == code, r.text


def test_another_tenants_repository_is_404_everywhere(server: tuple[TestClient, Path]) -> None:
    client, repo = server
    repo_id = register(client, repo, A)
    # team-a sees it and can use it
    assert [r["id"] for r in client.get("/v1/repositories", headers=A).json()["repositories"]] == [repo_id]
    hits = client.post("/v1/search", json={"repository": repo_id, "query": "discount"}, headers=A).json()
    assert hits["snippets"], hits
    # team-b: not listed, not readable, not searchable, not usable as context: a 404 like a
    # repository that does not exist (existence is not revealed)
    assert client.get("/v1/repositories", headers=B).json()["repositories"] == []
    not_found(client.get(f"/v1/repositories/{repo_id}", headers=B), "unknown_repository")
    not_found(client.get("/v1/repositories/no-such-repo", headers=B), "unknown_repository")
    for query in ({"query": "discount"}, {"filepath": "shop/cart.py", "prefix": "def f():\n    "}):
        r = client.post("/v1/search", json={"repository": repo_id, **query}, headers=B)
        not_found(r, "unknown_repository")
    body = {
        "segments": {
            "prefix": "from .pricing import compute_discount\n\ndef f():\n    return ",
            "filepath": "",
        },
        "max_tokens": 2,
        "debug_options": {"return_snippets": True},
    }
    named = {**body, "repository": repo_id, "segments": {**body["segments"], "filepath": "shop/cart.py"}}
    not_found(client.post("/v1/completions", json=named, headers=B), "unknown_repository")
    not_found(client.post("/v1/completions", json={**named, "stream": True}, headers=B), "unknown_repository")
    # an absolute path inside team-a's checkout gives team-a context, and team-b none
    by_path = {**body, "segments": {**body["segments"], "filepath": str(repo / "shop" / "cart.py")}}
    mine = client.post("/v1/completions", json=by_path, headers=A).json()
    assert mine["debug_data"]["snippets"], mine
    theirs = client.post("/v1/completions", json=by_path, headers=B).json()
    assert theirs["debug_data"]["snippets"] == [], theirs
    # team-b registering the same folder gets a registration and an index of its own
    own_id = register(client, repo, B)
    assert [r["id"] for r in client.get("/v1/repositories", headers=B).json()["repositories"]] == [own_id]
    assert own_id != repo_id
    not_found(client.get(f"/v1/repositories/{own_id}", headers=A), "unknown_repository")


def test_another_tenants_unsaved_buffer_never_reaches_my_search(server: tuple[TestClient, Path]) -> None:
    """team-a types an unsaved function in its repository; team-b, with its own registration of
    the same folder, never finds it (each tenant's index follows its own editors only)."""
    client, repo = server
    a_id, b_id = register(client, repo, A), register(client, repo, B)
    uri = (repo / "shop" / "cart.py").as_uri()
    secret = "def unsaved_team_a_helper_xyz():\n    return 42\n"
    with client.websocket_connect("/v1/documents", headers=A) as ws:
        ws.send_json({"type": "open", "uri": uri, "languageId": "python", "version": 1, "text": secret})
        ws.send_json({"type": "get", "uri": uri})
        assert ws.receive_json()["version"] == 1
        found = client.post(
            "/v1/search", json={"repository": a_id, "query": "unsaved_team_a_helper_xyz"}, headers=A
        ).json()["snippets"]
        assert found, "team-a's own unsaved buffer is searchable by team-a"
        leaked = client.post(
            "/v1/search", json={"repository": b_id, "query": "unsaved_team_a_helper_xyz"}, headers=B
        ).json()["snippets"]
        assert leaked == []


def test_another_tenants_document_is_unknown_on_every_route_and_message(
    server: tuple[TestClient, Path],
) -> None:
    client, _ = server
    uri = f"file:///isolation/{uuid.uuid4().hex}.py"
    text = "def main():\n    return 1\n"
    with client.websocket_connect("/v1/documents", headers=A) as a:
        a.send_json({"type": "open", "uri": uri, "languageId": "python", "version": 1, "text": text})
        a.send_json({"type": "get", "uri": uri})
        assert a.receive_json()["text"] == text
        store = client.app.state.splice.documents  # type: ignore[attr-defined]
        if isinstance(store, RedisDocumentStore):  # held in Redis, under team-a's key only
            r = redis.Redis.from_url(os.environ["SPLICE_TEST_REDIS_URL"], decode_responses=True)
            assert r.hget(scoped(store.prefix, "doc", "team-a", uri), "text") == text
            assert not r.exists(scoped(store.prefix, "doc", "team-b", uri))
            r.close()
        not_found(client.get("/v1/documents", params={"uri": uri}, headers=B), "unknown_document")
        with client.websocket_connect("/v1/documents?api_key=key-b") as b:
            b.send_json({"type": "get", "uri": uri})
            assert b.receive_json()["code"] == "unknown_document"
            b.send_json(
                {"type": "complete", "uri": uri, "requestId": 1, "position": {"line": 0, "character": 0}}
            )
            assert b.receive_json()["code"] == "unknown_document"
            b.send_json({"type": "close", "uri": uri})
            assert b.receive_json()["code"] == "unknown_document"
            change = {
                "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                "text": "x",
            }
            b.send_json({"type": "change", "uri": uri, "version": 2, "changes": [change]})
            reply = b.receive_json()
            assert reply["type"] == "resync" and reply["reason"] == "unknown_document"
            # resuming (open without text) another tenant's document looks like resuming nothing
            b.send_json({"type": "open", "uri": uri, "languageId": "python", "version": 1})
            reply = b.receive_json()
            assert reply == {
                "type": "resync",
                "uri": uri,
                "expectedVersion": None,
                "reason": "unknown_document",
            }
            # team-b opening the same uri gets its own document; team-a's is untouched
            b.send_json({"type": "open", "uri": uri, "languageId": "python", "version": 5, "text": "b's"})
            b.send_json({"type": "get", "uri": uri})
            assert b.receive_json()["text"] == "b's"
        a.send_json({"type": "get", "uri": uri})
        assert a.receive_json() == {
            "type": "document",
            "uri": uri,
            "version": 1,
            "languageId": "python",
            "text": text,
        }


def test_caches_events_and_metrics_do_not_cross_tenants(server: tuple[TestClient, Path]) -> None:
    client, _ = server
    name = f"doc-{uuid.uuid4().hex}"
    body = {
        "segments": {"prefix": "def add(a, b):\n    return a" * 8, "suffix": "\n"},
        "document": name,
        "max_tokens": 2,
    }
    first = client.post("/v1/completions", json=body, headers=A).json()
    again = client.post("/v1/completions", json=body, headers=A).json()
    other = client.post("/v1/completions", json=body, headers=B).json()
    assert again["usage"]["reused_prompt_tokens"] > 0  # team-a's own cache is reused
    assert other["usage"]["reused_prompt_tokens"] == 0  # team-b never reuses team-a's cache
    assert other["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]

    completion_id = f"cmpl-{uuid.uuid4().hex}"
    event = {"type": "select", "completion_id": completion_id, "choice_index": 0}
    assert client.post("/v1/events", json=event, headers=A).status_code == 200
    mine = client.get("/v1/events", headers=A).json()["events"]
    assert completion_id in [e["completion_id"] for e in mine]
    theirs = client.get("/v1/events", headers=B).json()["events"]
    assert completion_id not in [e["completion_id"] for e in theirs]

    metrics = client.get("/metrics").text
    for name_ in ("team-a", "team-b", name, "shop-repo"):
        assert name_ not in metrics  # no label carries a tenant's names


def test_unknown_or_missing_keys_see_nothing(server: tuple[TestClient, Path]) -> None:
    client, _ = server
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LWE="}):
        for method, path in (
            ("GET", "/v1/repositories"),
            ("GET", "/v1/repositories/x"),
            ("GET", "/v1/documents?uri=file:///x.py"),
            ("GET", "/v1/events"),
            ("POST", "/v1/search"),
            ("POST", "/v1/repositories"),
            ("POST", "/v1/events"),
            ("POST", "/v1/completions"),
        ):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"


OPS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["open", "change", "get", "rest_get", "close", "event", "events"]),
        st.integers(0, 2),  # which of three uris
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_call_sequences_never_cross_tenants(server: tuple[TestClient, Path], ops: list[Any]) -> None:
    """Random interleavings of both tenants' editor messages, REST reads and events, checked
    against a model: each tenant sees exactly its own documents (text and version) and events."""
    client, _ = server
    run = uuid.uuid4().hex
    uris = [f"file:///prop/{run}/{i}.py" for i in range(3)]
    model: dict[str, dict[str, tuple[int, str]]] = {"a": {}, "b": {}}
    events: dict[str, set[str]] = {"a": set(), "b": set()}
    with (
        client.websocket_connect("/v1/documents", headers=A) as wa,
        client.websocket_connect("/v1/documents", headers=B) as wb,
    ):
        ws = {"a": wa, "b": wb}
        headers = {"a": A, "b": B}
        for step, (who, op, i) in enumerate(ops):
            uri, mine = uris[i], model[who]
            if op == "open":
                text = f"{who}:{step}\n"
                ws[who].send_json(
                    {"type": "open", "uri": uri, "languageId": "python", "version": 1, "text": text}
                )
                mine[uri] = (1, text)
            elif op == "change":
                if uri not in mine:
                    continue  # a change of a document the editor never opened is not sent
                version, text = mine[uri]
                edit = {
                    "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                    "text": who,
                }
                ws[who].send_json({"type": "change", "uri": uri, "version": version + 1, "changes": [edit]})
                mine[uri] = (version + 1, who + text)
            elif op == "get":
                ws[who].send_json({"type": "get", "uri": uri})
                reply = ws[who].receive_json()
                if uri in mine:
                    assert (reply["version"], reply["text"]) == mine[uri], (who, reply)
                else:
                    assert reply["code"] == "unknown_document", (who, reply)
            elif op == "rest_get":
                r = client.get("/v1/documents", params={"uri": uri}, headers=headers[who])
                if uri in mine:
                    assert (r.json()["version"], r.json()["text"]) == mine[uri], (who, r.text)
                else:
                    not_found(r, "unknown_document")
            elif op == "close":
                ws[who].send_json({"type": "close", "uri": uri})
                if uri in mine:
                    del mine[uri]
                else:
                    assert ws[who].receive_json()["code"] == "unknown_document"
            elif op == "event":
                cid = f"cmpl-{run}-{step}"
                client.post(
                    "/v1/events",
                    json={"type": "view", "completion_id": cid, "choice_index": 0},
                    headers=headers[who],
                )
                events[who].add(cid)
            else:
                seen = {
                    e["completion_id"]
                    for e in client.get("/v1/events?limit=1000", headers=headers[who]).json()["events"]
                }
                ours = {c for c in seen if c.startswith(f"cmpl-{run}-")}
                assert ours == events[who], (who, ours, events[who])
