"""`splice bench ws`: the editor's wait, from `complete` to the `completion` reply, after typing.

Replays real edit histories over the WebSocket protocol against real `splice serve` processes
(one per variant, started side by side, each loading the model): each step's change is typed into
the open document (deletions as one change, insertions one character per change message, as an
editor sends them), then a one-line completion is asked at the edited line's indentation (the
`edit-line` task of `splice bench edits`). Variants run side by side in one run, on the same
documents and steps, alternating which goes first per history:

- `whole` (`SPLICE_KEEP_DOCUMENT_TOKENS=false`): each completion tokenizes the whole document
  (the service before the KV manager kept document tokens);
- `kept` (the default): the KV manager keeps the document's tokens and re-tokenizes a window
  around what changed.

Both reuse the document's KV cache (PIE). Per variant: latency p50/p90/mean, prompt tokens
encoded and document characters tokenized per completion, against the document's size.

    splice bench ws --data ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        [--model default] [--limit 24] [--context-tokens 2048] [--max-tokens 16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from splice.bench.edits import load_steps
from splice.bench.server import running_server
from splice.completion.kv_manager import changed_span

VARIANTS = {"whole": "false", "kept": "true"}  # SPLICE_KEEP_DOCUMENT_TOKENS
URI = "file:///bench/document.py"


def position(text: str, offset: int) -> dict[str, int]:
    """LSP position (UTF-16 code units) of a character offset."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return {"line": line, "character": len(text[start:offset].encode("utf-16-le")) // 2}


def typing(text: str, new: str, version: int) -> tuple[list[dict[str, Any]], int]:
    """`change` messages that turn `text` into `new` as an editor would send them while typing."""
    edit = changed_span(text, new)
    if edit is None:
        return [], version
    messages = []
    if edit.end > edit.start:  # a selection deleted at once
        rng = {"start": position(text, edit.start), "end": position(text, edit.end)}
        version += 1
        messages.append(
            {"type": "change", "uri": URI, "version": version, "changes": [{"range": rng, "text": ""}]}
        )
        text = text[: edit.start] + text[edit.end :]
    for k, char in enumerate(edit.text):
        at = position(text, edit.start + k)
        version += 1
        change = {"range": {"start": at, "end": at}, "text": char}
        messages.append({"type": "change", "uri": URI, "version": version, "changes": [change]})
        text = text[: edit.start + k] + char + text[edit.start + k :]
    assert text == new
    return messages, version


@dataclass
class Stats:
    latency_ms: list[float] = field(default_factory=list)
    encoded: list[int] = field(default_factory=list)
    tokenized: list[int] = field(default_factory=list)
    document: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        ms = sorted(self.latency_ms)
        return {
            "completions": len(ms),
            "latency_p50_ms": statistics.median(ms),
            "latency_p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "latency_mean_ms": statistics.fmean(ms),
            "encoded_tokens_mean": statistics.fmean(self.encoded),
            "tokenized_chars_mean": statistics.fmean(self.tokenized),
            "document_chars_mean": statistics.fmean(self.document),
        }


class Editor:
    """One editor connection: JSON messages over a real WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def receive(self) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.ws.recv(timeout=600))
        return reply


def replay(url: str, original: str, steps: list[Any], max_tokens: int, stats: Stats) -> None:
    with connect(url.replace("http://", "ws://") + "/v1/documents", max_size=None) as ws:
        editor = Editor(ws)
        editor.send({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": original})
        text, version = original, 1
        for n, step in enumerate(steps):
            target = step.prefix + step.suffix  # the edited file, the line to complete left empty
            messages, version = typing(text, target, version)
            for message in messages:
                editor.send(message)
            text = target
            editor.send({"type": "get", "uri": URI})  # every change applied before the clock starts
            reply = editor.receive()
            if reply.get("type") != "document" or reply.get("text") != text:
                raise RuntimeError(f"the server's document diverged from the editor's: {str(reply)[:200]}")
            request = {
                "type": "complete",
                "uri": URI,
                "position": position(text, len(step.prefix)),
                "requestId": f"r{n}",
                "maxTokens": max_tokens,
            }
            started = time.perf_counter()
            editor.send(request)
            reply = editor.receive()
            elapsed = (time.perf_counter() - started) * 1000.0
            if reply.get("type") != "completion":
                raise RuntimeError(f"completion failed: {reply}")
            if n > 0:  # the first completion encodes the document; the later ones follow edits
                stats.latency_ms.append(elapsed)
                stats.encoded.append(reply["usage"]["encoded_prompt_tokens"])
                stats.tokenized.append(reply["usage"]["tokenized_chars"])
                stats.document.append(len(text))
            stats.texts.append("".join(item["text"] for item in reply["items"]))
        editor.send({"type": "close", "uri": URI})


def run(
    model: str, device: str, data: Path, limit: int, context_tokens: int, max_tokens: int
) -> dict[str, Any]:
    stats = {name: Stats() for name in VARIANTS}
    histories = list(load_steps(data, limit, "edit-line"))
    total = sum(len(steps) for _, _, steps in histories)
    env = {
        "SPLICE_MAX_PROMPT_TOKENS": str(context_tokens),
        "SPLICE_WS_RATE_PER_S": "1000000",
        "SPLICE_WS_RATE_BURST": "1000000",
        "SPLICE_API_KEYS": "",
    }
    with ExitStack() as servers:
        urls = {
            name: servers.enter_context(
                running_server(model, env={**env, "SPLICE_KEEP_DOCUMENT_TOKENS": keep}, device=device)
            )
            for name, keep in VARIANTS.items()
        }
        done = 0
        for h, (history, original, steps) in enumerate(histories):
            order = list(VARIANTS) if h % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                replay(urls[name], original, steps, max_tokens, stats[name])
            done += len(steps)
            print(f"[{done}/{total}] {history}", file=sys.stderr)
    same = sum(a == b for a, b in zip(stats["whole"].texts, stats["kept"].texts, strict=True))
    return {
        "model": model,
        "context_tokens": context_tokens,
        "max_tokens": max_tokens,
        "identical_completions": f"{same}/{len(stats['kept'].texts)}",
        "variants": {name: s.summary() for name, s in stats.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"model {result['model']}, prompt <= {result['context_tokens']} tokens, "
        f"maxTokens {result['max_tokens']}; identical completions whole vs kept: "
        f"{result['identical_completions']}"
    )
    columns = "latency p50 ms | p90 ms | mean ms | encoded tokens | tokenized chars | document chars"
    print(f"| variant | completions | {columns} |")
    print("| --- |" + " ---: |" * 7)
    for name, s in result["variants"].items():
        cells = [
            s["latency_p50_ms"],
            s["latency_p90_ms"],
            s["latency_mean_ms"],
            s["encoded_tokens_mean"],
            s["tokenized_chars_mean"],
            s["document_chars_mean"],
        ]
        print(f"| {name} | {s['completions']} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="splice bench ws", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="edit histories (.jsonl.gz)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=24, help="steps in total (default 24)")
    parser.add_argument("--context-tokens", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per completion (one line)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"splice bench ws: error: no such file: {args.data}", file=sys.stderr)
        return 2
    if args.limit < 2 or args.max_tokens < 1:
        print("splice bench ws: error: --limit must be >= 2 and --max-tokens >= 1", file=sys.stderr)
        return 2
    result = run(args.model, args.device, args.data, args.limit, args.context_tokens, args.max_tokens)
    print_table(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
