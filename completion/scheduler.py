"""The step scheduler: which request's generation runs the next forward pass.

REST, SSE and the WebSocket describe a completion as a `Request` and call `submit(request)`. It
refuses at once when the queue is at its limit (`QueueFull`, HTTP 429 with Retry-After at the
edge) and otherwise returns the request's events as an async iterator: `Started` when the model
takes it, `TextDelta`s while it decodes (when it streams), then `Finished` with the result.

One worker thread owns the engine. Each turn it admits waiting requests while fewer than
`max_running` generations run (encoding their prompts: prefill or PIE reuse), then runs one step
of each running generation (`splice.completion.generation`). With batching on
(`EngineConfig.max_batch` > 1), the generations whose passes can batch (plain decode steps and
lookup verifications) move their KV into a slot of the engine's pool and step together: one
forward pass per adapter for all of them (`CompletionEngine.step_batch`); the others (self-
speculative drafting, early exit, or no free slot) step alone. Between steps it honours
cancellation: a cancelled request that waits leaves the queue at once and never runs, a running
one ends at its next step, and the document cache it was built from is left as it was. A request
with a `latest_wins` key cancels the earlier ones with the same key (an editor's newer completion
for the same document replaces the older). On CPU one generation runs at a time by default
(`max_running=1`); a GPU runs a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Hashable
from dataclasses import dataclass, field

from splice.completion.document_cache import DocumentKey
from splice.completion.engine import CompletionEngine, CompletionInput, CompletionResult, GenerationParams
from splice.completion.generation import Generation

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One completion to run: the input and post-processing context, sampling and stops, the
    document cache to reuse, and where its output goes (events; deltas only when it streams)."""

    input: CompletionInput
    params: GenerationParams
    document: DocumentKey | None = None  # the document cache to reuse (None: encode the whole prompt)
    tenant: str = "default"
    adapter: str | None = None  # the tenant's adapter (`engine.deltas` name) its forwards apply
    stream: bool = False  # emit TextDelta events while decoding
    audit: bool = False  # also compute what a full recompute gives (CompletionResult.audit; costly)
    latest_wins: Hashable | None = None  # a newer request with the same key cancels this one
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None  # when the model took it (None: it never ran)

    @property
    def queue_ms(self) -> float:
        end = self.started_at if self.started_at is not None else time.perf_counter()
        return (end - self.queued_at) * 1000.0


@dataclass(frozen=True)
class Started:
    queue_ms: float


@dataclass(frozen=True)
class TextDelta:
    text: str  # the deltas' concatenation equals the final result's text


@dataclass(frozen=True)
class Finished:
    result: CompletionResult  # finish_reason "cancelled" for a request cancelled while it waited
    queue_ms: float


Event = Started | TextDelta | Finished


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class QueueFull(Exception):
    def __init__(self, retry_after_s: int, waiting: int) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model")
        self.retry_after_s = retry_after_s
        self.waiting = waiting


@dataclass
class _Entry:
    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event | _Failed]
    generation: Generation | None = None
    batched: bool = False  # its KV is in a slot of the engine's batch pool

    @property
    def owner(self) -> int:
        """Its key in the batch pool."""
        return id(self)


Hook = Callable[[Request], None]
FinishHook = Callable[[Request, CompletionResult | None], None]  # None: it failed


