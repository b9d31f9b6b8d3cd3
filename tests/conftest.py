"""Shared fixtures: tiny config-built models (no hub) and the real default model (marked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernels' tests run in Triton's CPU interpreter, which must be on before anything
    # imports `triton` (transformers does): see kernels/triton_util.py.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from splice_testkit.tiny import save_model_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests are skipped where CUDA is not available (CI, developer laptops)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama with a real byte-level BPE tokenizer, saved like a hub checkpoint."""
    return save_model_dir(tmp_path_factory.mktemp("tiny-llama"), family="plain", arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2 with Qwen2.5-Coder's FIM tokens."""
    return save_model_dir(tmp_path_factory.mktemp("tiny-qwen"), family="qwen", arch="qwen2")


@pytest.fixture(scope="session")
def tiny_short_context_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose context is only 128 tokens, to exercise prompt trimming cheaply."""
    return save_model_dir(
        tmp_path_factory.mktemp("tiny-short"), family="starcoder", arch="llama", max_position_embeddings=128
    )
