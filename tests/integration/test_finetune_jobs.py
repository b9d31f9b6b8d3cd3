"""Fine-tune jobs end to end, tiny config-built model, real git repository.

In process (no Redis): team-a POSTs a job for its repository; the job trains, passes the gate and
registers the adapter; team-a's next WebSocket and REST completions name it, team-b's do not; no
restart. Bad requests get clear 4xx.

With the real Redis of SPLICE_TEST_REDIS_URL, real processes: `splice serve --redis` and `splice
worker --redis`; the worker is killed (SIGKILL) mid-job, a new one claims the job and resumes it
from its last checkpoint (the job records two attempts and more than one training run); a second
job is cancelled while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from splice.assistant.app import create_app
from splice.assistant.finetune_jobs import FINAL
from splice.assistant.settings import Settings
from splice.bench.server import running_server
from splice.completion.adapters import load_served_model
from splice.completion.engine import CompletionEngine
from splice.completion.models import parse_spec
from splice_testkit.gitrepo import team_repository
from splice_testkit.tiny import save_model_dir

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
JOB_SETTINGS = {
    "finetune_batch_size": 2,
    "finetune_seq_len": 128,
    "finetune_gate_tasks": 8,
    "finetune_heldout_commits": 1,
    "finetune_lr": 5e-3,
    "finetune_max_steps_limit": 400,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny"), "starcoder", "llama", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roots")
    team_repository(root / "team-repo", functions=12, newest_module=12)
    (root / "plain-folder").mkdir()
    (root / "plain-folder" / "x.py").write_text("x = 1\n")
    return root


def _finished(job: dict[str, Any]) -> bool:
    return job["state"] in FINAL


def _wait(get: Any, until: Any, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = get()
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def _ws_completion(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    with client.websocket_connect("/v1/documents", headers=headers) as ws:
        text = "def add(a, b):\n    return a + b\n\n\ndef f1(x):\n    "
        ws.send_json(
            {"type": "open", "uri": "file:///w/core.py", "languageId": "python", "version": 1, "text": text}
        )
        ws.send_json({"type": "complete", "uri": "file:///w/core.py", "requestId": "r1",
                      "position": {"line": 5, "character": 4}})  # fmt: skip
        while True:
            reply: dict[str, Any] = ws.receive_json()
            if reply.get("type") in ("completion", "error"):
                return reply


@pytest.fixture(scope="module")
def client(model_dir: Path, roots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        model=str(model_dir), adapter="none", device="cpu", home=tmp_path_factory.mktemp("home"),
        api_keys="key-a=team-a,key-b=team-b", repository_roots=str(roots), **JOB_SETTINGS,  # type: ignore[arg-type]
    )  # fmt: skip
    loaded = load_served_model(parse_spec(settings.model), settings.adapter, device="cpu", dtype="float32")
    with TestClient(create_app(settings, CompletionEngine(loaded, settings.engine_config()))) as c:
        yield c


def test_bad_fine_tune_requests_get_clear_4xx(client: TestClient, roots: Path) -> None:
    repo = client.post("/v1/repositories", json={"path": str(roots / "team-repo")}, headers=A).json()["id"]
    plain = client.post("/v1/repositories", json={"path": str(roots / "plain-folder")}, headers=A).json()[
        "id"
    ]
    cases = [
        (A, {"repository": "nope"}, 404, "unknown_repository"),
        (B, {"repository": repo}, 404, "unknown_repository"),  # another tenant's repository
        (A, {"repository": repo, "method": "dora"}, 422, "invalid_request"),
        (A, {"repository": repo, "max_steps": 0}, 422, "invalid_request"),
        (A, {"repository": repo, "max_steps": 10_000}, 422, "invalid_request"),
        (A, {"repository": repo, "surprise": 1}, 422, "invalid_request"),
        (A, {"repository": plain}, 422, "not_a_git_checkout"),
    ]
    for headers, body, status, code in cases:
        reply = client.post("/v1/fine-tunes", json=body, headers=headers)
        assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), (body, reply.json())
    assert client.get("/v1/fine-tunes/ft-missing", headers=A).status_code == 404
    assert client.delete("/v1/fine-tunes/ft-missing", headers=A).status_code == 404


def test_a_job_registers_the_tenants_adapter_and_only_that_tenant_uses_it(
    client: TestClient, roots: Path
) -> None:
    repo = client.post("/v1/repositories", json={"path": str(roots / "team-repo")}, headers=A).json()["id"]
    assert _ws_completion(client, A)["adapter"] is None
    # an accepted completion in one of the repository's files becomes training data
    core = roots / "team-repo" / "pkg" / "core.py"
    served = client.post(
        "/v1/completions",
        json={"prompt": "def f1(x):\n    ", "max_tokens": 4, "document": str(core)},
        headers=A,
    ).json()
    assert (
        client.post(
            "/v1/events", json={"type": "select", "completion_id": served["id"]}, headers=A
        ).status_code
        == 200
    )
    assert client.get("/v1/events", headers=A).json()["events"][-1]["accepted"] is (
        served["choices"][0]["text"] != ""
    )
    job = client.post("/v1/fine-tunes", json={"repository": repo, "max_steps": 40}, headers=A)
    assert job.status_code == 202, job.json()
    job_id = job.json()["id"]
    assert client.get(f"/v1/fine-tunes/{job_id}", headers=B).status_code == 404  # jobs are the tenant's
    assert job_id not in [j["id"] for j in client.get("/v1/fine-tunes", headers=B).json()["fine_tunes"]]
    done = _wait(lambda: client.get(f"/v1/fine-tunes/{job_id}", headers=A).json(),
                 _finished)  # fmt: skip
    assert done["state"] == "succeeded", done["gate"]
    assert done["data"]["accepted_samples"] == 1
    gate = done["gate"]
    assert gate["beats_current"] and gate["middle_loss"]["after"] < gate["middle_loss"]["before"]
    adapters = client.get("/v1/adapters", headers=A).json()
    assert adapters["current"] == done["adapter"]
    assert adapters["adapters"][-1]["gate"] == gate
    assert client.get("/v1/adapters", headers=B).json() == {"current": None, "adapters": []}

    assert _ws_completion(client, A)["adapter"] == done["adapter"]  # no restart
    assert _ws_completion(client, B)["adapter"] is None
    rest = client.post(
        "/v1/completions", json={"prompt": "def f1(x):\n    ", "max_tokens": 4}, headers=A
    ).json()
    assert rest["adapter"] == done["adapter"]
    other = client.post(
        "/v1/completions", json={"prompt": "def f1(x):\n    ", "max_tokens": 4}, headers=B
    ).json()
    assert other["adapter"] is None


# -- real processes, real Redis ----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = os.environ.get("SPLICE_TEST_REDIS_URL")
    if not url:
        pytest.skip("SPLICE_TEST_REDIS_URL is not set (CI starts redis-server and sets it)")
    return url


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "splice.assistant.cli", "worker", "--claim-idle-s", "2"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_a_killed_worker_resumes_the_job_and_cancel_stops_one(
    redis_url: str, model_dir: Path, roots: Path, tmp_path: Path
) -> None:
    prefix = f"splice-test-{uuid.uuid4().hex}:"
    env = {
        **os.environ,
        "SPLICE_HOME": str(tmp_path / "home"),
        "SPLICE_ADAPTER": "none",
        "SPLICE_DEVICE": "cpu",
        "SPLICE_REDIS_URL": redis_url,
        "SPLICE_REDIS_PREFIX": prefix,
        "SPLICE_API_KEYS": "key-a=team-a,key-b=team-b",
        "SPLICE_REPOSITORY_ROOTS": str(roots),
        "SPLICE_MODEL": str(model_dir),
        **{f"SPLICE_{k.upper()}": str(v) for k, v in JOB_SETTINGS.items()},
    }
    log = tmp_path / "workers.log"
    with running_server(str(model_dir), env=env) as url:
        http = httpx.Client(base_url=url, timeout=30)
        repo = http.post("/v1/repositories", json={"path": str(roots / "team-repo")}, headers=A).json()["id"]
        job_id = http.post("/v1/fine-tunes", json={"repository": repo, "max_steps": 200}, headers=A).json()[
            "id"
        ]

        def get() -> dict[str, Any]:
            return http.get(f"/v1/fine-tunes/{job_id}", headers=A).json()

        first = _worker(env, log)
        try:
            # past the first checkpoint (step 20): the job must resume, not restart
            running = _wait(get, lambda j: j["state"] == "running" and j["step"] >= 25)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = running["step"]
            second = _worker(env, log)
            try:
                done = _wait(get, _finished)
                assert done["state"] in ("succeeded", "rejected"), (done, log.read_text()[-3000:])
                assert done["attempts"] == 2 and done["step"] == 200 and killed_at < 200
                # the second worker resumed from a checkpoint (the trainer logs it), not from step 0
                train_log = tmp_path / "home" / "jobs" / job_id / "train" / "train_log.jsonl"
                records = [json.loads(line) for line in train_log.read_text().splitlines()]
                resumed = [r["step"] for r in records if r["event"] == "resume"]
                assert len(resumed) == 1 and 0 < resumed[0] < 200, records[-3:]

                cancel_id = http.post("/v1/fine-tunes", json={"repository": repo, "max_steps": 400},
                                      headers=A).json()["id"]  # fmt: skip
                _wait(lambda: http.get(f"/v1/fine-tunes/{cancel_id}", headers=A).json(),
                      lambda j: j["state"] == "running" and j["step"] >= 2)  # fmt: skip
                assert http.delete(f"/v1/fine-tunes/{cancel_id}", headers=B).status_code == 404
                assert http.delete(f"/v1/fine-tunes/{cancel_id}", headers=A).status_code == 200
                cancelled = _wait(lambda: http.get(f"/v1/fine-tunes/{cancel_id}", headers=A).json(),
                                  _finished)  # fmt: skip
                assert cancelled["state"] == "cancelled" and cancelled["step"] < 400
                assert http.delete(f"/v1/fine-tunes/{cancel_id}", headers=A).status_code == 409
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(20)
        finally:
            if first.poll() is None:
                first.kill()
