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
