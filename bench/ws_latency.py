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

`--type-through N` measures typing a suggestion through instead: after each step's completion
the first N characters of its first line are typed one by one, with a completion after each
(the editor asks again as the user types), and those completions are the ones timed. Variants:

- `n-gram` (`SPLICE_DRAFT_SUGGESTIONS=false`): drafts from n-gram matches alone;
- `suggestion-decode` (`SPLICE_DRAFT_SUGGESTIONS_IN_PROMPT=false`): the rest of the suggestion
  being typed through is drafted whole, from the first decode pass on;
- `suggestion` (the default): the same, fed after the prompt and verified in the pass that
  encodes the typed text.

    splice bench ws --data ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        [--model default] [--limit 24] [--context-tokens 2048] [--max-tokens 16] \\
        [--type-through N] [--json OUT]
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

VARIANTS = {"whole": {"SPLICE_KEEP_DOCUMENT_TOKENS": "false"}, "kept": {}}
TYPE_THROUGH_VARIANTS = {
    "n-gram": {"SPLICE_DRAFT_SUGGESTIONS": "false"},
    "suggestion-decode": {"SPLICE_DRAFT_SUGGESTIONS_IN_PROMPT": "false"},
    "suggestion": {},
}
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
    passes: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)

    def add(self, reply: dict[str, Any], elapsed_ms: float, document: str) -> None:
        usage = reply["usage"]
        self.latency_ms.append(elapsed_ms)
        self.encoded.append(usage["encoded_prompt_tokens"])
        self.tokenized.append(usage["tokenized_chars"])
        self.document.append(len(document))
        self.passes.append(usage["decode_passes"])
        self.completion_tokens.append(usage["completion_tokens"])

    def summary(self) -> dict[str, float]:
        ms = sorted(self.latency_ms)
        if not ms:
            raise RuntimeError("no completion was timed (no suggestion had a first line to type through)")
        return {
            "completions": len(ms),
            "decode_passes_mean": statistics.fmean(self.passes),
            "completion_tokens_mean": statistics.fmean(self.completion_tokens),
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


def replay(
    url: str, original: str, steps: list[Any], max_tokens: int, stats: Stats, type_through: int = 0
) -> None:
    """Type each step into the open document and time the completion after it (type_through:
    then type the first characters of that completion's first line, timing the completion after
    each character instead)."""
    with connect(url.replace("http://", "ws://") + "/v1/documents", max_size=None) as ws:
        editor = Editor(ws)
        editor.send({"type": "open", "uri": URI, "languageId": "python", "version": 1, "text": original})
        text, version = original, 1
        for n, step in enumerate(steps):
            target = step.prefix + step.suffix  # the edited file, the line to complete left empty
            messages, version = typing(text, target, version)
            _send_all(editor, messages)
            text = target
            reply, elapsed = _complete(editor, text, len(step.prefix), f"r{n}", max_tokens)
            shown = "".join(item["text"] for item in reply["items"])
            if not type_through:
                if n > 0:  # the first completion encodes the document; the later ones follow edits
                    stats.add(reply, elapsed, text)
                stats.texts.append(shown)
                continue
            cursor = len(step.prefix)
            for k, char in enumerate(shown.split("\n", 1)[0][:type_through]):
                messages, version = typing(text, text[:cursor] + char + text[cursor:], version)
                for message in messages:
                    editor.send(message)
                text, cursor = text[:cursor] + char + text[cursor:], cursor + 1
                reply, elapsed = _complete(editor, text, cursor, f"r{n}.{k}", max_tokens)
                stats.add(reply, elapsed, text)
                stats.texts.append("".join(item["text"] for item in reply["items"]))
        editor.send({"type": "close", "uri": URI})


def _send_all(editor: Editor, messages: list[dict[str, Any]], window: int = 200) -> None:
    """Send `messages`, waiting for the server to catch up after every `window` of them (as an
    editor typing at a person's speed would): thousands queued at once would delay the
    server's keepalive pongs behind them past their timeout."""
    for n, message in enumerate(messages, 1):
        editor.send(message)
        if n % window == 0:
            editor.send({"type": "get", "uri": URI})
            editor.receive()


def _complete(
    editor: Editor, text: str, offset: int, request_id: str, max_tokens: int
) -> tuple[dict[str, Any], float]:
    """Ask for a completion at `offset` once the server holds `text`: (reply, ms to the reply)."""
    editor.send({"type": "get", "uri": URI})  # every change applied before the clock starts
    reply = editor.receive()
    if reply.get("type") != "document" or reply.get("text") != text:
        raise RuntimeError(f"the server's document diverged from the editor's: {str(reply)[:200]}")
    request = {
        "type": "complete",
        "uri": URI,
        "position": position(text, offset),
        "requestId": request_id,
        "maxTokens": max_tokens,
    }
    started = time.perf_counter()
    editor.send(request)
    reply = editor.receive()
    elapsed = (time.perf_counter() - started) * 1000.0
    if reply.get("type") != "completion":
        raise RuntimeError(f"completion failed: {reply}")
    return reply, elapsed


def run(
    model: str,
    device: str,
    data: Path,
    limit: int,
    context_tokens: int,
    max_tokens: int,
    type_through: int = 0,
) -> dict[str, Any]:
    variants = TYPE_THROUGH_VARIANTS if type_through else VARIANTS
    stats = {name: Stats() for name in variants}
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
            name: servers.enter_context(running_server(model, env={**env, **extra}, device=device))
            for name, extra in variants.items()
        }
        done = 0
        for h, (history, original, steps) in enumerate(histories):
            order = list(variants) if h % 2 == 0 else list(reversed(variants))
            for name in order:
                replay(urls[name], original, steps, max_tokens, stats[name], type_through)
            done += len(steps)
            print(f"[{done}/{total}] {history}", file=sys.stderr)
    texts = [stats[name].texts for name in variants]
    same = sum(len(set(each)) == 1 for each in zip(*texts, strict=True))  # the same from every variant
    return {
        "model": model,
        "context_tokens": context_tokens,
        "max_tokens": max_tokens,
        "type_through": type_through,
        "identical_completions": f"{same}/{len(texts[0])}",
        "variants": {name: s.summary() for name, s in stats.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    names = " vs ".join(result["variants"])
    through = f", typing {result['type_through']} characters through" if result.get("type_through") else ""
    print(
        f"model {result['model']}, prompt <= {result['context_tokens']} tokens, "
        f"maxTokens {result['max_tokens']}{through}; identical completions {names}: "
        f"{result['identical_completions']}"
    )
    columns = (
        "latency p50 ms | p90 ms | mean ms | decode passes | completion tokens | encoded tokens "
        "| tokenized chars | document chars"
    )
    print(f"| variant | completions | {columns} |")
    print("| --- |" + " ---: |" * 9)
    for name, s in result["variants"].items():
        cells = [
            f"{s['latency_p50_ms']:.0f}",
            f"{s['latency_p90_ms']:.0f}",
            f"{s['latency_mean_ms']:.0f}",
            f"{s['decode_passes_mean']:.1f}",
            f"{s['completion_tokens_mean']:.1f}",
            f"{s['encoded_tokens_mean']:.0f}",
            f"{s['tokenized_chars_mean']:.0f}",
            f"{s['document_chars_mean']:.0f}",
        ]
        print(f"| {name} | {s['completions']} | " + " | ".join(cells) + " |")


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
    parser.add_argument(
        "--type-through",
        type=int,
        default=0,
        metavar="N",
        help="time completions while typing the first N characters of each suggestion "
        "(suggestion drafts off, from the first decode pass, and in the prompt's pass) instead "
        "of after each step (default 0: off)",
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"splice bench ws: error: no such file: {args.data}", file=sys.stderr)
        return 2
    if args.limit < 2 or args.max_tokens < 1 or args.type_through < 0:
        print(
            "splice bench ws: error: --limit must be >= 2, --max-tokens >= 1 and --type-through >= 0",
            file=sys.stderr,
        )
        return 2
    result = run(
        args.model,
        args.device,
        args.data,
        args.limit,
        args.context_tokens,
        args.max_tokens,
        args.type_through,
    )
    print_table(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
