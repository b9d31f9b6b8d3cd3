"""The GPU path, measured on a 1B-class model shape with random weights (timing needs no training).

    splice bench gpu [--shape deepseek-coder-1.3b] [--contexts 2048 8192 16384] [--batches 1 8 32]
                     [--editors 32] [--device auto] [--dtype auto] [--repeats 5] [--json OUT]

One run prints one table per part and writes them all to JSON:

1. **Time to first token after an edit, full vs PIE**: a document of N tokens, 8 tokens inserted
   at 3/4 of it (everything after moves): `full` re-encodes all N; `pie` re-rotates the moved
   keys, encodes the new tokens and the last one (the step the service runs, planning included);
   `pie+refresh` also re-encodes the first 8 tokens after the edit (the default drift policy).
2. **PIE re-rotation kernel**: every layer's keys of the tail re-rotated in one launch; achieved
   bandwidth (bytes read + written / time) against the device's peak and against a plain device
   copy, with the torch reference beside it and its max error.
3. **Decode attention over a document cache** (one query token per sequence, the shape's heads):
   PyTorch SDPA, plain split-KV (flash-decoding) and FlashDecoding++'s unified max, per context
   and batch, with each kernel's max error against SDPA.
4. **Decode ms/token at batch 1/8/32**: the model's decode step over B caches of one context
   (eager, transformers DynamicCache), tokens/s.
5. **Completion latency with E concurrent editors**: E editors each send one completion (PIE
   update of their own document + 16 decode steps) at random times within one second
   (`--arrival-window`); served one
   at a time (batch 1) and with continuous batching (the largest `--batches`: requests admitted
   into slots of a static KV pool and decoded together, as the step scheduler does), p50/p99 of
   arrival → last token.

Shapes: `deepseek-coder-1.3b` (Llama, 24 layers, 16 heads), `qwen2.5-coder-1.5b` (Qwen2, 28
layers, 12 query / 2 KV heads), `openelm-270m` (per-layer heads, layer-wise scaling),
`smollm2-135m` (the default model's shape, for CPU runs) and `tiny` (a smoke run: CI runs it with
the kernels in Triton's interpreter).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from splice.completion.batch_kv import KVPool, kv_shape
from splice.completion.openelm import OpenELMConfig, OpenELMForCausalLM, layer_wise_scaling
from splice.completion.pie import DocumentKV, apply_plan, encode_full
from splice.completion.pie_plan import plan_reuse
from splice.completion.runner import ModelRunner
from splice.completion.token_edits import diff_tokens
from splice.kernels import triton_util
from splice.kernels.decode_attention import decode_attention, decode_attention_reference
from splice.kernels.pie_rotate import rerotate_keys_, rerotate_keys_reference_
from splice.kernels.rope import rope_spec_from_config

# Peak memory bandwidth (GB/s) by device name, from the vendors' data sheets.
PEAK_GBPS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}


def shape_model(shape: str, max_context: int) -> PreTrainedModel:
    """A random-weight model of `shape`'s configuration (fp32 on the current default device)."""
    positions = max(max_context + 64, 2048)
    if shape == "deepseek-coder-1.3b":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=32256,
                hidden_size=2048,
                intermediate_size=5504,
                num_hidden_layers=24,
                num_attention_heads=16,
                num_key_value_heads=16,
                max_position_embeddings=positions,
                rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
            )
        )
    if shape == "qwen2.5-coder-1.5b":
        return Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=151936,
                hidden_size=1536,
                intermediate_size=8960,
                num_hidden_layers=28,
                num_attention_heads=12,
                num_key_value_heads=2,
                max_position_embeddings=positions,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True,
            )
        )
    if shape == "openelm-270m":
        return OpenELMForCausalLM(
            OpenELMConfig(
                vocab_size=32000,
                hidden_size=1280,
                head_dim=64,
                num_hidden_layers=16,
                max_position_embeddings=positions,
                tie_word_embeddings=True,
                **layer_wise_scaling(1280, 16, 64),  # type: ignore[arg-type]
            )
        )
    if shape == "smollm2-135m":  # the default model's shape, for CPU runs
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=49152,
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                max_position_embeddings=positions,
                rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                tie_word_embeddings=True,
            )
        )
    if shape == "tiny":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=256,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=positions,
            )
        )
    raise SystemExit(f"unknown --shape {shape!r}; choose from {', '.join(SHAPES)}")


