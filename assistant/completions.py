"""The completion service behind `POST /v1/completions` and the editor's `complete`: HTTP or
WebSocket message -> `Request` -> the step scheduler's events -> plain JSON, server-sent events
or an editor message. Queueing, latest-wins and cancellation are the scheduler's
(`splice.completion.scheduler`); this module checks what depends on the served model and
settings, adds repository context, maps errors to HTTP and keeps the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from splice.assistant.adapter_registry import AdapterRegistry
from splice.assistant.errors import ApiError
from splice.assistant.events import ServedCompletions
from splice.assistant.metrics import Metrics
from splice.assistant.repositories import RepositoryRegistry
from splice.assistant.schemas import (
    Choice,
    CompletionRequest,
    CompletionResponse,
    DebugData,
    FullRecompute,
    SnippetOut,
    TimingInfo,
    Usage,
)
from splice.assistant.settings import Settings
from splice.completion.deltas import DeltaError
from splice.completion.document_cache import DocumentKey
from splice.completion.early_exit import ExitThresholds
from splice.completion.engine import CompletionEngine, CompletionInput, CompletionResult, GenerationParams
from splice.completion.fim import repository_separator
from splice.completion.recent_edits import TenantEdits
from splice.completion.scheduler import Event, Finished, QueueFull, Request, StepScheduler, TextDelta
from splice.retrieval.context import RenderStyle, Snippet, render_context
from splice.retrieval.languages import language_for_path

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.05
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer


def display_path(uri: str) -> str:
    """How a document is named in the recent-edits slot: its last three path components."""
    path = uri.split("://", 1)[-1].strip("/")
    return "/".join(path.split("/")[-3:])


class CompletionService:
    def __init__(self, engine: CompletionEngine, metrics: Metrics, settings: Settings) -> None:
        self.engine = engine
        self.scheduler = StepScheduler(
            engine,
            settings.queue_size,
            max_running=engine.config.max_batch,
            on_start=self.on_start,
            on_finish=self.on_finish,
        )
        self.metrics = metrics
        self.settings = settings
        self.registry: RepositoryRegistry | None = None  # set by the app when retrieval is on
        self.adapters: AdapterRegistry | None = None  # set by the app: tenants' fine-tuned adapters
        self.served = ServedCompletions()  # what a `select` event accepted, for fine-tuning data
        self.edits = TenantEdits()  # what each tenant's editors just did (the recent-edits slot)
        self.file_sep = repository_separator(engine.tokenizer, engine.template)
        self._evictions_seen = 0
        metrics.document_budget.set(engine.kv.caches.budget_bytes)

    def served_names(self) -> set[str]:
        return {self.engine.loaded.model_id, self.settings.model, "default"}

    def document_key(self, req: CompletionRequest, tenant: str = "default") -> DocumentKey | None:
        """Which document cache a request reuses: the Tabby `filepath` or Splice's `document`."""
        if self.settings.reuse_method == "full":
            return None
        name = req.document or (req.segments.filepath if req.segments else None) or "(unnamed)"
        return DocumentKey(tenant=tenant, document=name, model=self.engine.loaded.model_id)

    def adapter_for(self, tenant: str) -> str | None:
        """The name under which `engine.deltas` applies `tenant`'s current adapter (loaded on first
        use; a newly registered one is seen on the next request), or None for the base model."""
        if self.adapters is None:
            return None
        record = self.adapters.current(tenant)
        if record is None:
            return None
        if record.name not in self.engine.deltas.loaded:
            try:
                self.engine.deltas.add(record.name, record.folder)
            except (DeltaError, OSError) as exc:
                log.warning("tenant %s: adapter %s not served: %s", tenant, record.id, exc)
                return None
        return record.name

    def max_tokens_limit(self) -> int:
        """The largest max_tokens a request may ask for (settings, and room in the context)."""
        return min(self.settings.max_tokens_limit, self.engine.context_window - 16)

    def early_exit_params(self, mode: str | None, exit_: float | None, stop: float | None) -> dict[str, Any]:
        """GenerationParams' early-exit fields for a request's options (422 where the model has no heads)."""
        if mode == "on" and self.engine.exit_heads is None:
            raise ApiError(
                422,
                "invalid_request",
                f"early_exit: {self.engine.loaded.model_id} has no exit heads "
                "(train them with `splice train exits`)",
            )
        thresholds = None
        if exit_ is not None or stop is not None:
            default = self.engine.config.exit_thresholds
            thresholds = ExitThresholds(
                exit=default.exit if exit_ is None else exit_, stop=default.stop if stop is None else stop
            )
        return {"early_exit": None if mode is None else mode == "on", "exit_thresholds": thresholds}

    def to_job(self, req: CompletionRequest) -> tuple[CompletionInput, GenerationParams]:
        """Check what pydantic cannot (it depends on the served model and settings)."""
        if req.model and req.model not in self.served_names():
            raise ApiError(
                404,
                "model_not_found",
                f"model {req.model!r} is not served here; this server serves {self.engine.loaded.model_id!r}",
            )
        prefix, suffix = req.prefix_suffix()
        if not prefix and not suffix:
            raise ApiError(422, "empty_prompt", "prompt is empty: give a non-empty prefix (prompt) or suffix")
        max_tokens = req.max_tokens if req.max_tokens is not None else self.settings.default_max_tokens
        limit = self.max_tokens_limit()
        if max_tokens > limit:
            raise ApiError(422, "invalid_request", f"max_tokens: must be at most {limit} (got {max_tokens})")
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=req.temperature if req.temperature is not None else 0.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            seed=req.seed,
            stop=tuple(req.stop or ()),
            **self.early_exit_params(req.early_exit, req.exit_threshold, req.stop_threshold),
        )
        filepath = req.segments.filepath if req.segments else None
        return CompletionInput(prefix=prefix, suffix=suffix, language=req.language, filepath=filepath), params

    async def add_context(
        self,
        inp: CompletionInput,
        tenant: str,
        document: str,
        repository: str | None = None,
        disabled: bool = False,
        edit_tokens: int | None = None,
    ) -> tuple[CompletionInput, list[Snippet]]:
        """`inp` with context from `tenant`'s repositories for its file (off the event loop: it
        reads the index) and the tenant's recent edits; the edits take their share of the
        context budget first (`edit_tokens`, default `edit_context_tokens`), the repository
        snippets the rest."""
        edits = self.recent_edits_text(tenant, edit_tokens) if not disabled else ""
        if self.registry is None or disabled or self.settings.context_tokens == 0:
            if repository is not None and self.registry is None:
                raise ApiError(404, "unknown_repository", "this server has no repositories registered")
            return self._with_edits_only(inp, edits), []
        registry = self.registry
        if repository is not None:
            await asyncio.to_thread(registry.get, tenant, repository)  # 404 before any work
        budget = max(0, self.settings.context_tokens - (self.count_tokens(edits) if edits else 0))
        context, snippets = await asyncio.to_thread(
            registry.context,
            tenant,
            inp.filepath,
            inp.prefix,
            inp.suffix,
            inp.language,
            document,
            repository,
            budget,
            edits,
        )
        if not context:  # no repository holds the file: the edits alone
            return self._with_edits_only(inp, edits), snippets
        return dataclasses.replace(inp, context=context), snippets

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode(text, add_special_tokens=False))

    def recent_edits_text(self, tenant: str, budget: int | None = None) -> str:
        """The tenant's newest edits that fit `budget` tokens (default `edit_context_tokens`), as
        unified diffs ('' if none)."""
        edits = self.edits.get(tenant)
        budget = self.settings.edit_context_tokens if budget is None else budget
        if edits is None or budget == 0:
            return ""
        return edits.render(budget, self.count_tokens, display_path)

    def _with_edits_only(self, inp: CompletionInput, edits: str) -> CompletionInput:
        if not edits:
            return inp
        language = inp.language or (language_for_path(inp.filepath) if inp.filepath else None)
        style = RenderStyle.for_language(language, self.file_sep, self.settings.context_commented)
        path = display_path(inp.filepath) if inp.filepath else None
        return dataclasses.replace(inp, context=render_context([], style, path, edits))

    async def _with_context(
        self, req: CompletionRequest, inp: CompletionInput, tenant: str
    ) -> tuple[CompletionInput, list[Snippet]]:
        debug = req.debug_options
        name = req.document or inp.filepath or "(unnamed)"
        return await self.add_context(
            inp,
            tenant,
            name,
            req.repository,
            disabled=bool(debug and debug.disable_retrieval_augmented_code_completion),
        )

    def on_start(self, _: Request) -> None:
        self.metrics.in_progress.inc()
        self.metrics.queue_depth.set(self.scheduler.waiting)

    def on_finish(self, request: Request, result: CompletionResult | None) -> None:
        """Metrics for every request that ends: run to the end, cancelled (waiting or running), failed."""
        if request.started_at is not None:
            self.metrics.in_progress.dec()
        self.metrics.queue_depth.set(self.scheduler.waiting)
        if result is None:
            return
        self.metrics.completions.labels(finish_reason=result.finish_reason).inc()
        if request.started_at is None:
            return
        self.metrics.prompt_tokens.inc(result.prompt_tokens)
        self.metrics.encoded_tokens.inc(result.encoded_prompt_tokens)
        self.metrics.reused_tokens.inc(result.reused_prompt_tokens)
        self.metrics.refreshed_tokens.inc(result.refreshed_prompt_tokens)
        if result.forced_full_encode:
            self.metrics.forced_full.inc()
        self.metrics.document_bytes.set(self.engine.kv.bytes)
        self.metrics.documents.set(len(self.engine.kv))
        evictions = self.engine.kv.caches.stats.evictions
        if evictions > self._evictions_seen:
            self.metrics.evictions.inc(evictions - self._evictions_seen)
            self._evictions_seen = evictions
        self.metrics.completion_tokens.inc(result.completion_tokens)
        if result.completion_tokens:
            self.metrics.ttft.observe(result.timings.first_token_ms / 1000.0)

    def submit(self, request: Request) -> AsyncGenerator[Event, None]:
        """The scheduler's events for `request`; a full queue is a 429 with Retry-After."""
        try:
            events = self.scheduler.submit(request)
        except QueueFull as exc:
            self.metrics.rejected.inc()
            raise ApiError(
                429,
                "queue_full",
                f"the model is busy and {exc.waiting} requests are already waiting; "
                f"retry in {exc.retry_after_s} s",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from exc
        self.metrics.queue_depth.set(self.scheduler.waiting)
        return events

    async def run(self, request: Request) -> Finished:
        """Submit `request` and wait for its end (a ValueError from the engine is a 422)."""
        async with contextlib.aclosing(self.submit(request)) as events:
            try:
                async for event in events:
                    if isinstance(event, Finished):
                        return event
            except ValueError as exc:
                raise ApiError(422, "invalid_request", str(exc)) from exc
        raise AssertionError("the scheduler ended a request without Finished")

    def _response(
        self,
        cid: str,
        result: CompletionResult,
        queue_ms: float,
        req: CompletionRequest | None = None,
        snippets: list[Snippet] | None = None,
        adapter: str | None = None,
        tenant: str = "default",
    ) -> CompletionResponse:
        t = result.timings
        debug = None
        options = req.debug_options if req is not None else None
        if options is not None and (options.return_snippets or result.audit is not None):
            audit = result.audit
            debug = DebugData(
                snippets=[SnippetOut.model_validate(s.as_dict()) for s in snippets or []]
                if options.return_snippets
                else [],
                recent_edits=self.recent_edits_text(tenant) if options.return_snippets else "",
                context_tokens=result.context_tokens,
                full_recompute=None
                if audit is None
                else FullRecompute(
                    text=audit.full_text,
                    same_text=audit.full_text == result.text,
                    next_token_kl=audit.next_token_kl,
                    next_token_top1_agree=audit.next_token_top1_agree,
                ),
            )
        return CompletionResponse(
            debug_data=debug,
            id=cid,
            created=int(time.time()),
            model=self.engine.loaded.model_id,
            adapter=public_adapter(adapter),
            choices=[Choice(index=0, text=result.text, finish_reason=result.finish_reason)],
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
                trimmed_prompt_tokens=result.trimmed_prompt_tokens,
                encoded_prompt_tokens=result.encoded_prompt_tokens,
                reused_prompt_tokens=result.reused_prompt_tokens,
                refreshed_prompt_tokens=result.refreshed_prompt_tokens,
                tokenized_chars=result.tokenized_chars,
                decode_passes=result.decode_passes,
                accepted_draft_tokens=result.accepted_draft_tokens,
                decode_layers=result.decode_layers,
                exited_tokens=result.exited_tokens,
            ),
            timings=TimingInfo(
                queue_ms=round(queue_ms, 2),
                prompt_ms=round(t.prompt_ms, 2),
                first_token_ms=round(t.first_token_ms, 2),
                total_ms=round(t.total_ms, 2),
                tokens_per_second=round(t.tokens_per_second, 2),
            ),
        )

    def with_suggestion(self, inp: CompletionInput, tenant: str, filepath: str | None) -> CompletionInput:
        """`inp` with the rest of the file's last suggestion to draft, if the user is typing it
        through (`ServedCompletions.expected`; lossless: it only drafts)."""
        if not self.settings.draft_suggestions or self.engine.config.drafting != "lookup":
            return inp
        expected = self.served.expected(tenant, filepath, inp.prefix)
        return dataclasses.replace(inp, expected=expected) if expected else inp

    async def request(
        self, req: CompletionRequest, tenant: str, stream: bool
    ) -> tuple[Request, list[Snippet]]:
        inp, params = self.to_job(req)
        inp = self.with_suggestion(inp, tenant, _filepath(req))
        inp, snippets = await self._with_context(req, inp, tenant)
        adapter = self.adapter_for(tenant)
        document = self.document_key(req, tenant)
        if document is not None:  # caches are per adapter: a switch never reuses another's KV
            document = dataclasses.replace(document, adapter=adapter)
        audit = not stream and bool(req.debug_options and req.debug_options.compare_full)
        request = Request(
            inp, params, document=document, tenant=tenant, adapter=adapter, stream=stream, audit=audit
        )
        return request, snippets

    async def complete(self, req: CompletionRequest, http: HttpRequest, tenant: str = "default") -> Response:
        request, snippets = await self.request(req, tenant, stream=False)
        watcher = asyncio.create_task(self.watch_disconnect(http, request))
        try:
            finished = await self.run(request)
        finally:
            watcher.cancel()
        if request.cancelled.is_set():  # only the disconnect watcher cancels a REST request
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        cid = _new_id()
        self._remember(tenant, cid, req, request, finished.result)
        body = self._response(cid, finished.result, finished.queue_ms, req, snippets, request.adapter, tenant)
        return JSONResponse(_dump(body))

    async def stream(self, req: CompletionRequest, http: HttpRequest, tenant: str = "default") -> Response:
        request, snippets = await self.request(req, tenant, stream=True)
        cid = _new_id()
        events = self.submit(request)
        # Until the model takes the request, nothing else notices a client that gives up.
        watcher = asyncio.create_task(self.watch_disconnect(http, request))
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        finally:
            watcher.cancel()
        if isinstance(first, Finished):  # cancelled while it waited
            return Response(status_code=CLIENT_CLOSED_REQUEST)

        async def body() -> AsyncIterator[str]:
            # from here on, a disconnect cancels this generator, and closing `events` the request
            async with contextlib.aclosing(events):
                try:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            yield _sse(_chunk(cid, self.engine.loaded.model_id, event.text, None))
                        elif isinstance(event, Finished):
                            result = event.result
                            self._remember(tenant, cid, req, request, result)
                            final = _dump(
                                self._response(
                                    cid, result, event.queue_ms, req, snippets, request.adapter, tenant
                                )
                            )
                            end = {"index": 0, "text": "", "finish_reason": result.finish_reason}
                            final["choices"] = [end]
                            yield _sse(final)
                            yield "data: [DONE]\n\n"
                except ValueError as exc:
                    yield _sse({"error": {"code": "invalid_request", "message": str(exc)}})

        headers = {"Cache-Control": "no-cache"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    def _remember(
        self, tenant: str, cid: str, req: CompletionRequest, request: Request, result: CompletionResult
    ) -> None:
        self.served.remember(
            tenant, cid, _filepath(req), request.input.prefix, request.input.suffix, result.text
        )

    async def watch_disconnect(self, http: HttpRequest, request: Request) -> None:
        while not request.cancelled.is_set():
            if await http.is_disconnected():
                self.scheduler.cancel(request)
                return
            await asyncio.sleep(DISCONNECT_POLL_S)


def _filepath(req: CompletionRequest) -> str | None:
    """The file a REST completion is for: its document, else the segments' filepath."""
    return req.document or (req.segments.filepath if req.segments else None)


def public_adapter(name: str | None) -> str | None:
    """A served adapter's id as its tenant knows it (`engine.deltas` names are tenant/id)."""
    return None if name is None else name.split("/", 1)[-1]


def _dump(response: CompletionResponse) -> dict[str, object]:
    """The response as JSON; `debug_data` only when it was asked for."""
    body = response.model_dump()
    if body.get("debug_data") is None:
        body.pop("debug_data", None)
    return body


def _new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def _chunk(cid: str, model: str, text: str, finish: str | None) -> dict[str, object]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }


def _sse(data: dict[str, object]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
