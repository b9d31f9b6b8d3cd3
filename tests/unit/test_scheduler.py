"""The step scheduler on a tiny real model: events, queue limits, cancellation, latest-wins, and
several generations stepping in turn giving what each gives alone."""

from __future__ import annotations

import asyncio
import threading

import pytest
from unit.test_engine import make_engine

from splice.completion.batch_kv import kv_shape
from splice.completion.engine import CompletionEngine, CompletionInput, CompletionResult, GenerationParams
from splice.completion.scheduler import Event, Finished, QueueFull, Request, Started, StepScheduler, TextDelta

INPUTS = [
    CompletionInput("def add(a, b):\n    return ", "\n"),
    CompletionInput("for i in range(10):\n    ", "\nprint(total)\n"),
    CompletionInput("class Point:\n    def __init__(self, x, y):\n        self.", ""),
]


@pytest.fixture(scope="module")
def engine() -> CompletionEngine:
    return make_engine("plain", "llama")


async def _collect(events: object) -> list[Event]:
    return [event async for event in events]  # type: ignore[attr-defined]


async def _run(scheduler: StepScheduler, request: Request) -> list[Event]:
    return await _collect(scheduler.submit(request))  # submit() needs the caller's event loop


class Gate:
    """An `on_start` hook that holds the worker on the first request until released, so that
    the others queue up behind it."""

    def __init__(self) -> None:
        self.taken = threading.Event()
        self.release = threading.Event()
        self.started: list[Request] = []

    def __call__(self, request: Request) -> None:
        self.started.append(request)
        if len(self.started) == 1:
            self.taken.set()
            assert self.release.wait(30)


async def _wait_taken(gate: Gate) -> None:
    await asyncio.get_running_loop().run_in_executor(None, gate.taken.wait, 30)


def test_events_stream_the_same_text_as_a_direct_completion(engine: CompletionEngine) -> None:
    params = GenerationParams(max_tokens=20)
    expected = engine.complete(INPUTS[0], params)
    scheduler = StepScheduler(engine, queue_size=4)
    try:
        events = asyncio.run(_run(scheduler, Request(INPUTS[0], params, stream=True)))
    finally:
        scheduler.shutdown()
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    assert all(isinstance(e, TextDelta) for e in events[1:-1])
    result = events[-1].result
    assert result.text == expected.text and result.completion_tokens == expected.completion_tokens
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text
    # Without stream, no deltas: just Started then Finished.
    scheduler = StepScheduler(engine, queue_size=4)
    try:
        quiet = asyncio.run(_run(scheduler, Request(INPUTS[0], params)))
    finally:
        scheduler.shutdown()
    assert [type(e) for e in quiet] == [Started, Finished]


def test_full_queue_refuses_and_cancelled_waiters_never_run(engine: CompletionEngine) -> None:
    gate = Gate()
    finished: list[tuple[Request, CompletionResult | None]] = []
    scheduler = StepScheduler(
        engine, queue_size=1, on_start=gate, on_finish=lambda r, res: finished.append((r, res))
    )
    params = GenerationParams(max_tokens=6)

    async def scenario() -> None:
        first = Request(INPUTS[0], params)
        first_events = scheduler.submit(first)
        await _wait_taken(gate)
        second = Request(INPUTS[1], params)
        second_events = scheduler.submit(second)
        assert scheduler.waiting == 1
        with pytest.raises(QueueFull) as refused:
            scheduler.submit(Request(INPUTS[2], params))
        assert refused.value.waiting == 1 and refused.value.retry_after_s >= 1
        scheduler.cancel(second)  # waiting: it leaves the queue now
        assert scheduler.waiting == 0
        second_seen = await _collect(second_events)
        assert [type(e) for e in second_seen] == [Finished]
        assert second_seen[0].result.finish_reason == "cancelled"  # type: ignore[union-attr]
        # The queue has room again.
        third = Request(INPUTS[2], params)
        third_events = scheduler.submit(third)
        gate.release.set()
        first_seen, third_seen = await _collect(first_events), await _collect(third_events)
        for seen in (first_seen, third_seen):
            assert isinstance(seen[0], Started) and isinstance(seen[-1], Finished)
            assert seen[-1].result.finish_reason in ("length", "stop")
        assert [r.input for r in gate.started] == [INPUTS[0], INPUTS[2]]  # the cancelled one never ran

    try:
        asyncio.run(scenario())
    finally:
        scheduler.shutdown()
    assert len(finished) == 3 and all(res is not None for _, res in finished)