class StepScheduler:
    """Runs the generations of one engine on a worker thread, one step at a time."""

    def __init__(
        self,
        engine: CompletionEngine,
        queue_size: int,
        *,
        max_running: int = 1,
        on_start: Hook | None = None,
        on_finish: FinishHook | None = None,
    ) -> None:
        if queue_size < 0 or max_running < 1:
            raise ValueError("queue_size must be >= 0 and max_running >= 1")
        self.engine = engine
        self.queue_size = queue_size
        self.max_running = max_running
        self.on_start = on_start  # on the worker thread, when a request is taken
        self.on_finish = on_finish  # when a request ends, run or not (cancelled while waiting)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[_Entry] = deque()
        self._running: list[_Entry] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._avg_s = 1.0  # moving average of a request's run time, for Retry-After

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def retry_after(self) -> int:
        return max(1, math.ceil(self._avg_s * (len(self._waiting) + 1)))

    # -- the front: any event loop ------------------------------------------------------------

    def submit(self, request: Request) -> AsyncGenerator[Event, None]:
        """Queue `request` (or raise QueueFull) and return its events. Leaving the iterator before
        `Finished` (close it, or cancel the task reading it) cancels the request."""
        entry = _Entry(request, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._closed:
                raise RuntimeError("the scheduler is shut down")
            if request.latest_wins is not None:
                for other in [*self._waiting, *self._running]:
                    if other.request.latest_wins == request.latest_wins:
                        other.request.cancelled.set()
            busy = bool(self._running or self._waiting)
            if busy and len(self._waiting) >= self.queue_size:
                raise QueueFull(self.retry_after(), len(self._waiting))
            self._waiting.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="splice-generate", daemon=True)
                self._thread.start()
            self._wake.notify()
        self._drop_cancelled()
        return self._events(entry)

    def cancel(self, request: Request) -> None:
        """Stop `request`: waiting, it leaves the queue now and never runs; running, it ends at
        its next step (its `Finished` then reports finish reason "cancelled")."""
        request.cancelled.set()
        self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [e for e in self._waiting if e.request.cancelled.is_set()]
            for entry in gone:
                self._waiting.remove(entry)
        for entry in gone:
            self._finish(entry, CompletionResult.cancelled())

    async def _events(self, entry: _Entry) -> AsyncGenerator[Event, None]:
        finished = False
        try:
            while not finished:
                event = await entry.events.get()
                if isinstance(event, _Failed):
                    finished = True
                    raise event.error
                finished = isinstance(event, Finished)
                yield event
        finally:
            if not finished:  # the reader went away: nobody wants the rest
                self.cancel(entry.request)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Cancel everything and wait (up to `timeout_s`) for the worker to leave its current
        step: a worker thread still inside a forward pass when the interpreter exits aborts it."""
        with self._lock:
            self._closed = True
            for entry in [*self._waiting, *self._running]:
                entry.request.cancelled.set()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # -- the worker thread ----------------------------------------------------------------------

    def schedule(self) -> tuple[list[_Entry], list[_Entry]]:
        """The generations that step this turn, one pass each: (those that decode together in
        one batched pass, those that run passes of their own)."""
        with self._lock:
            ready = [entry for entry in self._running if entry.generation is not None]
        return [e for e in ready if e.batched], [e for e in ready if not e.batched]

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closed:
                    stranded = [*self._waiting, *self._running]
                    self._waiting.clear()
                    self._running.clear()
                    break
                admitted: list[_Entry] = []
                while self._waiting and len(self._running) < self.max_running:
                    admitted.append(self._waiting.popleft())
                    self._running.append(admitted[-1])  # visible to latest-wins while it encodes
            for entry in admitted:
                self._admit(entry)
            batched, alone = self.schedule()
            if batched:
                self._step_batch(batched)
            for entry in alone:
                self._step(entry)
        for entry in stranded:
            self._finish(entry, CompletionResult.cancelled())

    def _admit(self, entry: _Entry) -> None:
        request = entry.request
        if request.cancelled.is_set():
            self._remove(entry)
            self._finish(entry, CompletionResult.cancelled())
            return
        request.started_at = time.perf_counter()
        if self.on_start is not None:
            self.on_start(request)
        self._post(entry, Started(request.queue_ms))

        def on_text(text: str) -> None:
            self._post(entry, TextDelta(text))

        try:
            with self.engine.deltas.use(request.adapter):
                entry.generation = self.engine.start(
                    request.input,
                    request.params,
                    document=request.document,
                    on_text=on_text if request.stream else None,
                    audit=request.audit,
                )
            entry.batched = self.engine.admit_batch(entry.owner, entry.generation)
        except Exception as exc:  # bad input the engine found (ValueError) or a real failure
            self._remove(entry)
            if request.cancelled.is_set():  # nobody waits for this answer any more
                self._finish(entry, CompletionResult.cancelled())
            else:
                self._fail(entry, exc)

    def _step(self, entry: _Entry) -> None:
        generation = entry.generation
        assert generation is not None
        try:
            if entry.request.cancelled.is_set():
                generation.cancel()
                done = True
            else:
                with self.engine.deltas.use(entry.request.adapter):
                    done = generation.step()
            if not done:
                return
            result = generation.result()
        except Exception as exc:
            self._remove(entry)
            self._fail(entry, exc)
            return
        self._remove(entry)
        self._finish(entry, result)

    def _step_batch(self, entries: list[_Entry]) -> None:
        """One pass for all of `entries` (their KV in the batch pool): each delivers what its
        last pass settled and says what it feeds next; one forward pass per adapter runs them."""
        ready: dict[str | None, list[tuple[_Entry, list[int]]]] = {}
        for entry in entries:
            generation = entry.generation
            assert generation is not None
            try:
                if entry.request.cancelled.is_set():
                    generation.cancel()
                fed = generation.prepare()
                if fed is None:
                    result = generation.result()
            except Exception as exc:
                self._remove(entry)
                self._fail(entry, exc)
                continue
            if fed is None:
                self._remove(entry)
                self._finish(entry, result)
            else:  # tenants' adapters differ per request: one pass per adapter
                ready.setdefault(entry.request.adapter, []).append((entry, fed))
        pool = self.engine.pool
        for adapter, group in ready.items():
            try:
                with self.engine.deltas.use(adapter):
                    logits = self.engine.step_batch([e.owner for e, _ in group], [fed for _, fed in group])
                assert pool is not None
                for (entry, _), rows in zip(group, logits, strict=True):
                    assert entry.generation is not None
                    pool.advance(pool.slot_of(entry.owner), entry.generation.absorb(rows))
            except Exception as exc:
                for entry, _ in group:
                    self._remove(entry)
                    self._fail(entry, exc)

    def _remove(self, entry: _Entry) -> None:
        with self._lock:
            self._running.remove(entry)
        if entry.batched and self.engine.pool is not None:
            self.engine.pool.release(entry.owner)
            entry.batched = False
        started = entry.request.started_at
        if started is not None:
            self._avg_s = 0.8 * self._avg_s + 0.2 * (time.perf_counter() - started)

    def _finish(self, entry: _Entry, result: CompletionResult) -> None:
        if self.on_finish is not None:
            try:
                self.on_finish(entry.request, result)
            except Exception:  # bookkeeping must not lose the answer
                log.exception("on_finish hook failed")
        self._post(entry, Finished(result, entry.request.queue_ms))

    def _fail(self, entry: _Entry, error: BaseException) -> None:
        if not isinstance(error, ValueError):
            log.error("generation failed", exc_info=error)
        if self.on_finish is not None:
            with contextlib.suppress(Exception):
                self.on_finish(entry.request, None)
        self._post(entry, _Failed(error))

    def _post(self, entry: _Entry, event: Event | _Failed) -> None:
        with contextlib.suppress(RuntimeError):  # the request's event loop is gone
            entry.loop.call_soon_threadsafe(entry.events.put_nowait, event)
