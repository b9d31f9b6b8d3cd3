"""schemathesis against the real `splice serve` (tiny model, subprocess, over HTTP): for every
operation in /openapi.json, valid and invalid requests generated from the schema. No answer may be
a 5xx, every answer must match what the schema documents (status, content type, body), and every
error must be `{"error": {"code": str, "message": str}}`.

CI runs a small form (SPLICE_FUZZ_EXAMPLES, default 15 per operation and mode); the full run is
`SPLICE_FUZZ_EXAMPLES=200 pytest tests/integration/test_openapi_fuzz.py`. What it found when it was
first run: a request with temperature 6e-77 was a 500 (logits / t overflowed; fixed in
`generation._sample`), the request bodies' nested schemas were dangling `$ref`s, 405s named only
one route's methods in `Allow`, and /metrics was documented as JSON."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from splice.bench.server import running_server
from splice_testkit.tiny import save_model_dir

AUTH = {"Authorization": "Bearer key-a"}
EXAMPLES = int(os.environ.get("SPLICE_FUZZ_EXAMPLES", "15"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "error_shape",  # splice_testkit.fuzz_checks
    ]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    roots = tmp_path_factory.mktemp("roots")
    (roots / "repo").mkdir()
    (roots / "repo" / "util.py").write_text("def add(a, b):\n    return a + b\n")
    model = save_model_dir(tmp_path_factory.mktemp("fuzz"), "plain", "llama", max_position_embeddings=2048)
    env = {
        "SPLICE_HOME": str(tmp_path_factory.mktemp("home")),
        "SPLICE_API_KEYS": "key-a=team-a,key-b=team-b",
        "SPLICE_REPOSITORY_ROOTS": str(roots),
        "SPLICE_MAX_TOKENS_LIMIT": "32",
    }
    with running_server(str(model), env=env) as url:
        yield url


def test_schemathesis_finds_no_5xx_and_every_error_has_the_error_shape(server: str, tmp_path: Path) -> None:
    """`schemathesis run` (valid and invalid data, then stateful sequences) with the error-shape
    check of `splice_testkit.fuzz_checks`; it exits non-zero on any failure."""
    tests = Path(__file__).resolve().parents[1]
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server}/openapi.json",
        "--checks",
        CHECKS,
        "--mode",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "20261206",
        "--header",
        f"Authorization: {AUTH['Authorization']}",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "splice_testkit.fuzz_checks", "PYTHONPATH": str(tests)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) >= 10 * EXAMPLES, out[-2000:]
    print(f"schemathesis: {generated.group(1)} cases, 0 failures")


def test_the_schema_has_no_dangling_references(server: str) -> None:
    """Every `$ref` in the served document resolves (request bodies' nested models included)."""
    doc = httpx.get(f"{server}/openapi.json").json()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert refs and all(ref.startswith("#/components/schemas/") for ref in refs)
    missing = {ref for ref in refs if ref.rsplit("/", 1)[1] not in schemas}
    assert not missing, missing
    assert {"Segments", "Error"} <= set(schemas)


def test_a_405_names_every_method_the_path_serves(server: str) -> None:
    response = httpx.request("DELETE", f"{server}/v1/events", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert set(response.json()["error"]) == {"code", "message"}
