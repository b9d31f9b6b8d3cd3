"""Baseline: full-recompute completion latency of the default model at growing prompt sizes.

Every later speed-up (document KV caches + PIE, early exit, kernels) is measured against this
table. For each prompt size it measures, through the engine's own phases:

- TTFT: tokenise + prefill the whole prompt + pick the first token (what a user waits for),
- prefill throughput (prompt tokens / s),
- decode throughput over a fixed number of new tokens (EOS ignored, so every row decodes the same),
- end-to-end `CompletionEngine.complete` time with post-processing (may stop early at scope end).

Prompts are real Python source (the standard library), cut to exactly N tokens.

    python -m splice.bench.baseline [--sizes 512 1024 2048 4096] [--new-tokens 64] [--repeats 3]
                                     [--model default] [--device auto] [--json bench/results/baseline.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from splice.completion.engine import CompletionEngine, CompletionInput, EngineConfig, GenerationParams
from splice.completion.models import load_model, parse_spec


def corpus_text(min_chars: int) -> str:
    """Concatenated stdlib sources, deterministic order, at least `min_chars` long."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for name in (
        "argparse.py",
        "dataclasses.py",
        "textwrap.py",
        "json/decoder.py",
        "json/encoder.py",
        "functools.py",
        "inspect.py",
        "typing.py",
    ):
        text = (stdlib / name).read_text(encoding="utf-8")
        parts.append(text)
        total += len(text)
        if total >= min_chars:
            break
    return "\n".join(parts)


def prompt_of(engine: CompletionEngine, text: str, n_tokens: int) -> str:
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < n_tokens:
        raise SystemExit(f"corpus has only {len(ids)} tokens, need {n_tokens}")
    return str(engine.tokenizer.decode(ids[:n_tokens]))


def measure(engine: CompletionEngine, prefix: str, new_tokens: int) -> dict[str, float]:
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    prompt = engine.prepare(CompletionInput(prefix), new_tokens)
    cache, logits = engine.prefill(prompt.input_ids)
    token = int(torch.argmax(logits).item())
    sync()
    ttft = time.perf_counter() - start
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits = engine.decode_one_token(cache, token)
        token = int(torch.argmax(logits).item())
    sync()
    decode = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = engine.complete(CompletionInput(prefix), GenerationParams(max_tokens=new_tokens))
    e2e = time.perf_counter() - t1
    return {
        "prompt_tokens": len(prompt.input_ids),
        "ttft_ms": ttft * 1000,
        "prefill_tok_s": len(prompt.input_ids) / ttft,
        "decode_tok_s": (new_tokens - 1) / decode,
        "complete_ms": e2e * 1000,
        "complete_tokens": result.completion_tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, default=Path("bench/results/baseline.json"))
    args = parser.parse_args(argv)

    loaded = load_model(
        parse_spec(args.model),
        device=args.device,
        dtype=args.dtype,
        progress=lambda m: print(m, file=sys.stderr),
    )
    # no prompt cap: every row must really encode its full size
    engine = CompletionEngine(loaded, EngineConfig(max_prompt_tokens=max(args.sizes) + 16))
    text = corpus_text(40 * max(args.sizes))
    measure(engine, prompt_of(engine, text, 64), 8)  # warm-up

    rows = []
    for size in args.sizes:
        prefix = prompt_of(engine, text, size)
        runs = [measure(engine, prefix, args.new_tokens) for _ in range(args.repeats)]
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        row["size"] = size
        rows.append(row)
        print(f"  {size} tokens done", file=sys.stderr)

    header = f"{'prompt':>7} {'TTFT ms':>9} {'prefill tok/s':>14} {'decode tok/s':>13} "
    header += f"{'complete ms':>12} {'gen':>4}"
    print(
        f"\nfull recompute, {loaded.model_id}, {loaded.device} {str(loaded.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}, {args.new_tokens} new tokens"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{int(r['prompt_tokens']):>7} {r['ttft_ms']:>9.1f} {r['prefill_tok_s']:>14.0f} "
            f"{r['decode_tok_s']:>13.1f} {r['complete_ms']:>12.1f} {int(r['complete_tokens']):>4}"
        )
    result = {
        "model": loaded.model_id,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