SHAPES = ("deepseek-coder-1.3b", "qwen2.5-coder-1.5b", "openelm-270m", "smollm2-135m", "tiny")


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` runs after one warm-up (synchronised on CUDA)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def edit_of(ids: list[int], rng: random.Random, vocab: int) -> list[int]:
    """8 new tokens inserted at 3/4 of the document."""
    at = 3 * len(ids) // 4
    return ids[:at] + [rng.randrange(vocab) for _ in range(8)] + ids[at:]


def ttft_rows(
    model: PreTrainedModel, contexts: list[int], device: torch.device, repeats: int
) -> list[dict[str, Any]]:
    spec = rope_spec_from_config(model.config)
    vocab = model.config.vocab_size
    rows = []
    for n in contexts:
        rng = random.Random(n)
        old = [rng.randrange(vocab) for _ in range(n)]
        new = edit_of(old, rng, vocab)
        doc = encode_full(model, old)
        row: dict[str, Any] = {"context": n}
        row["full_ms"] = 1000 * timed(lambda new=new: encode_full(model, new), device, repeats)  # type: ignore[misc]
        for method in ("pie", "pie+refresh"):

            def update(method: str = method, new: list[int] = new, doc: DocumentKV = doc) -> int:
                plan = plan_reuse(doc.ids, new, diff_tokens(doc.ids, new), method, refresh_first_k=8)  # type: ignore[arg-type]
                out, _ = apply_plan(model, doc, new, plan, spec)
                assert out.logits is not None
                return int(out.logits.argmax())

            row[f"{method}_ms"] = 1000 * timed(update, device, repeats)
            row[f"{method}_speedup"] = row["full_ms"] / row[f"{method}_ms"]
        rows.append(row)
        del doc
    return rows


def device_peak(device: torch.device) -> tuple[float | None, float]:
    """(data-sheet peak GB/s or None, measured device-to-device copy GB/s)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_GBPS.items() if k in name), None)
    src = torch.empty(256 * 2**20 if device.type == "cuda" else 16 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, 5)
    return peak, 2 * src.numel() / seconds / 1e9


def rotation_rows(
    model: PreTrainedModel, contexts: list[int], device: torch.device, dtype: torch.dtype, repeats: int
) -> list[dict[str, Any]]:
    spec = rope_spec_from_config(model.config)
    config = model.config
    heads, _ = kv_shape(config)
    peak, copy_gbps = device_peak(device)
    use_kernel = device.type == "cuda" or triton_util.interpreting()
    rows = []
    for n in contexts:
        gen = torch.Generator(device="cpu").manual_seed(n)
        orig = [torch.randn(h, n, spec.head_dim, generator=gen).to(device, dtype) for h in heads]
        keys = [o.clone() for o in orig]
        moved = torch.arange(3 * n // 4, n, device=device)  # the tail after an edit at 3/4
        offset = torch.full((moved.numel(),), 8, device=device)
        elements = sum(heads) * moved.numel() * spec.rotary_dim
        moved_bytes = 2 * elements * keys[0].element_size() + 2 * moved.numel() * spec.rotary_dim // 2 * 4
        row: dict[str, Any] = {"context": n, "moved_tokens": moved.numel(), "bytes": moved_bytes}
        reference = [k.clone() for k in keys]
        torch_path = partial(rerotate_keys_reference_, reference, orig, moved, offset, spec)
        row["torch_ms"] = 1000 * timed(torch_path, device, repeats)
        if use_kernel:
            kernel = partial(rerotate_keys_, keys, orig, moved, offset, spec, backend="triton")
            row["kernel_ms"] = 1000 * timed(kernel, device, repeats)
            row["kernel_gbps"] = moved_bytes / (row["kernel_ms"] / 1000) / 1e9
            row["max_error"] = max(
                float((a.float() - b.float()).abs().max()) for a, b in zip(keys, reference, strict=True)
            )
            row["floor_ms"] = moved_bytes / (peak or copy_gbps) / 1e9 * 1000
            row["x_floor"] = row["kernel_ms"] / row["floor_ms"]
        row["peak_gbps"], row["copy_gbps"] = peak, copy_gbps
        rows.append(row)
    return rows


def attention_rows(
    model: PreTrainedModel,
    contexts: list[int],
    batches: list[int],
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
) -> list[dict[str, Any]]:
    config = model.config
    q_heads = int(config.num_attention_heads)
    kv_heads = int(config.num_key_value_heads)
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // q_heads)
    use_kernel = device.type == "cuda" or triton_util.interpreting()
    rows = []
    for n in contexts:
        for batch in batches:
            gen = torch.Generator(device="cpu").manual_seed(n + batch)
            q = torch.randn(batch, q_heads, dim, generator=gen).to(device, dtype)
            k = torch.randn(batch, kv_heads, n, dim, generator=gen).to(device, dtype)
            v = torch.randn(batch, kv_heads, n, dim, generator=gen).to(device, dtype)

            def sdpa(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
                return torch.nn.functional.scaled_dot_product_attention(
                    q.unsqueeze(2), k, v, enable_gqa=q_heads != kv_heads
                ).squeeze(2)

            row: dict[str, Any] = {
                "context": n,
                "batch": batch,
                "sdpa_ms": 1000 * timed(sdpa, device, repeats),
            }
            want = decode_attention_reference(q, k, v).float()
            if use_kernel:
                for method in ("split", "unified"):
                    row[f"{method}_ms"] = 1000 * timed(
                        partial(decode_attention, q, k, v, method=method, backend="triton"),
                        device,
                        repeats,
                    )
                    got = decode_attention(q, k, v, method=method, backend="triton").float()
                    row[f"{method}_max_error"] = float((got - want).abs().max())
                row["unified_vs_split"] = row["split_ms"] / row["unified_ms"]
                row["unified_vs_sdpa"] = row["sdpa_ms"] / row["unified_ms"]
            rows.append(row)
    return rows


def _decoder(model: PreTrainedModel, prompt: torch.Tensor) -> Callable[[], None]:
    """Prefill `prompt` [B, C]; returns one greedy decode step of all B sequences."""
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    state = {"next": out.logits[:, -1].argmax(-1, keepdim=True)}

    @torch.inference_mode()
    def step() -> None:
        logits = model(input_ids=state["next"], cache=cache, use_cache=True).logits
        state["next"] = logits[:, -1].argmax(-1, keepdim=True)

    return step


def decode_rows(
    model: PreTrainedModel, context: int, batches: list[int], device: torch.device, repeats: int
) -> list[dict[str, Any]]:
    vocab = model.config.vocab_size
    rows = []
    for batch in batches:
        gen = torch.Generator(device="cpu").manual_seed(batch)
        prompt = torch.randint(vocab, (batch, context), generator=gen).to(device)
        seconds = timed(_decoder(model, prompt), device, max(4, repeats * 4))
        rows.append(
            {
                "batch": batch,
                "context": context,
                "ms_per_step": 1000 * seconds,
                "tokens_per_s": batch / seconds,
            }
        )
    return rows


def editor_rows(
    model: PreTrainedModel,
    context: int,
    editors: int,
    device: torch.device,
    batch: int,
    window_s: float = 1.0,
    new_tokens: int = 16,
) -> dict[str, Any]:
    """E editors, one completion each, arriving at random times within `window_s` seconds. Each
    completion is a PIE update of its document, then `new_tokens` greedy tokens. Up to `batch`
    requests run at once: admitted into slots of a static KV pool, they decode together in one
    pass per step (`ModelRunner.run_batch`, what the step scheduler does); batch 1 runs them one
    at a time. Latency: from arrival to the last token, on the real clock."""
    spec = rope_spec_from_config(model.config)
    config = model.config
    vocab = config.vocab_size
    runner = ModelRunner(model)
    rng = random.Random(7)
    docs = []
    for _ in range(editors):
        ids = [rng.randrange(vocab) for _ in range(context)]
        docs.append((encode_full(model, ids), edit_of(ids, rng, vocab)))
    heads, head_dim = kv_shape(config)
    pool = KVPool(heads, head_dim, batch, context + 8 + new_tokens + 1, dtype=model.dtype, device=device)

    def admit(index: int) -> int:
        doc, new = docs[index]
        plan = plan_reuse(doc.ids, new, diff_tokens(doc.ids, new), "pie+refresh", refresh_first_k=8)
        out, _ = apply_plan(model, doc, new, plan, spec)
        assert out.logits is not None
        pool.admit(index, out.to_cache(config))
        return int(out.logits.argmax())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    offsets = sorted(window_s * rng.random() for _ in range(editors))
    start = time.perf_counter()
    waiting = list(range(editors))
    running: dict[int, tuple[int, int]] = {}  # request -> (next token, tokens made)
    latencies: list[float] = []
    passes = 0
    while waiting or running:
        now = time.perf_counter() - start
        while waiting and offsets[waiting[0]] <= now and len(running) < batch:
            index = waiting.pop(0)
            running[index] = (admit(index), 1)
        if not running:
            time.sleep(max(0.0, offsets[waiting[0]] - now))
            continue
        owners = list(running)
        logits = runner.run_batch(pool, [pool.slot_of(o) for o in owners], [[running[o][0]] for o in owners])
        passes += 1
        for owner, rows in zip(owners, logits, strict=True):
            pool.advance(pool.slot_of(owner), 1)
            token, made = int(rows[-1].argmax()), running[owner][1] + 1
            if made < new_tokens:
                running[owner] = (token, made)
                continue
            sync()
            latencies.append(time.perf_counter() - start - offsets[owner])
            del running[owner]
            pool.release(owner)
    latencies.sort()
    return {
        "editors": editors,
        "batch": batch,
        "context": context,
        "new_tokens": new_tokens,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "passes": passes,
        "wall_s": time.perf_counter() - start,
    }


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"{title}: (none)"
    keys = list(rows[0])
    lines = [title, "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="deepseek-coder-1.3b", choices=SHAPES)
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--decode-context", type=int, default=2048, help="cache length per sequence in part 4"
    )
    parser.add_argument("--editors", type=int, default=32)
    parser.add_argument("--editor-context", type=int, default=2048, help="part 5: each editor's document")
    parser.add_argument(
        "--arrival-window", type=float, default=1.0, help="part 5: editors arrive within this many seconds"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("contexts", "batches"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name} must be positive")

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    if device.type != "cuda":
        print(
            "no GPU: kernels run in Triton's interpreter only if TRITON_INTERPRET=1; timings are not "
            "GPU numbers",
            file=sys.stderr,
        )
    torch.manual_seed(0)
    with torch.device(device):
        model = shape_model(args.shape, max([*args.contexts, args.decode_context, args.editor_context]))
    model.to(dtype=dtype).eval()  # type: ignore[call-arg]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.shape} on {name} ({dtype}), {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params",
        file=sys.stderr,
    )

    result: dict[str, Any] = {"shape": args.shape, "device": name, "dtype": str(dtype)}
    parts: list[tuple[str, str, Callable[[], Any]]] = [
        (
            "ttft",
            "1. time to first token after an edit (ms)",
            lambda: ttft_rows(model, args.contexts, device, args.repeats),
        ),
        (
            "rotation",
            "2. PIE re-rotation of all layers' moved keys",
            lambda: rotation_rows(model, args.contexts, device, dtype, args.repeats),
        ),
        (
            "attention",
            "3. decode attention over a document cache (ms)",
            lambda: attention_rows(model, args.contexts, args.batches, device, dtype, args.repeats),
        ),
        (
            "decode",
            "4. decode step at batch B",
            lambda: decode_rows(model, args.decode_context, args.batches, device, args.repeats),
        ),
        (
            "editors",
            "5. completion latency, concurrent editors",
            lambda: [
                editor_rows(model, args.editor_context, args.editors, device, b, args.arrival_window)
                for b in sorted({1, max(args.batches)})
            ],
        ),
    ]
    for key, title, run in parts:
        print(f"running {title} ...", file=sys.stderr)
        try:
            result[key] = run()
        except torch.OutOfMemoryError as exc:  # report the part, keep the others
            result[key] = {"error": f"out of memory: {exc}"}
            torch.cuda.empty_cache()
        rows = result[key] if isinstance(result[key], list) else []
        print(_table(title, rows) if rows else f"{title}: {result[key]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