def test_latest_wins_cancels_the_older_request_for_the_same_key(engine: CompletionEngine) -> None:
    gate = Gate()
    scheduler = StepScheduler(engine, queue_size=4, on_start=gate)
    params = GenerationParams(max_tokens=8)

    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        older = scheduler.submit(Request(INPUTS[0], params, latest_wins="doc-a"))
        await _wait_taken(gate)  # the older one is running
        other = scheduler.submit(Request(INPUTS[1], params, latest_wins="doc-b"))
        newer = scheduler.submit(Request(INPUTS[2], params, latest_wins="doc-a"))
        gate.release.set()
        return await _collect(older), await _collect(other), await _collect(newer)

    try:
        older, other, newer = asyncio.run(scenario())
    finally:
        scheduler.shutdown()
    assert older[-1].result.finish_reason == "cancelled"  # type: ignore[union-attr]
    assert older[-1].result.completion_tokens == 0  # type: ignore[union-attr]
    expected = engine.complete(INPUTS[2], params)
    assert newer[-1].result.text == expected.text  # type: ignore[union-attr]
    assert other[-1].result.finish_reason != "cancelled"  # type: ignore[union-attr]


def test_generations_stepping_in_turn_match_each_alone(engine: CompletionEngine) -> None:
    params = GenerationParams(max_tokens=16)
    alone = [engine.complete(inp, params) for inp in INPUTS]
    order: list[str] = []
    scheduler = StepScheduler(
        engine,
        queue_size=4,
        max_running=3,
        on_start=lambda r: order.append("start"),
        on_finish=lambda r, res: order.append("finish"),
    )

    async def scenario() -> list[list[Event]]:
        streams = [scheduler.submit(Request(inp, params, stream=True)) for inp in INPUTS]
        return list(await asyncio.gather(*(_collect(s) for s in streams)))

    try:
        seen = asyncio.run(scenario())
    finally:
        scheduler.shutdown()
    assert order[:3] == ["start"] * 3  # all three ran side by side
    for events, expected in zip(seen, alone, strict=True):
        result = events[-1].result  # type: ignore[union-attr]
        assert (result.text, result.completion_tokens) == (expected.text, expected.completion_tokens)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text


def test_bad_input_raises_from_the_events_and_reports_a_failure(engine: CompletionEngine) -> None:
    finished: list[CompletionResult | None] = []
    scheduler = StepScheduler(engine, queue_size=2, on_finish=lambda r, res: finished.append(res))
    too_long = GenerationParams(max_tokens=engine.context_window)
    try:
        with pytest.raises(ValueError, match="leaves no room"):
            asyncio.run(_run(scheduler, Request(INPUTS[0], too_long)))
        # The worker survives it.
        after = asyncio.run(_run(scheduler, Request(INPUTS[0], GenerationParams(max_tokens=4))))
    finally:
        scheduler.shutdown()
    assert finished[0] is None
    assert isinstance(after[-1], Finished) and after[-1].result.completion_tokens >= 1


def test_leaving_the_events_early_cancels_the_request(engine: CompletionEngine) -> None:
    scheduler = StepScheduler(engine, queue_size=2)
    request = Request(INPUTS[1], GenerationParams(max_tokens=200), stream=True)

    async def scenario() -> None:
        events = scheduler.submit(request)
        first = await events.__anext__()
        assert isinstance(first, Started)
        await events.aclose()

    try:
        asyncio.run(scenario())
        assert request.cancelled.is_set()
        assert scheduler.waiting == 0
    finally:
        scheduler.shutdown()


def test_shutdown_refuses_new_requests(engine: CompletionEngine) -> None:
    scheduler = StepScheduler(engine, queue_size=2)
    scheduler.shutdown()

    async def submit() -> None:
        scheduler.submit(Request(INPUTS[0], GenerationParams(max_tokens=4)))

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(submit())
    with pytest.raises(ValueError):
        StepScheduler(engine, queue_size=-1)


