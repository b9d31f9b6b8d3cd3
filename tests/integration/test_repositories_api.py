# ruff: noqa: E501  (fixtures and request bodies read best on one line)
"""The repository API on a live `splice serve`: registration inside the allow-list only
(traversal, symlink escapes, relative paths and outside paths rejected), indexing status,
search, and completions that pull context from the registered repository (debug snippets),
with secrets never returned."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from splice.bench.server import running_server
from splice_testkit.tiny import save_model_dir

PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    base = tmp_path_factory.mktemp("repos")
    allowed = base / "allowed"
    repo = allowed / "shop"
    (repo / "shop").mkdir(parents=True)
    (repo / "shop" / "pricing.py").write_text(
        "def compute_discount(total: float, percent: float) -> float:\n    return total * percent / 100\n"
    )
    (repo / "shop" / "cart.py").write_text(
        "from .pricing import compute_discount\n\n\nclass Cart:\n    pass\n"
    )
    (repo / ".env").write_text("DATABASE_PASSWORD=hunter2hunter2hunter2\n")
    (repo / "id_ed25519").write_text(PEM)
    (repo / "shop" / "keys.py").write_text(f'DEPLOY_KEY = """{PEM}"""\n')
    outside = base / "outside"
    outside.mkdir()
    (outside / "private.py").write_text("def leaked_function(): pass\n")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    model = save_model_dir(tmp_path_factory.mktemp("model"), "plain", "llama", max_position_embeddings=2048)
    env = {"SPLICE_HOME": str(tmp_path_factory.mktemp("home")), "SPLICE_REPOSITORY_ROOTS": str(allowed)}
    with running_server(str(model), env=env) as url:
        yield url, repo, outside


def _wait_ready(url: str, repo_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        info = httpx.get(f"{url}/v1/repositories/{repo_id}").json()
        if info["status"] in ("ready", "failed") or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("{outside}", 403, "path_not_allowed"),
        ("{repo}/../../outside", 403, "path_not_allowed"),
        ("{repo}/../escape", 403, "path_not_allowed"),  # a symlink out of the allowed root
        ("/etc", 403, "path_not_allowed"),
        ("shop", 422, "invalid_path"),
        ("../../etc", 422, "invalid_path"),
        ("{repo}/missing", 404, "not_found"),
    ],
)
def test_registration_outside_the_allow_list_is_rejected(
    world: tuple[str, Path, Path], path: str, status: int, code: str
) -> None:
    url, repo, outside = world
    r = httpx.post(f"{url}/v1/repositories", json={"path": path.format(repo=repo, outside=outside)})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    listed = httpx.get(f"{url}/v1/repositories").json()["repositories"]
    assert all(not item["path"].startswith(str(outside)) for item in listed)


def test_bad_bodies_get_clear_errors(world: tuple[str, Path, Path]) -> None:
    url, repo, _ = world
    assert httpx.post(f"{url}/v1/repositories", json={}).status_code == 422
    r = httpx.post(f"{url}/v1/repositories", json={"path": str(repo), "languages": ["cobol"]})
    assert r.status_code == 422 and "cobol" in r.json()["error"]["message"]
    r = httpx.get(f"{url}/v1/repositories/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_repository"
    r = httpx.post(f"{url}/v1/search", json={"repository": "nope", "query": "x"})
    assert r.status_code == 404


def test_register_search_and_complete_with_context(world: tuple[str, Path, Path]) -> None:
    url, repo, _ = world
    r = httpx.post(f"{url}/v1/repositories", json={"path": str(repo)})
    assert r.status_code == 202, r.text
    repo_id = r.json()["id"]
    info = _wait_ready(url, repo_id)
    assert info["status"] == "ready", info
    assert info["index"]["files"] == 2 and info["progress"]["done"] == info["progress"]["total"]

    hits = httpx.post(f"{url}/v1/search", json={"repository": repo_id, "query": "discount"}).json()[
        "snippets"
    ]
    assert hits and hits[0]["path"] == "shop/pricing.py" and hits[0]["name"] == "compute_discount"
    for secret in ("hunter2hunter2hunter2", "DATABASE_PASSWORD", "OPENSSH PRIVATE KEY", "DEPLOY_KEY"):
        found = httpx.post(f"{url}/v1/search", json={"repository": repo_id, "query": secret}).json()
        assert found["snippets"] == [], secret

    prefix = "from .pricing import compute_discount\n\n\nclass Cart:\n    def total(self):\n        return "
    body = {
        "segments": {"prefix": prefix, "filepath": "shop/cart.py"},
        "repository": repo_id,
        "max_tokens": 4,
        "debug_options": {"return_snippets": True},
    }
    out = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    snippets = out["debug_data"]["snippets"]
    assert snippets[0]["path"] == "shop/pricing.py" and snippets[0]["source"] == "definition"
    assert out["debug_data"]["context_tokens"] > 0
    assert out["usage"]["prompt_tokens"] > out["debug_data"]["context_tokens"]
    # an absolute path inside the repository finds it without naming it
    body_abs = {**body, "segments": {"prefix": prefix, "filepath": str(repo / "shop" / "cart.py")}}
    body_abs.pop("repository")
    out_abs = httpx.post(f"{url}/v1/completions", json=body_abs, timeout=60).json()
    assert out_abs["debug_data"]["snippets"][0]["path"] == "shop/pricing.py"
    # retrieval can be switched off per request; without debug options there is no debug field
    off = {
        **body,
        "debug_options": {"return_snippets": True, "disable_retrieval_augmented_code_completion": True},
    }
    assert httpx.post(f"{url}/v1/completions", json=off, timeout=60).json()["debug_data"]["snippets"] == []
    plain = httpx.post(f"{url}/v1/completions", json={**body, "debug_options": None}, timeout=60).json()
    assert "debug_data" not in plain


def test_without_configured_roots_registration_is_refused(tmp_path: Path) -> None:
    model = save_model_dir(tmp_path / "m", "plain", "llama", max_position_embeddings=1024)
    with running_server(
        str(model), env={"SPLICE_HOME": str(tmp_path / "home"), "SPLICE_REPOSITORY_ROOTS": ""}
    ) as url:
        r = httpx.post(f"{url}/v1/repositories", json={"path": str(tmp_path)})
        assert r.status_code == 403 and r.json()["error"]["code"] == "repositories_disabled"
