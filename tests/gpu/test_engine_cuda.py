"""The engine on CUDA agrees with the CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from splice.completion.engine import CompletionEngine, CompletionInput, GenerationParams
from splice.completion.models import LoadedModel, ModelSpec
from splice_testkit.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.gpu


def _engine(device: str) -> CompletionEngine:
    tokenizer = build_tokenizer("qwen")
    model = build_model(tokenizer, "qwen2").to(device)
    loaded = LoadedModel(
        model, tokenizer, "tiny", ModelSpec("dir", "t"), torch.device(device), torch.float32, 512
    )
    return CompletionEngine(loaded)


def test_cuda_greedy_matches_cpu() -> None:
    inp = CompletionInput("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n")
    params = GenerationParams(max_tokens=24)
    cpu, gpu = _engine("cpu"), _engine("cuda")
    a, b = cpu.complete(inp, params), gpu.complete(inp, params)
    # fp32 on both; TF32 matmuls may flip a near-tie late, so compare the first tokens' logits
    ids = cpu.prepare(inp, 24).input_ids
    _, la = cpu.prefill(ids)
    _, lb = gpu.prefill(ids)
    torch.testing.assert_close(la, lb.cpu(), rtol=1e-3, atol=1e-3)
    assert a.completion_tokens >= 1 and b.completion_tokens >= 1


def test_cuda_batched_decoding_equals_each_request_alone() -> None:
    """The step scheduler's batched passes on CUDA (kernel attention where Triton is installed)
    give each request what it gets decoded alone on the same device."""
    import asyncio

    from splice.completion.engine import EngineConfig
    from splice.completion.scheduler import Request, StepScheduler

    tokenizer = build_tokenizer("qwen")
    model = build_model(tokenizer, "qwen2").to("cuda")
    loaded = LoadedModel(
        model, tokenizer, "tiny", ModelSpec("dir", "t"), torch.device("cuda"), torch.float32, 512
    )
    batched = CompletionEngine(loaded, EngineConfig(max_batch=4))
    alone = CompletionEngine(loaded)
    params = GenerationParams(max_tokens=24)
    inputs = [
        CompletionInput("def add(a, b):\n    return ", "\n"),
        CompletionInput("for i in range(10):\n    ", "\nprint(total)\n"),
        CompletionInput("x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, ", ""),
    ]
    expected = [alone.complete(inp, params).text for inp in inputs]
    scheduler = StepScheduler(batched, queue_size=4, max_running=4)

    async def run() -> list[str]:
        async def one(inp: CompletionInput) -> str:
            events = [e async for e in scheduler.submit(Request(inp, params))]
            return events[-1].result.text  # type: ignore[union-attr]

        return list(await asyncio.gather(*(one(inp) for inp in inputs)))

    try:
        assert asyncio.run(run()) == expected
    finally:
        scheduler.shutdown()
    assert batched.pool is not None and batched.pool.used == 0
