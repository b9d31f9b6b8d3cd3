"""One editor connection on `WS /v1/documents`: document sync by edits, completions by cursor.

The protocol (documented in the README) is LSP-like. The rules that keep the server's text
equal to the editor's: changes apply strictly in version order; anything the server cannot
apply exactly (a version gap, an out-of-range or malformed edit, a change refused by a limit)
is answered with `resync`, after which changes for that document are ignored until the
editor's `open` brings the full text. A newer `complete` for a document cancels the older one.

Completions are `Request`s to the same step scheduler as REST calls; the document's KV cache
is keyed by (tenant, uri, model) and follows the edits by PIE reuse at the next completion
(the engine diffs the new prompt's tokens against the cached ones), so typing costs nothing
until a completion is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from splice.assistant import next_edits
from splice.assistant.completions import CompletionService, public_adapter
from splice.assistant.documents import (
    Change,
    Document,
    DocumentError,
    DocumentStore,
    OutOfRange,
    Position,
    UnknownDocument,
    offset_at,
)
from splice.assistant.errors import ApiError, describe_validation_errors
from splice.assistant.metrics import Metrics
from splice.assistant.next_edits import NextEditJob
from splice.assistant.settings import Settings
from splice.completion.document_cache import DocumentKey
from splice.completion.engine import CompletionInput, GenerationParams
from splice.completion.scheduler import Request

log = logging.getLogger(__name__)

Uri = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=256)] | int


class _Msg(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class PositionIn(_Msg):
    line: int = Field(ge=0)
    character: int = Field(ge=0)

    def position(self) -> Position:
        return Position(self.line, self.character)


class RangeIn(_Msg):
    start: PositionIn
    end: PositionIn


class ChangeIn(_Msg):
    range: RangeIn | None = None  # None: the whole text (LSP's full-content change)
    text: str


class OpenMsg(_Msg):
    type: Literal["open"]
    uri: Uri
    languageId: str = Field(default="plaintext", max_length=128)
    version: int
    # None: resume a document the server keeps (an editor reconnecting after a restart or a
    # failover); it holds when the server has `version`, else the answer is a resync
    text: str | None = None


class ChangeMsg(_Msg):
    type: Literal["change"]
    uri: Uri
    version: int
    changes: list[ChangeIn] = Field(max_length=10_000)


class CompleteMsg(_Msg):
    type: Literal["complete"]
    uri: Uri
    position: PositionIn
    requestId: RequestId
    maxTokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    version: int | None = None


class NextEditMsg(_Msg):
    type: Literal["nextEdit"]
    uri: Uri
    position: PositionIn
    requestId: RequestId
    linesBefore: int = Field(default=5, ge=0, le=20)
    linesAfter: int = Field(default=5, ge=0, le=20)
    maxTokens: int | None = Field(default=None, ge=1)
    version: int | None = None


class CancelMsg(_Msg):
    type: Literal["cancel"]
    requestId: RequestId


class CloseMsg(_Msg):
    type: Literal["close"]
    uri: Uri


class GetMsg(_Msg):
    type: Literal["get"]
    uri: Uri


class PingMsg(_Msg):
    type: Literal["ping"]
    id: str | int | None = None


Message = Annotated[
    OpenMsg | ChangeMsg | CompleteMsg | NextEditMsg | CancelMsg | CloseMsg | GetMsg | PingMsg,
    Field(discriminator="type"),
]
MESSAGE = TypeAdapter(Message)
MESSAGE_TYPES = ("open", "change", "complete", "nextEdit", "cancel", "close", "get", "ping")


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _InFlight:
    request_id: str | int
    uri: str
    kind: str = "complete"  # or "nextEdit": one of each may run per document
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    request: Request | None = None  # once submitted to the scheduler


class _Replaced(Exception):
    """A newer request or a cancel replaced this one."""


class EditorSession:
    """The state of one connection: which documents it holds, which wait for a resync, which
    completion runs for which document."""

    def __init__(
        self,
        ws: WebSocket,
        tenant: str,
        store: DocumentStore,
        completions: CompletionService,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.ws = ws
        self.tenant = tenant
        self.store = store
        self.completions = completions
        self.settings = settings
        self.metrics = metrics
        self.open_uris: set[str] = set()
        self.awaiting_open: dict[str, int | None] = {}  # uri -> expected version, after a resync
        self.by_uri: dict[tuple[str, str], _InFlight] = {}  # (uri, kind)
        self.by_id: dict[str | int, _InFlight] = {}
        self.bucket = TokenBucket(settings.ws_rate_per_s, settings.ws_rate_burst)
        self._send_lock = asyncio.Lock()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        self.metrics.ws_connections.inc()
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None and message.get("bytes") is not None:
                    try:
                        raw = message["bytes"].decode("utf-8")
                    except UnicodeDecodeError:
                        await self.error("invalid_json", "binary message is not UTF-8 JSON")
                        continue
                if raw is not None:
                    await self.handle(raw)
        except WebSocketDisconnect:
            return
        finally:
            await self.shutdown()

    async def handle(self, raw: str) -> None:
        too_large = len(raw) > self.settings.ws_max_message_bytes or (
            len(raw) * 4 > self.settings.ws_max_message_bytes
            and len(raw.encode("utf-8", "surrogatepass")) > self.settings.ws_max_message_bytes
        )
        head = _peek(raw) if too_large else None
        if too_large:
            await self.refuse(
                head,
                "message_too_large",
                f"message is larger than {self.settings.ws_max_message_bytes} bytes",
                "too_large",
            )
            return
        try:
            obj: Any = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            await self.error("invalid_json", f"message is not valid JSON: {exc}")
            return
        if not isinstance(obj, dict):
            await self.error("invalid_json", f"expected a JSON object, got {type(obj).__name__}")
            return
        kind = obj.get("type")
        if kind not in MESSAGE_TYPES:
            await self.error(
                "unknown_type", f"unknown message type {kind!r}; expected one of {MESSAGE_TYPES}"
            )
            return
        self.metrics.ws_messages.labels(type=kind).inc()
        if not self.bucket.take():
            await self.refuse(
                obj,
                "rate_limited",
                f"more than {self.settings.ws_rate_per_s:g} messages per second",
                "rate_limited",
            )
            return
        try:
            msg = MESSAGE.validate_python(obj)
        except ValidationError as exc:
            await self.refuse(
                obj, "invalid_message", describe_validation_errors(list(exc.errors())), "invalid_change"
            )
            return
        handler = getattr(self, "on_" + {"nextEdit": "next_edit"}.get(msg.type, msg.type))
        try:
            await handler(msg)
        except Exception:  # one bad message must not end the editor's session
            log.exception("editor message %s failed", msg.type)
            await self.refuse(
                obj, "internal", f"internal error while handling {msg.type!r}", "invalid_change"
            )

    async def refuse(self, obj: dict[str, Any] | None, code: str, message: str, reason: str) -> None:
        """Answer a message that was not carried out. A refused change is answered with resync
        (the editor believes it was applied); anything else with an error."""
        obj = obj or {}
        uri = obj.get("uri") if isinstance(obj.get("uri"), str) else None
        if obj.get("type") == "change" and uri is not None and uri in self.open_uris:
            await self.resync(uri, reason)
            return
        rid = obj.get("requestId")
        await self.error(code, message, request_id=rid if isinstance(rid, (str, int)) else None, uri=uri)

    # -- handlers ---------------------------------------------------------------------------

    async def on_open(self, msg: OpenMsg) -> None:
        held = msg.uri in self.open_uris
        if not held and len(self.open_uris) >= self.settings.ws_max_documents:
            await self.error(
                "too_many_documents",
                f"this connection already has {len(self.open_uris)} documents open "
                f"(limit {self.settings.ws_max_documents}); close some first",
                uri=msg.uri,
            )
            return
        if msg.text is None:
            await self._resume(msg, held)
            return
        try:
            await self.store.open(
                self.tenant, msg.uri, msg.languageId, msg.version, msg.text, new_holder=not held
            )
        except DocumentError as exc:
            await self.error(exc.code, str(exc), uri=msg.uri)
            return
        self._opened(msg.uri, msg.text)

    async def _resume(self, msg: OpenMsg, held: bool) -> None:
        """`open` without text: hold the server's copy if it is at the editor's version."""
        try:
            doc = await self.store.get(self.tenant, msg.uri)
        except UnknownDocument:
            await self.send(
                {"type": "resync", "uri": msg.uri, "expectedVersion": None, "reason": "unknown_document"}
            )
            return
        if doc.version != msg.version:
            self.metrics.ws_resyncs.labels(reason="version_gap").inc()
            await self.send(
                {
                    "type": "resync",
                    "uri": msg.uri,
                    "expectedVersion": doc.version + 1,
                    "reason": "version_gap",
                    "message": f"the server has version {doc.version}, the editor {msg.version}",
                }
            )
            return
        if not held:
            await self.store.hold(self.tenant, msg.uri)
        self._opened(msg.uri, doc.text)

    def _opened(self, uri: str, text: str) -> None:
        self.completions.edits.of(self.tenant).open(uri, text)
        self.open_uris.add(uri)
        self.awaiting_open.pop(uri, None)
        self.metrics.ws_documents.set(len(self.store))
        registry = self.completions.registry
        if registry is not None and registry.has_repositories(self.tenant):
            registry.buffer_changed(self.tenant, uri, text, None)  # the editor's text may be unsaved

    async def on_change(self, msg: ChangeMsg) -> None:
        if msg.uri in self.awaiting_open:
            return  # superseded by the full text the editor was asked for
        if msg.uri not in self.open_uris:
            await self.resync(msg.uri, "unknown_document")
            return
        changes = [
            Change(None, None, c.text)
            if c.range is None
            else Change(c.range.start.position(), c.range.end.position(), c.text)
            for c in msg.changes
        ]
        try:
            doc, _ = await self.store.change(self.tenant, msg.uri, msg.version, changes)
        except DocumentError as exc:
            reason = {"document_too_large": "too_large"}.get(exc.code, exc.code)
            reason = reason if reason in RESYNC_REASONS else "invalid_change"
            await self.resync(msg.uri, reason, str(exc))
            return
        self.completions.edits.of(self.tenant).change(msg.uri, doc.text)
        registry = self.completions.registry
        if registry is not None and registry.has_repositories(self.tenant):
            # the repository index follows unsaved edits (applied before the next context)
            ranged = [c for c in changes if c.start is not None]
            lines = None
            if ranged and len(ranged) == len(changes):
                first = min(c.start.line for c in ranged if c.start is not None)
                last = max((c.start.line if c.start else 0) + c.text.count("\n") for c in ranged)
                lines = (first, last)
            registry.buffer_changed(self.tenant, msg.uri, doc.text, lines)

    async def _target(self, msg: CompleteMsg | NextEditMsg) -> tuple[Document, int] | None:
        """The document and cursor offset a request names; None once an error was sent (a
        document waiting for its resync, not open, at another version; a position outside it;
        a requestId in flight)."""
        rid, uri = msg.requestId, msg.uri
        if uri in self.awaiting_open:
            await self.error("resync_pending", f"document {uri!r} waits for its full text (open)", rid, uri)
            return None
        try:
            if uri not in self.open_uris:
                raise UnknownDocument(f"document {uri!r} is not open")
            doc = await self.store.get(self.tenant, uri)
            if msg.version is not None and msg.version != doc.version:
                await self.error(
                    "version_mismatch",
                    f"the server has version {doc.version} of {uri!r}, the request names {msg.version}",
                    rid,
                    uri,
                )
                return None
            offset = offset_at(doc.text, msg.position.position())
        except OutOfRange as exc:
            await self.error("out_of_range", str(exc), rid, uri)
            return None
        except DocumentError as exc:
            await self.error(exc.code, str(exc), rid, uri)
            return None
        if rid in self.by_id:
            await self.error("invalid_message", f"requestId {rid!r} is already in flight", rid, uri)
            return None
        return doc, offset

    def _start(self, rid: str | int, uri: str, kind: str) -> _InFlight:
        older = self.by_uri.get((uri, kind))
        if older is not None:
            self._cancel(older)  # latest wins
        job = _InFlight(rid, uri, kind)
        self.by_uri[(uri, kind)] = job
        self.by_id[rid] = job
        return job

    async def on_complete(self, msg: CompleteMsg) -> None:
        rid, uri = msg.requestId, msg.uri
        target = await self._target(msg)
        if target is None:
            return
        doc, offset = target
        max_tokens = msg.maxTokens or self.settings.default_max_tokens
        limit = self.completions.max_tokens_limit()
        if max_tokens > limit:
            await self.error(
                "invalid_message", f"maxTokens: must be at most {limit} (got {max_tokens})", rid, uri
            )
            return
        job = self._start(rid, uri, "complete")
        inp = CompletionInput(
            prefix=doc.text[:offset],
            suffix=doc.text[offset:],
            language=doc.language_id,
            filepath=uri,
            draft_text=doc.removed,
        )
        params = GenerationParams(max_tokens=max_tokens, temperature=msg.temperature or 0.0)
        key = self._cache_key(uri) if self.settings.reuse_method != "full" else None
        job.task = asyncio.create_task(self._complete(job, inp, params, key, doc.version, msg.position))

    async def on_next_edit(self, msg: NextEditMsg) -> None:
        target = await self._target(msg)
        if target is None:
            return
        doc, _ = target
        rid, uri = msg.requestId, msg.uri
        try:
            window, params = next_edits.plan(
                self.completions,
                doc.text,
                msg.position.position(),
                msg.linesBefore,
                msg.linesAfter,
                msg.maxTokens,
            )
        except ApiError as exc:
            await self.error(exc.code, exc.message, rid, uri)
            return
        job = self._start(rid, uri, "nextEdit")
        prepared = next_edits.prepare(
            self.completions,
            window,
            params,
            doc.text,
            tenant=self.tenant,
            uri=uri,
            filepath=uri,
            language=doc.language_id,
            version=doc.version,
            latest_wins=(id(self), uri, "nextEdit"),
        )
        job.task = asyncio.create_task(self._next_edit(job, prepared))

    async def on_cancel(self, msg: CancelMsg) -> None:
        job = self.by_id.get(msg.requestId)
        if job is not None:
            self._cancel(job)

    async def on_close(self, msg: CloseMsg) -> None:
        if msg.uri not in self.open_uris:
            await self.error("unknown_document", f"document {msg.uri!r} is not open", uri=msg.uri)
            return
        for kind in ("complete", "nextEdit"):
            job = self.by_uri.get((msg.uri, kind))
            if job is not None:
                self._cancel(job)
        self.open_uris.discard(msg.uri)
        self.awaiting_open.pop(msg.uri, None)
        self.completions.edits.of(self.tenant).close(msg.uri)
        with contextlib.suppress(UnknownDocument):
            await self.store.close(self.tenant, msg.uri)
        self.completions.engine.kv.close(self._cache_key(msg.uri))
        if self.completions.registry is not None:
            self.completions.registry.buffer_closed(self.tenant, msg.uri)
        self.metrics.ws_documents.set(len(self.store))

    async def on_get(self, msg: GetMsg) -> None:
        if msg.uri not in self.open_uris:
            await self.error("unknown_document", f"document {msg.uri!r} is not open", uri=msg.uri)
            return
        doc = await self.store.get(self.tenant, msg.uri)
        await self.send(
            {
                "type": "document",
                "uri": doc.uri,
                "version": doc.version,
                "languageId": doc.language_id,
                "text": doc.text,
            }
        )

    async def on_ping(self, msg: PingMsg) -> None:
        await self.send({"type": "pong", "id": msg.id} if msg.id is not None else {"type": "pong"})

    # -- completions ----------------------------------------------------------------------------

    async def _complete(
        self,
        job: _InFlight,
        inp: CompletionInput,
        params: GenerationParams,
        key: DocumentKey | None,
        version: int,
        position: PositionIn,
    ) -> None:
        try:
            try:
                inp, _ = await self.completions.add_context(inp, self.tenant, job.uri)
                inp = self.completions.with_suggestion(inp, self.tenant, job.uri)
                if job.cancelled.is_set():  # replaced while its context was read
                    raise _Replaced
                adapter = self.completions.adapter_for(self.tenant)
                if key is not None:  # caches are per adapter: a switch never reuses another's KV
                    key = dataclasses.replace(key, adapter=adapter)
                # latest wins, also against a request of this document that is already queued
                job.request = Request(
                    inp,
                    params,
                    document=key,
                    tenant=self.tenant,
                    adapter=adapter,
                    latest_wins=(id(self), job.uri),
                )
                finished = await self.completions.run(job.request)
            except ApiError as exc:
                await self.error(exc.code, exc.message, job.request_id, job.uri)
                return
            result = finished.result
            if result.finish_reason == "cancelled" or job.cancelled.is_set():
                raise _Replaced
            self.completions.served.remember(
                self.tenant, str(job.request_id), job.uri, inp.prefix, inp.suffix, result.text
            )
            where = {"line": position.line, "character": position.character}
            t = result.timings
            await self.send(
                {
                    "type": "completion",
                    "requestId": job.request_id,
                    "uri": job.uri,
                    "version": version,
                    "items": [{"text": result.text, "range": {"start": where, "end": where}}]
                    if result.text
                    else [],
                    "finishReason": result.finish_reason,
                    "adapter": public_adapter(job.request.adapter),
                    "usage": {
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                        "encoded_prompt_tokens": result.encoded_prompt_tokens,
                        "reused_prompt_tokens": result.reused_prompt_tokens,
                        "refreshed_prompt_tokens": result.refreshed_prompt_tokens,
                        "tokenized_chars": result.tokenized_chars,
                        "decode_passes": result.decode_passes,
                        "accepted_draft_tokens": result.accepted_draft_tokens,
                        "decode_layers": result.decode_layers,
                        "exited_tokens": result.exited_tokens,
                    },
                    "timings": {
                        "queue_ms": round(finished.queue_ms, 2),
                        "prompt_ms": round(t.prompt_ms, 2),
                        "first_token_ms": round(t.first_token_ms, 2),
                        "total_ms": round(t.total_ms, 2),
                    },
                }
            )
        except _Replaced:
            await self.error(
                "cancelled", "a newer request or a cancel replaced this one", job.request_id, job.uri
            )
        finally:
            self._done(job)

    def _done(self, job: _InFlight) -> None:
        self.by_id.pop(job.request_id, None)
        if self.by_uri.get((job.uri, job.kind)) is job:
            del self.by_uri[(job.uri, job.kind)]

    async def _next_edit(self, job: _InFlight, prepared: Coroutine[Any, Any, NextEditJob]) -> None:
        try:
            try:
                ready = await prepared
                if job.cancelled.is_set():
                    raise _Replaced
                job.request = ready.request
                finished = await self.completions.run(ready.request)
            except ApiError as exc:
                await self.error(exc.code, exc.message, job.request_id, job.uri)
                return
            if finished.result.finish_reason == "cancelled" or job.cancelled.is_set():
                raise _Replaced
            body = next_edits.answer(self.completions, ready, finished)
            await self.send(
                {
                    "type": "nextEditResult",
                    "requestId": job.request_id,
                    "uri": job.uri,
                    "version": ready.version,
                    "window": body["window"],
                    "edits": body["edits"],
                    "finishReason": body["finish_reason"],
                    "usage": body["usage"],
                    "timings": body["timings"],
                }
            )
        except _Replaced:
            await self.error(
                "cancelled", "a newer request or a cancel replaced this one", job.request_id, job.uri
            )
        finally:
            self._done(job)

    def _cache_key(self, uri: str) -> DocumentKey:
        return DocumentKey(self.tenant, uri, self.completions.engine.loaded.model_id)

    def _cancel(self, job: _InFlight) -> None:
        job.cancelled.set()
        if job.request is not None:
            self.completions.scheduler.cancel(job.request)

    # -- output ---------------------------------------------------------------------------------

    async def resync(self, uri: str, reason: str, detail: str = "") -> None:
        expected: int | None = None
        if uri in self.open_uris:
            with contextlib.suppress(UnknownDocument):
                expected = (await self.store.get(self.tenant, uri)).version + 1
            self.awaiting_open[uri] = expected
        self.metrics.ws_resyncs.labels(reason=reason).inc()
        msg: dict[str, Any] = {"type": "resync", "uri": uri, "expectedVersion": expected, "reason": reason}
        if detail:
            msg["message"] = detail
        await self.send(msg)

    async def error(
        self, code: str, message: str, request_id: str | int | None = None, uri: str | None = None
    ) -> None:
        msg: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request_id is not None:
            msg["requestId"] = request_id
        if uri is not None:
            msg["uri"] = uri
        await self.send(msg)

    async def send(self, msg: dict[str, Any]) -> None:
        if self.ws.application_state != WebSocketState.CONNECTED:
            return
        async with self._send_lock:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.ws.send_text(json.dumps(msg, ensure_ascii=False))

    async def _release(self, uris: list[str]) -> None:
        for uri in uris:
            try:
                await self.store.close(self.tenant, uri)
            except UnknownDocument:
                pass
            except Exception:  # the store is unreachable: its copy stays, for the editor's resume
                log.warning("could not release %s", uri, exc_info=True)

    async def shutdown(self) -> None:
        """The connection ended: stop its completions and release its documents."""
        for job in list(self.by_id.values()):
            self._cancel(job)
        tasks = [j.task for j in self.by_id.values() if j.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        uris = list(self.open_uris)
        for uri in uris:
            self.completions.engine.kv.close(self._cache_key(uri))
        # released in a task of its own: a server that cancels this handler (shutting down, or a
        # test client leaving) must not leave the documents held in a shared store
        release = asyncio.ensure_future(self._release(uris))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(release)
        self.open_uris.clear()
        self.metrics.ws_documents.set(len(self.store))
        self.metrics.ws_connections.dec()


RESYNC_REASONS = {
    "version_gap",
    "out_of_range",
    "unknown_document",
    "invalid_change",
    "invalid_text",
    "rate_limited",
    "too_large",
}


def _peek(raw: str) -> dict[str, Any] | None:
    """The type and uri of a message too large to parse whole (they come first in practice)."""
    head = raw[:8192]
    out: dict[str, Any] = {}
    for name in ("type", "uri"):
        marker = f'"{name}":'
        i = head.find(marker)
        if i < 0:
            continue
        rest = head[i + len(marker) :].lstrip()
        if rest.startswith('"'):
            with contextlib.suppress(json.JSONDecodeError, ValueError):
                out[name] = json.JSONDecoder().raw_decode(rest)[0]
    return out or None
