"""The FastAPI application: routes only translate HTTP; the work is in the services."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Response, WebSocket
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel

from splice.assistant import next_edits
from splice.assistant.adapter_registry import AdapterRegistry
from splice.assistant.auth import ApiKeys
from splice.assistant.completions import CLIENT_CLOSED_REQUEST, CompletionService
from splice.assistant.documents import DocumentStore, InMemoryDocumentStore, Position, UnknownDocument
from splice.assistant.errors import ApiError, install_error_handlers
from splice.assistant.events import EventStore, InMemoryEventStore, new_event
from splice.assistant.finetune_jobs import (
    ACCEPTED,
    FINAL,
    FineTuneJob,
    InlineRunner,
    JobStore,
    MemoryJobStore,
    RedisJobStore,
    new_job_id,
)
from splice.assistant.metrics import Metrics
from splice.assistant.middleware import BodySizeLimit, RequestMetrics
from splice.assistant.openapi import body_doc, install_openapi
from splice.assistant.repositories import RegistryStore, RepositoryRegistry, parse_roots
from splice.assistant.schemas import (
    CompletionRequest,
    CompletionResponse,
    EventRequest,
    EventResponse,
    FineTuneRequest,
    Health,
    NextEditRequest,
    RepositoryRequest,
    SearchRequest,
)
from splice.assistant.sessions import EditorSession
from splice.assistant.settings import Settings
from splice.assistant.version import __version__
from splice.completion.document_cache import DocumentKey
from splice.completion.engine import CompletionEngine
from splice.completion.fim import repository_separator
from splice.retrieval.context import ContextAssembler
from splice.retrieval.tokens import text_terms

M = TypeVar("M", bound=BaseModel)


@dataclass
class AppState:
    settings: Settings
    engine: CompletionEngine
    metrics: Metrics
    events: EventStore
    completions: CompletionService
    documents: DocumentStore
    keys: ApiKeys
    repositories: RepositoryRegistry
    adapters: AdapterRegistry
    jobs: JobStore
    enqueue: Callable[[str], None]

    def tenant(self, request: Request) -> str:
        return self.keys.tenant(request.headers.get("authorization"))


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.splice
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def parse_body(raw: bytes, model: type[M]) -> M:
    """Strict JSON body parsing with clear errors (the edge owns the status codes)."""
    if not raw.strip():
        raise ApiError(422, "invalid_json", "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            "invalid_encoding",
            f"request body is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})",
        ) from exc
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            422,
            "invalid_json",
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        ) from exc
    except RecursionError as exc:
        raise ApiError(422, "invalid_json", "request body is nested too deeply") from exc
    if not isinstance(obj, dict):
        raise ApiError(422, "invalid_json", f"expected a JSON object, got {type(obj).__name__}")
    return model.model_validate(obj)


PLAYGROUND_HINT = "the playground is not built: run `cd editor-plugin && npm ci && npm run build`"


def playground_dir(settings: Settings) -> Path:
    if settings.playground_dir is not None:
        return settings.playground_dir
    return Path(__file__).resolve().parent.parent / "editor-plugin" / "dist" / "playground"


def make_registry(
    settings: Settings, engine: CompletionEngine, store: RegistryStore | None = None
) -> RepositoryRegistry:
    tokenizer = engine.tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return RepositoryRegistry(
        settings.home,
        parse_roots(settings.repository_roots),
        count,
        file_sep=repository_separator(tokenizer, engine.template),
        context_tokens=settings.context_tokens,
        refresh_interval_s=settings.index_refresh_s,
        context_snippets=settings.context_snippets,
        commented=settings.context_commented,
        store=store,
    )


def create_app(
    settings: Settings,
    engine: CompletionEngine,
    events: EventStore | None = None,
    documents: DocumentStore | None = None,
) -> FastAPI:
    metrics = Metrics()
    closers: list[Callable[[], Awaitable[None]]] = []
    registry_store: RegistryStore | None = None
    adapters = AdapterRegistry(settings.home)
    jobs: JobStore
    enqueue: Callable[[str], None]
    if settings.redis_url:
        redis_jobs = RedisJobStore(settings.redis_url, settings.redis_prefix)
        jobs, enqueue = redis_jobs, redis_jobs.enqueue  # `splice worker` processes run them
        closers.append(lambda: asyncio.to_thread(redis_jobs.close))
    else:
        memory_jobs = MemoryJobStore()
        inline = InlineRunner(memory_jobs, settings, adapters)
        jobs, enqueue = memory_jobs, inline.enqueue
        closers.append(lambda: asyncio.to_thread(inline.close))
    if settings.redis_url:
        from splice.assistant import redis_state

        stores = redis_state.connect(settings)
        # (`is None`, not `or`: an empty store has len() 0)
        documents = stores.documents if documents is None else documents
        events = stores.events if events is None else events
        registry_store = stores.registry
        closers.append(stores.close)
    state = AppState(
        settings=settings,
        engine=engine,
        metrics=metrics,
        events=InMemoryEventStore(settings.events_kept) if events is None else events,
        completions=CompletionService(engine, metrics, settings),
        documents=(
            InMemoryDocumentStore(max_chars=settings.ws_max_message_bytes) if documents is None else documents
        ),
        keys=ApiKeys(settings.api_keys),
        repositories=make_registry(settings, engine, registry_store),
        adapters=adapters,
        jobs=jobs,
        enqueue=enqueue,
    )
    state.completions.registry = state.repositories
    state.completions.adapters = adapters

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.repositories.load)
        yield
        state.completions.scheduler.shutdown()
        state.repositories.close()
        for close in closers:
            await close()

    app = FastAPI(title="Splice", version=__version__, lifespan=lifespan)
    app.state.splice = state
    install_error_handlers(app)
    install_openapi(
        app,
        [
            CompletionRequest,
            NextEditRequest,
            CompletionResponse,
            EventRequest,
            FineTuneRequest,
            RepositoryRequest,
            SearchRequest,
        ],
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)

    completions_doc = {
        **body_doc(CompletionRequest),
        "responses": {
            "200": {
                "description": "The completion; with `stream: true`, server-sent events of partial ones",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/CompletionResponse"}},
                    "text/event-stream": {  # each event's data: a JSON CompletionResponse, then [DONE]
                        "schema": {
                            "type": "object",
                            "required": ["data"],
                            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                        }
                    },
                },
            }
        },
    }

    @app.get("/v1/health", response_model=Health)
    async def health(state: StateDep) -> Health:
        loaded = state.engine.loaded
        return Health(
            model=loaded.model_id,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            version=__version__,
            fim_template=state.engine.template.name,
            context_window=state.engine.context_window,
            adapter=loaded.adapter_name,
        )

    @app.post("/v1/completions", openapi_extra=completions_doc, response_model=None)
    async def completions(request: Request, state: StateDep) -> Response:
        tenant = state.tenant(request)
        req = parse_body(await request.body(), CompletionRequest)
        if req.stream:
            return await state.completions.stream(req, request, tenant)
        return await state.completions.complete(req, request, tenant)

    @app.post("/v1/next-edit", openapi_extra=body_doc(NextEditRequest))
    async def next_edit(request: Request, state: StateDep) -> dict[str, Any]:
        """A suggested edit of the lines around `position`, following the tenant's recent edits."""
        tenant = state.tenant(request)
        req = parse_body(await request.body(), NextEditRequest)
        version: int | None = None
        language: str | None = req.language
        if req.document is not None:
            try:
                doc = await state.documents.get(tenant, req.document)
            except UnknownDocument as exc:
                raise ApiError(404, "unknown_document", str(exc)) from exc
            text, language, version = doc.text, language or doc.language_id, doc.version
        else:
            text = req.text or ""
        position = Position(req.position.line, req.position.character)
        window, params = next_edits.plan(
            state.completions, text, position, req.lines_before, req.lines_after, req.max_tokens
        )
        job = await next_edits.prepare(
            state.completions,
            window,
            params,
            text,
            tenant=tenant,
            uri=req.document,
            filepath=req.filepath,
            language=language,
            version=version,
        )
        watcher = asyncio.create_task(state.completions.watch_disconnect(request, job.request))
        try:
            finished = await state.completions.run(job.request)
        finally:
            watcher.cancel()
        if job.request.cancelled.is_set():
            raise ApiError(CLIENT_CLOSED_REQUEST, "cancelled", "the client closed the request")
        return next_edits.answer(state.completions, job, finished)

    @app.post("/v1/events", openapi_extra=body_doc(EventRequest), response_model=EventResponse)
    async def events_route(request: Request, state: StateDep) -> EventResponse:
        tenant = state.tenant(request)
        ev = parse_body(await request.body(), EventRequest)
        accepted = (
            state.completions.served.accepted(tenant, ev.completion_id) if ev.type == "select" else None
        )
        await state.events.record(
            new_event(
                ev.type, ev.completion_id, ev.choice_index, ev.elapsed_ms, tenant=tenant, accepted=accepted
            )
        )
        state.metrics.events.labels(type=ev.type).inc()
        return EventResponse()

    @app.get("/v1/events")
    async def list_events(
        request: Request, state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        """The caller's tenant's most recent telemetry events, oldest first."""
        tenant = state.tenant(request)
        recent = await state.events.recent(tenant, limit)
        return {
            "events": [
                {
                    "type": e.type,
                    "completion_id": e.completion_id,
                    "choice_index": e.choice_index,
                    "elapsed_ms": e.elapsed_ms,
                    "at": e.at,
                    "accepted": e.accepted is not None,  # its text is kept as training data
                }
                for e in recent
            ]
        }

    @app.websocket("/v1/documents")
    async def documents_ws(ws: WebSocket) -> None:
        state: AppState = ws.app.state.splice
        await ws.accept()
        try:
            tenant = state.keys.tenant(ws.headers.get("authorization"), ws.query_params.get("api_key"))
        except ApiError as exc:
            await ws.send_json({"type": "error", "code": exc.code, "message": exc.message})
            await ws.close(code=4401, reason="unauthorized")
            return
        session = EditorSession(ws, tenant, state.documents, state.completions, state.settings, state.metrics)
        await session.run()

    @app.get("/v1/documents")
    async def document_route(
        request: Request, state: StateDep, uri: Annotated[str, Query()]
    ) -> dict[str, Any]:
        tenant = state.tenant(request)
        try:
            doc = await state.documents.get(tenant, uri)
        except UnknownDocument as exc:
            raise ApiError(404, "unknown_document", str(exc)) from exc
        service = state.completions
        key = DocumentKey(tenant, uri, service.engine.loaded.model_id, adapter=service.adapter_for(tenant))
        return {
            "uri": doc.uri,
            "version": doc.version,
            "languageId": doc.language_id,
            "text": doc.text,
            # this replica's KV cache of it (tokens, bytes, per-layer [KV heads, tokens, head dim])
            "kvCache": service.engine.kv.describe(key),
        }

    @app.post("/v1/repositories", openapi_extra=body_doc(RepositoryRequest), status_code=202)
    async def register_repository(request: Request, state: StateDep) -> dict[str, Any]:
        tenant = state.tenant(request)
        req = parse_body(await request.body(), RepositoryRequest)
        repo = await asyncio.to_thread(state.repositories.register, tenant, req.path, req.languages)
        return repo.as_dict()

    @app.get("/v1/repositories")
    async def list_repositories(request: Request, state: StateDep) -> dict[str, Any]:
        tenant = state.tenant(request)
        repos = await asyncio.to_thread(state.repositories.owned, tenant)
        return {"repositories": [r.as_dict() for r in repos]}

    @app.get("/v1/repositories/{repo_id}")
    async def repository(repo_id: str, request: Request, state: StateDep) -> dict[str, Any]:
        tenant = state.tenant(request)
        return (await asyncio.to_thread(state.repositories.get, tenant, repo_id)).as_dict()

    @app.post("/v1/fine-tunes", openapi_extra=body_doc(FineTuneRequest), status_code=202)
    async def create_fine_tune(request: Request, state: StateDep) -> dict[str, Any]:
        """Train an adapter on one of your repositories; the gate decides whether it serves you."""
        tenant = state.tenant(request)
        req = parse_body(await request.body(), FineTuneRequest)
        limit = state.settings.finetune_max_steps_limit
        if req.max_steps > limit:
            raise ApiError(422, "invalid_request", f"max_steps: at most {limit} on this server")
        repo = await asyncio.to_thread(state.repositories.get, tenant, req.repository)
        if not (repo.root / ".git").exists():
            raise ApiError(422, "not_a_git_checkout", f"repository {req.repository!r} is not a git checkout")
        job = FineTuneJob(
            id=new_job_id(),
            tenant=tenant,
            repository=req.repository,
            repo_path=str(repo.root),
            method=req.method,
            max_steps=req.max_steps,
            time_limit_s=req.time_limit_s,
            lintseq=req.lintseq,
            history=req.history,
        )
        accepted = [e.accepted for e in await state.events.recent(tenant, 10_000) if e.accepted]
        if accepted:  # the tenant's accepted completions become training data of this job
            folder = state.settings.home / "jobs" / job.id
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            lines = "".join(json.dumps(a) + "\n" for a in accepted)
            await asyncio.to_thread((folder / ACCEPTED).write_text, lines)
        await asyncio.to_thread(state.jobs.create, job)
        await asyncio.to_thread(state.enqueue, job.id)
        return job.public()

    async def _own_job(state: AppState, tenant: str, job_id: str) -> FineTuneJob:
        job = await asyncio.to_thread(state.jobs.get, job_id)
        if job is None or job.tenant != tenant:
            raise ApiError(404, "unknown_fine_tune", f"no fine-tune job {job_id!r}")
        return job

    @app.get("/v1/fine-tunes")
    async def list_fine_tunes(request: Request, state: StateDep) -> dict[str, Any]:
        tenant = state.tenant(request)
        return {"fine_tunes": [j.public() for j in await asyncio.to_thread(state.jobs.list, tenant)]}

    @app.get("/v1/fine-tunes/{job_id}")
    async def get_fine_tune(job_id: str, request: Request, state: StateDep) -> dict[str, Any]:
        return (await _own_job(state, state.tenant(request), job_id)).public()

    @app.delete("/v1/fine-tunes/{job_id}")
    async def cancel_fine_tune(job_id: str, request: Request, state: StateDep) -> dict[str, Any]:
        job = await _own_job(state, state.tenant(request), job_id)
        if job.state in FINAL:
            raise ApiError(409, "already_finished", f"fine-tune job {job_id!r} is {job.state}")
        updated = await asyncio.to_thread(state.jobs.update, job_id, cancel_requested=True)
        return (updated or job).public()

    @app.get("/v1/adapters")
    async def list_adapters(request: Request, state: StateDep) -> dict[str, Any]:
        """Your fine-tuned adapters; `current` serves your completions."""
        tenant = state.tenant(request)
        current = await asyncio.to_thread(state.adapters.current, tenant)
        records = await asyncio.to_thread(state.adapters.list, tenant)
        return {"current": current.id if current else None, "adapters": [r.public() for r in records]}

    @app.post("/v1/search", openapi_extra=body_doc(SearchRequest))
    async def search(request: Request, state: StateDep) -> dict[str, Any]:
        tenant = state.tenant(request)
        req = parse_body(await request.body(), SearchRequest)
        repo = await asyncio.to_thread(state.repositories.get, tenant, req.repository)

        def run() -> list[dict[str, Any]]:
            state.repositories.flush()  # unsaved editor buffers first
            if req.query is not None:
                hits = repo.index.store.search(text_terms(req.query), limit=req.limit)
                return [
                    {
                        "path": c.path,
                        "start_line": c.start_line,
                        "end_line": c.end_line,
                        "source": "search",
                        "name": c.name,
                        "score": round(score, 4),
                        "text": c.text,
                    }
                    for c, score in hits
                ]
            where = state.repositories.locate(tenant, req.filepath, repo.id)
            rel = where[1] if where else None
            assembler = ContextAssembler(repo.index)
            ranked = assembler.candidates(rel, req.prefix or "", req.suffix or "", req.language)
            return [s.as_dict() for s in ranked[: req.limit]]

        return {"repository": repo.id, "status": repo.status, "snippets": await asyncio.to_thread(run)}

    @app.get("/playground", include_in_schema=False)
    async def playground_root() -> Response:
        return RedirectResponse("/playground/")

    @app.get("/playground/{path:path}", include_in_schema=False)
    async def playground(path: str, state: StateDep) -> Response:
        root = playground_dir(state.settings).resolve()
        if not (root / "index.html").is_file():
            raise ApiError(404, "playground_not_built", PLAYGROUND_HINT)
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise ApiError(404, "not_found", f"no such playground file: {path}")
        return FileResponse(target)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_route(state: StateDep) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
