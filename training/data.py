"""From corpus records to packed training rows, deterministically.

Each document is cut at line boundaries into chunks that fit a row (so a FIM sample is never
truncated), each chunk gets the FIM transform with a random generator seeded by (seed, epoch,
document, chunk), and samples are packed greedily into rows of `seq_len` tokens, a row padded
when the next sample does not fit. The stream is a pure function of its settings, so resuming
a run means replaying it to the step where the checkpoint was taken: no data state to save.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from splice.completion.fim import FimTemplate
from splice.training.corpus import read_corpus
from splice.training.fim import IGNORE, EncodedSample, FimSample, SpanKind, encode_sample, fim_transform
from splice.training.repo_context import RepoSample

_ROW_MARGIN = 16  # tokens left free in a chunk: sentinels, and re-tokenisation at the cut points


@dataclass(frozen=True)
class Row:
    input_ids: list[int]
    labels: list[int]
    horizon: list[float]  # remaining-middle fraction at each position predicting a middle token, else -1
    length: int  # tokens before the padding


@dataclass
class StreamStats:
    samples: int = 0
    fim_samples: int = 0
    dropped_long: int = 0
    rows: int = 0
    repo_samples: int = 0
    label_tokens: int = 0
    padding: int = 0


def load_texts(path: Path) -> list[str]:
    return [record["text"] for record in read_corpus(path)]


def line_chunks(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[str]:
    """Cut `text` at line ends into pieces of at most about `max_tokens` tokens each."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return [text]
    chunks: list[str] = []
    start_char, token = 0, 0
    while token + max_tokens < len(offsets):
        limit = offsets[token + max_tokens][0]
        cut = text.rfind("\n", start_char, limit) + 1
        if cut <= start_char:  # one line longer than a row: cut inside it
            cut = limit
        chunks.append(text[start_char:cut])
        start_char = cut
        while token < len(offsets) and offsets[token][0] < cut:
            token += 1
    if start_char < len(text):
        chunks.append(text[start_char:])
    return [c for c in chunks if c.strip()]


def horizon_targets(sample: EncodedSample) -> list[float]:
    """Horizon-length prediction targets (Ding et al. 2024): at position p, whose next token is a
    middle token (or the end token), the fraction of the middle still to be written, in (0, 1]."""
    n = len(sample.input_ids)
    targets = [-1.0] * n
    middle = n - sample.middle_start  # middle tokens + the end token
    if middle <= 0:
        return targets
    for p in range(sample.middle_start - 1, n - 1):
        targets[p] = (n - 1 - p) / middle
    return targets


class FimStream:
    """Endless epochs of FIM samples over a list of documents, packed into rows."""

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        template: FimTemplate,
        *,
        seq_len: int,
        fim_rate: float,
        spm_rate: float,
        span: SpanKind,
        loss_on: str,
        seed: int,
        shuffle: bool = True,
        repo_samples: Sequence[RepoSample] = (),
        repo_rate: float = 0.0,
    ) -> None:
        if not texts:
            raise ValueError("no documents to train on (is the corpus empty?)")
        self.texts = texts
        self.tokenizer = tokenizer
        self.template = template
        self.seq_len = seq_len
        self.fim_rate = fim_rate
        self.spm_rate = spm_rate
        self.span = span
        self.loss_on = loss_on
        self.seed = seed
        self.shuffle = shuffle
        self.repo_samples = repo_samples
        self.repo_rate = repo_rate if repo_samples else 0.0
        if not 0.0 <= self.repo_rate < 1.0:
            raise ValueError(f"repo_rate must be in [0, 1), got {repo_rate}")
        self.stats = StreamStats()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def samples(self, epochs: int | None = None) -> Iterator[EncodedSample]:
        epoch = 0
        while epochs is None or epoch < epochs:
            order = list(range(len(self.texts)))
            if self.shuffle:
                random.Random(f"{self.seed}:order:{epoch}").shuffle(order)
            for doc in order:
                for index, chunk in enumerate(
                    line_chunks(self.texts[doc], self.tokenizer, self.seq_len - _ROW_MARGIN)
                ):
                    rng = random.Random(f"{self.seed}:{epoch}:{doc}:{index}")
                    yield from self._repo_samples(rng)
                    sample = fim_transform(
                        chunk, rng, fim_rate=self.fim_rate, spm_rate=self.spm_rate, span=self.span
                    )
                    encoded = encode_sample(self.tokenizer, self.template, sample, loss_on=self.loss_on)  # type: ignore[arg-type]
                    if len(encoded) > self.seq_len:
                        self.stats.dropped_long += 1
                        continue
                    self.stats.samples += 1
                    self.stats.fim_samples += sample.mode is not None
                    yield encoded
            epoch += 1

    def _repo_samples(self, rng: random.Random) -> Iterator[EncodedSample]:
        """Before each document chunk, repository-context samples while a draw is below
        `repo_rate`: a fraction `repo_rate` of all samples, on average."""
        while self.repo_rate and rng.random() < self.repo_rate:
            repo = self.repo_samples[rng.randrange(len(self.repo_samples))]
            mode = "spm" if rng.random() < self.spm_rate else "psm"
            prefix = repo.prefix
            cut = len(prefix) - self.seq_len * 8  # far more characters than a row holds tokens
            if cut > 0:
                prefix = prefix[prefix.find("\n", cut) + 1 :]
            while True:  # a long prefix loses its first lines, as the prompt's trimming would
                sample = FimSample(prefix, repo.middle, repo.suffix, mode)
                encoded = encode_sample(
                    self.tokenizer,
                    self.template,
                    sample,
                    loss_on=self.loss_on,  # type: ignore[arg-type]
                    context=repo.context,
                )
                lines = prefix.split("\n")
                if len(encoded) <= self.seq_len or len(lines) <= 1:
                    break
                prefix = "\n".join(lines[max(1, len(lines) // 8) :])
            if len(encoded) > self.seq_len:
                self.stats.dropped_long += 1
                continue
            self.stats.samples += 1
            self.stats.fim_samples += 1
            self.stats.repo_samples += 1
            yield encoded

    def rows(self, epochs: int | None = None) -> Iterator[Row]:
        ids: list[int] = []
        labels: list[int] = []
        horizon: list[float] = []
        for sample in self.samples(epochs):
            if len(ids) + len(sample) > self.seq_len:
                yield self._emit(ids, labels, horizon)
                ids, labels, horizon = [], [], []
            ids += sample.input_ids
            labels += sample.labels
            horizon += horizon_targets(sample)
        if ids:
            yield self._emit(ids, labels, horizon)

    def _emit(self, ids: list[int], labels: list[int], horizon: list[float]) -> Row:
        pad = self.seq_len - len(ids)
        self.stats.rows += 1
        self.stats.padding += pad
        self.stats.label_tokens += sum(label != IGNORE for label in labels)
        return Row(ids + [self.pad_id] * pad, labels + [IGNORE] * pad, horizon + [-1.0] * pad, len(ids))


def collate(rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([r.input_ids for r in rows], dtype=torch.long),  # [B, S]
        "labels": torch.tensor([r.labels for r in rows], dtype=torch.long),  # [B, S]
        "horizon": torch.tensor([r.horizon for r in rows], dtype=torch.float32),  # [B, S]
        "lengths": torch.tensor([r.length for r in rows], dtype=torch.long),  # [B]
    }


def batches(rows: Iterator[Row], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    buffer: list[Row] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) == batch_size:
            yield collate(buffer)
            buffer = []
    if buffer:
        yield collate(buffer)
