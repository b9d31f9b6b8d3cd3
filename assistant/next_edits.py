"""Next-edit suggestions behind `POST /v1/next-edit` and the editor's `nextEdit` message.

A suggestion rewrites the window of whole lines around the cursor (`completion.next_edit`),
with the tenant's recent edits and repository context in the prompt, through the same step
scheduler as completions and under the document's own KV cache key (the rewrite prompt differs
from the FIM prompt only around the window, so PIE reuses the rest of the document for both).
The answer is the minimal edit in LSP ranges, or no edit; asking never changes the document.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from splice.assistant.completions import CompletionService, public_adapter
from splice.assistant.documents import DocumentError, Position, offset_at, position_at
from splice.assistant.errors import ApiError
from splice.completion.document_cache import DocumentKey
from splice.completion.engine import GenerationParams
from splice.completion.next_edit import Window, rewrite_input, rewrite_params, suggested_edit, window_around
from splice.completion.scheduler import Finished, Request

MAX_WINDOW_CHARS = 16_000  # a window of 41 lines longer than this is minified or data, not code


@dataclass(frozen=True)
class NextEditJob:
    request: Request
    window: Window
    text: str  # the document's text the window was taken from
    uri: str | None
    version: int | None


def plan(
    service: CompletionService,
    text: str,
    position: Position,
    lines_before: int,
    lines_after: int,
    max_tokens: int | None,
) -> tuple[Window, GenerationParams]:
    """The window and generation limits of one suggestion (ApiError 422 for a position outside
    the text, a window too large for the model's limits, or a `max_tokens` above the server's)."""
    try:
        offset = offset_at(text, position)
    except DocumentError as exc:
        raise ApiError(422, "out_of_range", str(exc)) from exc
    try:
        window = window_around(text, offset, lines_before, lines_after)
    except ValueError as exc:
        raise ApiError(422, "window_too_large", str(exc)) from exc
    limit = service.max_tokens_limit()
    if len(window.text) > MAX_WINDOW_CHARS:
        raise ApiError(
            422,
            "window_too_large",
            f"the window is {len(window.text)} characters (at most {MAX_WINDOW_CHARS}); "
            "ask for fewer lines_before/lines_after",
        )
    params = rewrite_params(window, service.count_tokens(window.text), max_tokens)
    if params.max_tokens > limit:
        code = "invalid_request" if max_tokens is not None else "window_too_large"
        raise ApiError(
            422,
            code,
            f"max_tokens: must be at most {limit} (got {max_tokens})"
            if max_tokens is not None
            else f"rewriting this window needs up to {params.max_tokens} tokens, more than the "
            f"server's limit of {limit}; ask for fewer lines_before/lines_after",
        )
    return window, params


async def prepare(
    service: CompletionService,
    window: Window,
    params: GenerationParams,
    text: str,
    *,
    tenant: str,
    uri: str | None,
    filepath: str | None,
    language: str | None,
    version: int | None = None,
    latest_wins: Hashable | None = None,
) -> NextEditJob:
    """The scheduler request for a planned suggestion, with the tenant's context."""
    path = filepath or uri
    inp = rewrite_input(window, language, path)
    inp, _ = await service.add_context(
        inp, tenant, uri or path or "(unnamed)", edit_tokens=service.settings.next_edit_context_tokens
    )
    adapter = service.adapter_for(tenant)
    key = None
    if uri is not None and service.settings.reuse_method != "full":
        key = DocumentKey(tenant, uri, service.engine.loaded.model_id, adapter=adapter)
    request = Request(inp, params, document=key, tenant=tenant, adapter=adapter, latest_wins=latest_wins)
    return NextEditJob(request, window, text, uri, version)


def answer(service: CompletionService, job: NextEditJob, finished: Finished) -> dict[str, Any]:
    """The suggestion as JSON: `edits` holds the minimal edit (none when the rewrite is cut by
    the token limit, empty, or equal to the window)."""
    result = finished.result
    edit = suggested_edit(job.window, result.text, result.finish_reason)
    edits = []
    if edit is not None:
        edits.append({"range": _range(job.text, edit.start, edit.end), "text": edit.text})
    service.metrics.next_edits.labels(outcome="edit" if edits else "no_change").inc()
    t = result.timings
    return {
        "id": f"nedit-{uuid.uuid4().hex[:24]}",
        "object": "next_edit",
        "created": int(time.time()),
        "model": service.engine.loaded.model_id,
        "adapter": public_adapter(job.request.adapter),
        "document": job.uri,
        "version": job.version,
        "window": _range(job.text, job.window.start, job.window.end),
        "edits": edits,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "encoded_prompt_tokens": result.encoded_prompt_tokens,
            "reused_prompt_tokens": result.reused_prompt_tokens,
            "decode_passes": result.decode_passes,
            "accepted_draft_tokens": result.accepted_draft_tokens,
        },
        "timings": {
            "queue_ms": round(finished.queue_ms, 2),
            "prompt_ms": round(t.prompt_ms, 2),
            "first_token_ms": round(t.first_token_ms, 2),
            "total_ms": round(t.total_ms, 2),
        },
    }


def _range(text: str, start: int, end: int) -> dict[str, dict[str, int]]:
    return {"start": _position(text, start), "end": _position(text, end)}


def _position(text: str, offset: int) -> dict[str, int]:
    p = position_at(text, offset)
    return dataclasses.asdict(p)
