"""REST calls reuse the document's KV cache (PIE): only what an edit changed is encoded."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from splice.bench.server import running_server
from splice_testkit.tiny import save_model_dir


def source_file(lines: int) -> list[str]:
    return [f"    value_{i} = compute(value_{i - 1}, {i})  # step {i}\n" for i in range(lines)]


def serve_tiny(factory: pytest.TempPathFactory, context: int, **env: str) -> Iterator[str]:
    """A real server on a tiny StarCoder-tokenized Llama with `env` settings."""
    model = save_model_dir(factory.mktemp("model"), "starcoder", "llama", max_position_embeddings=context)
    with running_server(str(model), env={"SPLICE_HOME": str(factory.mktemp("home")), **env}) as url:
        yield url


@pytest.fixture(scope="module")
def fim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve_tiny(tmp_path_factory, 16384, SPLICE_MAX_PROMPT_TOKENS="12000")


def ask(url: str, prefix: str, suffix: str, filepath: str = "pkg/big.py") -> dict:  # type: ignore[type-arg]
    body = {"segments": {"prefix": prefix, "suffix": suffix, "filepath": filepath}, "max_tokens": 8}
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def counter(url: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_one_line_edit_in_a_4k_token_file_encodes_under_5_percent(fim_server: str) -> None:
    lines = source_file(400)
    cursor = 300
    head, tail = "def run():\n" + "".join(lines[:cursor]) + "    ", "".join(lines[cursor:])
    first = ask(fim_server, head, tail)["usage"]
    assert first["prompt_tokens"] >= 4000, first
    assert first["encoded_prompt_tokens"] == first["prompt_tokens"]  # nothing cached yet

    reused_before = counter(fim_server, "splice_prompt_tokens_reused_total")
    lines[120] = "    value_120 = recompute(value_119, 120)  # edited\n"  # one-line edit above the cursor
    head = "def run():\n" + "".join(lines[:cursor]) + "    "
    second = ask(fim_server, head, tail)["usage"]
    assert second["encoded_prompt_tokens"] < 0.05 * second["prompt_tokens"], second
    assert second["reused_prompt_tokens"] + second["encoded_prompt_tokens"] == second["prompt_tokens"]
    assert (
        counter(fim_server, "splice_prompt_tokens_reused_total") - reused_before
        == second["reused_prompt_tokens"]
    )

    # another document does not see this one's cache
    other = ask(fim_server, head, tail, filepath="pkg/other.py")["usage"]
    assert other["encoded_prompt_tokens"] == other["prompt_tokens"]


def test_repeated_request_encodes_nothing(fim_server: str) -> None:
    head, tail = "x = 1\n" * 50, "y = 2\n" * 50
    ask(fim_server, head, tail, filepath="same.py")
    again = ask(fim_server, head, tail, filepath="same.py")["usage"]
    assert again["encoded_prompt_tokens"] == 0 and again["reused_prompt_tokens"] == again["prompt_tokens"]


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose drift bound is so tight that every edit forces a full re-encode."""
    yield from serve_tiny(tmp_path_factory, 4096, SPLICE_DRIFT_FULL_BOUND="1e-9")


def test_forced_full_reencodes_and_refreshed_tokens_are_counted(bounded_server: str) -> None:
    lines = source_file(60)
    head, tail = "def run():\n" + "".join(lines[:40]) + "    ", "".join(lines[40:])
    ask(bounded_server, head, tail, filepath="drift.py")
    forced_before = counter(bounded_server, "splice_drift_forced_full_encodes_total")
    lines[10] = "    value_10 = recompute(value_9, 10)  # edited\n"
    head = "def run():\n" + "".join(lines[:40]) + "    "
    usage = ask(bounded_server, head, tail, filepath="drift.py")["usage"]
    assert usage["reused_prompt_tokens"] == 0  # encoded in full
    assert usage["encoded_prompt_tokens"] > usage["prompt_tokens"]  # plus the probe that decided it
    assert counter(bounded_server, "splice_drift_forced_full_encodes_total") == forced_before + 1


def test_compare_full_reports_what_a_full_recompute_gives(fim_server: str) -> None:
    lines = source_file(80)
    head, tail = "def run():\n" + "".join(lines[:50]) + "    ", "".join(lines[50:])
    ask(fim_server, head, tail, filepath="audit.py")
    refreshed_before = counter(fim_server, "splice_prompt_tokens_refreshed_total")
    lines[20] = "    value_20 = recompute(value_19, 20)  # edited\n"
    head = "def run():\n" + "".join(lines[:50]) + "    "
    body = {
        "segments": {"prefix": head, "suffix": tail, "filepath": "audit.py"},
        "max_tokens": 8,
        "debug_options": {"compare_full": True},
    }
    resp = httpx.post(f"{fim_server}/v1/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    audit = out["debug_data"]["full_recompute"]
    assert audit["next_token_kl"] >= 0.0 and isinstance(audit["next_token_top1_agree"], bool)
    assert audit["same_text"] == (audit["text"] == out["choices"][0]["text"])
    usage = out["usage"]
    assert 0 < usage["reused_prompt_tokens"] < usage["prompt_tokens"]  # the cache was used
    assert usage["refreshed_prompt_tokens"] > 0  # the kept tokens after the edit (first_k)
    assert (
        counter(fim_server, "splice_prompt_tokens_refreshed_total")
        == refreshed_before + usage["refreshed_prompt_tokens"]
    )
    # the audit's full recompute equals a stateless completion of the same text
    fresh = ask(fim_server, head, tail, filepath="audit-fresh.py")
    assert fresh["usage"]["reused_prompt_tokens"] == 0
    assert audit["text"] == fresh["choices"][0]["text"]
