"""int8 storage of idle document caches: the rounding error is bounded per row, a packed cache
takes about a quarter of fp32's bytes, and an engine that keeps caches in int8 reuses them
(PIE still re-encodes only what changed) with the stored bytes that small."""

from __future__ import annotations

import pytest
import torch
from unit.test_engine import make_engine

from splice.completion.document_cache import DocumentKey
from splice.completion.engine import CompletionInput, GenerationParams
from splice.completion.kv_format import PackedKV, dequantize, pack, quantize, unpack
from splice.completion.pie import DocumentKV

CODE = "".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))\n\n" for i in range(40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_per_row_int8_error_is_within_half_a_step(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 50, 64, generator=gen) * torch.rand(3, 50, 1, generator=gen) * 10).to(dtype)
    x[1, 7] = 0.0  # an all-zero row stays zero
    t = quantize(x)
    assert t.q.dtype == torch.int8 and t.scale.dtype == dtype and t.scale.shape == (3, 50, 1)
    back = dequantize(t)
    assert back.dtype == dtype and back.shape == x.shape
    step = t.scale.float()
    err = (back.float() - x.float()).abs()
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    assert (err <= step / 2 + tolerance * x.float().abs().amax(-1, keepdim=True) + 1e-12).all()
    assert torch.equal(back[1, 7], torch.zeros(64, dtype=dtype))
    assert not torch.equal(back, x)  # lossy indeed


def _doc(length: int = 40) -> DocumentKV:
    gen = torch.Generator().manual_seed(1)
    layers = [torch.randn(2, length, 64, generator=gen) for _ in range(3)]
    return DocumentKV(
        list(range(length)),
        [t * 2 for t in layers],
        [t + 1 for t in layers],
        layers,
        torch.zeros(length, dtype=torch.long),
        torch.randn(100, generator=gen),
    )


def test_packing_is_a_quarter_and_unpacking_restores_the_layout() -> None:
    doc = _doc()
    assert pack(doc, "float") is doc and unpack(doc) is doc
    packed = pack(doc, "int8")
    assert isinstance(packed, PackedKV) and packed.ids == doc.ids and packed.logits is doc.logits
    assert packed.nbytes < 0.28 * doc.nbytes  # int8 plus one fp32 scale per 64-value row
    back = unpack(packed)
    for a, b in zip(
        [*back.keys, *back.values, *back.orig_keys], [*doc.keys, *doc.values, *doc.orig_keys], strict=True
    ):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a, b, atol=b.abs().max().item() / 127)
    assert torch.equal(back.offset, doc.offset)


def test_an_int8_engine_reuses_its_packed_caches() -> None:
    key = DocumentKey("t", "doc.py", "m")
    exact = make_engine(context=1024)
    small = make_engine(context=1024, kv_format="int8")
    small.model.load_state_dict(exact.model.state_dict())
    params = GenerationParams(max_tokens=4)
    first = CompletionInput(CODE[:900], CODE[900:1200])
    edited = CompletionInput(CODE[:400] + "    y = 1\n" + CODE[400:900], CODE[900:1200])
    for engine in (exact, small):
        engine.complete(first, params, document=key)
    assert isinstance(small.kv.caches.get(key), PackedKV)
    head_dim = exact.kv.peek(key).keys[0].shape[-1]  # type: ignore[union-attr]
    assert small.kv.bytes < ((head_dim + 4) / (4 * head_dim) + 0.02) * exact.kv.bytes
    a = exact.complete(edited, params, document=key)
    b = small.complete(edited, params, document=key)
    assert b.reused_prompt_tokens == a.reused_prompt_tokens > 0  # the same plan: PIE on the packed cache
    assert b.encoded_prompt_tokens == a.encoded_prompt_tokens
    exact_doc, small_doc = exact.kv.peek(key), small.kv.peek(key)
    assert exact_doc is not None and small_doc is not None and exact_doc.ids == small_doc.ids
    # what was re-encoded is exact; the rows kept from the packed cache carry the rounding
    assert not all(torch.equal(x, y) for x, y in zip(exact_doc.values, small_doc.values, strict=True))