def test_batched_decoding_gives_each_request_what_it_gets_alone() -> None:
    """max_batch=3: the three requests decode in shared passes (lookup verifications among them,
    one with a document cache), and each result equals the request decoded alone."""
    from splice.completion.document_cache import DocumentKey

    engine = make_engine("plain", "llama", max_batch=3)
    solo = make_engine("plain", "llama")
    params = GenerationParams(max_tokens=24)
    repeated = CompletionInput("x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2, 3]\nw = [1, ", "")
    inputs = [*INPUTS, repeated]
    key = DocumentKey("t", "doc.py", "tiny-llama")
    requests = [Request(inp, params, stream=True) for inp in inputs]
    requests[1] = Request(inputs[1], params, document=key)
    alone = [solo.complete(inp, params) for inp in inputs]
    widths: list[list[int]] = []
    step_batch = engine.step_batch

    def spy(owners: list[object], rows: list[list[int]]) -> list[object]:
        widths.append([len(r) for r in rows])
        return step_batch(owners, rows)  # type: ignore[arg-type, return-value]

    engine.step_batch = spy  # type: ignore[assignment, method-assign]
    scheduler = StepScheduler(engine, queue_size=4, max_running=3)

    async def scenario() -> list[list[Event]]:
        streams = [scheduler.submit(r) for r in requests]
        return list(await asyncio.gather(*(_collect(s) for s in streams)))

    try:
        seen = asyncio.run(scenario())
    finally:
        scheduler.shutdown()
    for events, expected in zip(seen, alone, strict=True):
        result = events[-1].result  # type: ignore[union-attr]
        assert (result.text, result.completion_tokens) == (expected.text, expected.completion_tokens)
    assert max(len(w) for w in widths) == 3  # three requests in one pass
    assert any(max(w) > 1 for w in widths)  # a draft verified inside a batch
    assert engine.pool is not None and engine.pool.used == 0  # every slot given back
    assert seen[1][-1].result.completion_tokens > 0  # type: ignore[union-attr]


def test_a_batched_request_cancelled_mid_decode_frees_its_slot() -> None:
    engine = make_engine("plain", "llama", max_batch=2)
    params = GenerationParams(max_tokens=40)
    scheduler = StepScheduler(engine, queue_size=4, max_running=2)
    first = Request(INPUTS[0], params, stream=True)

    async def scenario() -> tuple[list[Event], list[Event]]:
        events = scheduler.submit(first)
        other = asyncio.ensure_future(_collect(scheduler.submit(Request(INPUTS[1], params))))
        got = [await events.__anext__(), await events.__anext__()]  # Started, then a first delta
        scheduler.cancel(first)
        got += [e async for e in events]
        return got, await other

    try:
        cancelled, finished = asyncio.run(scenario())
    finally:
        scheduler.shutdown()
    assert cancelled[-1].result.finish_reason == "cancelled"  # type: ignore[union-attr]
    assert finished[-1].result.text == make_engine("plain", "llama").complete(INPUTS[1], params).text  # type: ignore[union-attr]
    assert engine.pool is not None and engine.pool.used == 0


def test_the_batch_pool_keeps_to_its_memory_budget() -> None:
    """max_batch=8 but a budget for 2 slots: the pool has 2, and a third request decodes alone."""
    probe = make_engine("plain", "llama", max_batch=8)
    heads, head_dim = kv_shape(probe.model.config)
    slot_tokens = 200
    slot_bytes = 2 * sum(heads) * head_dim * slot_tokens * 4  # fp32
    engine = make_engine(
        "plain", "llama", max_batch=8, batch_slot_tokens=slot_tokens, batch_memory_bytes=2 * slot_bytes + 1
    )
    params = GenerationParams(max_tokens=8)
    scheduler = StepScheduler(engine, queue_size=4, max_running=3)

    async def scenario() -> list[list[Event]]:
        return list(await asyncio.gather(*(_collect(scheduler.submit(Request(i, params))) for i in INPUTS)))

    try:
        seen = asyncio.run(scenario())
    finally:
        scheduler.shutdown()
    assert engine.pool is not None and engine.pool.slots == 2
    alone = make_engine("plain", "llama")
    for events, inp in zip(seen, INPUTS, strict=True):
        assert events[-1].result.text == alone.complete(inp, params).text  # type: ignore[union-attr]
