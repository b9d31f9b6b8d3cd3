"""`splice bench load`: editors on loopback typing real edit histories over the WebSocket protocol
and asking for completions, for a bounded time; then every document on the server is compared
with the editor's text.

    splice bench load --data ../shared/data/edit-histories/realistic-edits-public.jsonl.gz \\
        --model default --editors 20 --duration 120 [--replicas 2 --redis redis://127.0.0.1:6379/0]
    splice bench load --data ... --url http://127.0.0.1:8600 --editors 20 --duration 120

Each editor is one connection holding `--documents` documents (each the start of an edit
history's original file, cut to `--doc-tokens` tokens at a line end, four characters a token);
it cycles through them: types the next step of the document's history (a deletion as one change,
short insertions one character per message at `--typing-cps`, long ones pasted), then asks for a
completion at the step's edited line and waits for it. With `--model`, the servers are started
here: one replica, or `--replicas N` sharing `--redis` behind HAProxy (bench/cluster.py).

Reported: completions and their latency (p50/p95/p99, from `complete` to the reply), refusals by
code (`queue_full` is the protocol's 429), resyncs, edits sent, the servers' peak resident memory,
KV cache evictions and budget (from /metrics), and the final check: documents whose server copy
differs from the editor's (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import re
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from splice.bench.edits import apply_unified_diff
from splice.completion.kv_manager import changed_span

PASTE_CHARS = 40  # insertions longer than this are pasted as one change


def position(text: str, offset: int) -> dict[str, int]:
    """LSP position (UTF-16 code units) of a character offset."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return {"line": line, "character": len(text[start:offset].encode("utf-16-le")) // 2}


@dataclass
class Document:
    uri: str
    text: str
    steps: list[str]  # the texts after each step of its history
    version: int = 1
    next_step: int = 0
    completed: int = 0  # completions answered for it


@dataclass
class Totals:
    latency_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    resyncs: Counter[str] = field(default_factory=Counter)
    edits: int = 0
    documents: int = 0
    diverged: list[str] = field(default_factory=list)
    reencoded: int = 0  # completions that encoded their whole prompt though an earlier one made a cache


def cut(text: str, chars: int) -> str:
    """`text` up to the last line end at or before `chars`."""
    if len(text) <= chars:
        return text
    end = text.rfind("\n", 0, chars)
    return text[: end + 1] if end > 0 else text[:chars]


def load_documents(
    path: Path, count: int, token_range: tuple[int, int], seed: int
) -> list[tuple[str, list[str]]]:
    """`count` (text, step texts) pairs from the edit histories: each original cut to a random
    size in `token_range` (4 chars a token), its steps applied to the cut text where they apply."""
    rng = random.Random(seed)
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for raw in fh:
            row = json.loads(raw)
            if len(row["original"]) >= token_range[0] * 4:
                rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no history has {token_range[0]} tokens or more")
    out = []
    for i in range(count):
        row = rows[i % len(rows)]
        size = rng.randint(*token_range) * 4
        text = cut(row["original"], size)
        steps, current = [], row["original"]
        for diff in row["steps"]:
            try:
                current = apply_unified_diff(current, diff)
            except ValueError:
                break
            steps.append(cut(current, size))
        out.append((text, [s for s in steps if s != text] or [text + "\n"]))
    return out


class Editor:
    def __init__(self, ws: ClientConnection, totals: Totals, cps: float, max_tokens: int) -> None:
        self.ws, self.totals, self.cps, self.max_tokens = ws, totals, cps, max_tokens
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.requests = 0

    async def reader(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "resync":
                self.totals.resyncs[msg.get("reason", "?")] += 1
                continue
            await self.replies.put(msg)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def reply(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.replies.get(), timeout=600)

    async def type_step(self, doc: Document, new: str) -> None:
        edit = changed_span(doc.text, new)
        if edit is None:
            return
        text = doc.text
        if edit.end > edit.start or len(edit.text) > PASTE_CHARS:  # a selection replaced, or a paste
            rng = {"start": position(text, edit.start), "end": position(text, edit.end)}
            doc.version += 1
            pasted = edit.text if len(edit.text) > PASTE_CHARS else ""
            change = {"range": rng, "text": pasted}
            await self.send({"type": "change", "uri": doc.uri, "version": doc.version, "changes": [change]})
            self.totals.edits += 1
            text = text[: edit.start] + pasted + text[edit.end :]
            typed = "" if pasted else edit.text
        else:
            typed = edit.text
        for k, char in enumerate(typed):
            at = position(text, edit.start + k)
            doc.version += 1
            change = {"range": {"start": at, "end": at}, "text": char}
            await self.send({"type": "change", "uri": doc.uri, "version": doc.version, "changes": [change]})
            self.totals.edits += 1
            text = text[: edit.start + k] + char + text[edit.start + k :]
            await asyncio.sleep(1.0 / self.cps)
        assert text == new
        doc.text = new

    async def complete(self, doc: Document, offset: int) -> None:
        self.requests += 1
        rid = f"r{self.requests}"
        started = time.perf_counter()
        await self.send(
            {
                "type": "complete",
                "uri": doc.uri,
                "position": position(doc.text, offset),
                "requestId": rid,
                "maxTokens": self.max_tokens,
                "version": doc.version,
            }
        )
        while True:
            msg = await self.reply()
            if msg.get("requestId") == rid:
                break
        elapsed = (time.perf_counter() - started) * 1000.0
        if msg["type"] == "completion":
            self.totals.latency_ms.append(elapsed)
            usage = msg["usage"]
            if usage["encoded_prompt_tokens"] == usage["prompt_tokens"] and doc.completed > 0:
                self.totals.reencoded += 1  # it had a cache: evicted since (or not reusable)
            doc.completed += 1
        else:
            self.totals.errors[msg.get("code", "?")] += 1

    async def check(self, doc: Document) -> None:
        await self.send({"type": "get", "uri": doc.uri})
        while True:
            msg = await self.reply()
            if msg.get("uri") == doc.uri and msg.get("type") in ("document", "error"):
                break
        if msg.get("type") != "document" or (msg["version"], msg["text"]) != (doc.version, doc.text):
            self.totals.diverged.append(doc.uri)


async def run_editor(
    index: int,
    ws_url: str,
    docs: list[tuple[str, list[str]]],
    deadline: float,
    totals: Totals,
    cps: float,
    max_tokens: int,
    api_key: str | None,
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with connect(ws_url, max_size=None, additional_headers=headers, open_timeout=60) as ws:
        editor = Editor(ws, totals, cps, max_tokens)
        reader = asyncio.create_task(editor.reader())
        documents = [
            Document(f"file:///load/e{index}/d{k}.py", text, steps) for k, (text, steps) in enumerate(docs)
        ]
        for doc in documents:
            await editor.send(
                {"type": "open", "uri": doc.uri, "languageId": "python", "version": 1, "text": doc.text}
            )
            totals.documents += 1
        rng = random.Random(index)
        while time.monotonic() < deadline:
            doc = rng.choice(documents)
            if doc.next_step < len(doc.steps):
                new = doc.steps[doc.next_step]
            else:  # history done: keep typing a comment line at the end
                new = doc.text + f"# edit {doc.next_step}\n"
            doc.next_step += 1
            before = doc.text
            await editor.type_step(doc, new)
            edit = changed_span(before, doc.text)
            offset = edit.start + len(edit.text) if edit is not None else len(doc.text)
            await editor.complete(doc, offset)
        for doc in documents:
            await editor.check(doc)
            await editor.send({"type": "close", "uri": doc.uri})
        reader.cancel()


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    out = {}
    for name in (
        "splice_memory_peak_bytes",
        "splice_document_cache_evictions_total",
        "splice_document_cache_budget_bytes",
        "splice_queue_rejections_total",
    ):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drive(args: argparse.Namespace, ws_url: str) -> tuple[Totals, float]:
    docs = load_documents(args.data, args.editors * args.documents, tuple(args.doc_tokens), args.seed)
    totals = Totals()
    keys = [k for k in (args.api_keys or "").split(",") if k] or [None]
    started = time.monotonic()
    deadline = started + args.duration
    tasks = [
        run_editor(
            i,
            ws_url,
            docs[i * args.documents : (i + 1) * args.documents],
            deadline,
            totals,
            args.typing_cps,
            args.max_tokens,
            keys[i % len(keys)],
        )
        for i in range(args.editors)
    ]
    await asyncio.gather(*tasks)
    return totals, time.monotonic() - started


@contextmanager
def servers(args: argparse.Namespace) -> Iterator[tuple[str, list[str]]]:
    """(the URL editors connect to, the replicas' URLs)."""
    if args.url:
        yield args.url, [args.url]
        return
    env = {f"SPLICE_{k.upper()}": v for k, v in (item.split("=", 1) for item in args.env)}
    env.setdefault("SPLICE_WS_RATE_PER_S", "1000")
    if args.redis:
        from splice.bench.cluster import cluster

        with cluster(args.model, args.redis, args.replicas, env=env) as c:
            yield c.url, [r.url for r in c.replicas]
        return
    if args.replicas != 1:
        raise SystemExit("--replicas > 1 needs --redis (replicas share their state through it)")
    from splice.bench.server import running_server

    with ExitStack() as stack:
        url = stack.enter_context(running_server(args.model, env=env))
        yield url, [url]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="splice bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="edit histories (.jsonl.gz)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server (or load balancer) to drive")
    where.add_argument("--model", help="start servers of this model (as `splice serve --model`)")
    parser.add_argument("--replicas", type=int, default=1, help="with --model: replicas (>1 needs --redis)")
    parser.add_argument("--redis", help="with --model: replicas share this Redis, behind HAProxy")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="server setting for started servers, e.g. document_cache_mb=256 (repeatable)",
    )
    parser.add_argument("--editors", type=int, default=20)
    parser.add_argument("--documents", type=int, default=1, help="documents each editor holds open")
    parser.add_argument("--doc-tokens", type=int, nargs=2, default=[2000, 6000], metavar=("MIN", "MAX"))
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of typing (then the check)")
    parser.add_argument("--typing-cps", type=float, default=20.0, help="characters a second per editor")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--api-keys", help="comma-separated keys, given to editors in turn (tenants)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if args.editors < 1 or args.documents < 1 or args.duration <= 0:
        parser.error("--editors and --documents must be >= 1 and --duration > 0")
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    with servers(args) as (url, replicas):
        ws_url = url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/documents"
        start = [scrape(r) for r in replicas]  # the model loaded, nothing open yet
        totals, elapsed = asyncio.run(drive(args, ws_url))
        server = [scrape(r) for r in replicas]
    ms = totals.latency_ms
    result = {
        "editors": args.editors,
        "documents": totals.documents,
        "replicas": len(replicas),
        "seconds": round(elapsed, 1),
        "edits": totals.edits,
        "completions": len(ms),
        "latency_ms": {
            "p50": round(percentile(ms, 0.5), 1),
            "p95": round(percentile(ms, 0.95), 1),
            "p99": round(percentile(ms, 0.99), 1),
            "mean": round(statistics.fmean(ms), 1) if ms else None,
        },
        "refused": dict(totals.errors),
        "queue_full": totals.errors.get("queue_full", 0),
        "resyncs": dict(totals.resyncs),
        "reencoded_after_eviction": totals.reencoded,
        "memory_start_mb": [round(s["splice_memory_peak_bytes"] / 2**20, 1) for s in start],
        "memory_peak_mb": [round(s["splice_memory_peak_bytes"] / 2**20, 1) for s in server],
        "kv_budget_mb": [round(s["splice_document_cache_budget_bytes"] / 2**20, 1) for s in server],
        "evictions": [int(s["splice_document_cache_evictions_total"]) for s in server],
        "diverged": len(totals.diverged),
    }
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if not totals.diverged else 1


def print_table(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    print(
        f"{r['editors']} editors, {r['documents']} documents, {r['replicas']} replica(s), {r['seconds']} s: "
        f"{r['edits']} edits, {r['completions']} completions"
    )
    print(
        "| p50 ms | p95 ms | p99 ms | queue_full (429) | other refusals | resyncs | MB at start | peak MB "
        "| KV budget MB | evictions | diverged |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    other = sum(v for k, v in r["refused"].items() if k != "queue_full")
    print(
        f"| {lat['p50']} | {lat['p95']} | {lat['p99']} | {r['queue_full']} | {other} | "
        f"{sum(r['resyncs'].values())} | {'/'.join(map(str, r['memory_start_mb']))} | "
        f"{'/'.join(map(str, r['memory_peak_mb']))} | {'/'.join(map(str, r['kv_budget_mb']))} | "
        f"{'/'.join(map(str, r['evictions']))} | {r['diverged']} |"
    )


if __name__ == "__main__":
    sys.exit(main())
