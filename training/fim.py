"""Fill-in-the-middle training samples: cut a document into prefix, middle and suffix, and lay
the pieces out as token ids exactly the way `splice.completion.fim.build_prompt` lays out a
prompt at serving time, followed by the middle and the template's end token.

The transform follows Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in
the Middle"): with probability `fim_rate` a document becomes a FIM sample, otherwise it stays a
plain left-to-right sample; FIM samples are PSM or SPM (`spm_rate`, 0.5 by default). Spans are
character-level random (two uniform cut points, the paper's choice) or line-aligned (a run of
whole lines, what an editor asks for most); `span="mixed"` draws either with equal odds.

Models without FIM tokens get them added (`add_fim_tokens`): the StarCoder sentinels, so the
serving side detects the `starcoder` template from the vocabulary alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from splice.completion.fim import (
    TEMPLATES,
    FimTemplate,
    _encode_context,
    _encode_continuation,
    _encode_text,
    _missing_tokens,
    _token_id,
    detect_template,
)

SpanKind = Literal["char", "line", "mixed"]
SPAN_KINDS: tuple[str, ...] = ("char", "line", "mixed")
IGNORE = -100  # label of a position that adds no loss


@dataclass(frozen=True)
class FimSample:
    """One training document after the transform. `mode` is None for a plain (non-FIM) sample,
    whose whole text is in `prefix`."""

    prefix: str
    middle: str
    suffix: str
    mode: str | None

    @property
    def text(self) -> str:
        """The original document: prefix + middle + suffix, whatever the mode."""
        return self.prefix + self.middle + self.suffix


def _char_span(text: str, rng: random.Random) -> tuple[int, int]:
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return a, b


def _line_span(text: str, rng: random.Random) -> tuple[int, int]:
    """A run of whole lines: one line half the time, otherwise up to eight."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n" and i + 1 < len(text)]
    first = rng.randrange(len(starts))
    count = 1 if rng.random() < 0.5 else rng.randint(1, 8)
    last = min(len(starts), first + count)
    end = starts[last] if last < len(starts) else len(text)
    return starts[first], end


def split_document(text: str, rng: random.Random, span: SpanKind = "mixed") -> tuple[str, str, str]:
    """Cut `text` into (prefix, middle, suffix); the three always concatenate back to `text`."""
    if span not in SPAN_KINDS:
        raise ValueError(f"span must be one of {SPAN_KINDS}, got {span!r}")
    if span == "mixed":
        span = "char" if rng.random() < 0.5 else "line"
    a, b = _char_span(text, rng) if span == "char" or not text else _line_span(text, rng)
    return text[:a], text[a:b], text[b:]


def fim_transform(
    text: str,
    rng: random.Random,
    *,
    fim_rate: float = 0.9,
    spm_rate: float = 0.5,
    span: SpanKind = "mixed",
) -> FimSample:
    """Apply the FIM transform to one document (see the module docstring)."""
    if not 0.0 <= fim_rate <= 1.0 or not 0.0 <= spm_rate <= 1.0:
        raise ValueError(f"fim_rate and spm_rate are probabilities, got {fim_rate} and {spm_rate}")
    if rng.random() >= fim_rate:
        return FimSample(text, "", "", None)
    prefix, middle, suffix = split_document(text, rng, span)
    mode = "spm" if rng.random() < spm_rate else "psm"
    return FimSample(prefix, middle, suffix, mode)


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken
    middle_start: int  # index of the first middle token in input_ids (len(input_ids) for plain samples)

    def __len__(self) -> int:
        return len(self.input_ids)


def end_token_id(tokenizer: PreTrainedTokenizerBase, template: FimTemplate) -> int:
    """The token a middle ends with: the template's first end token in the vocabulary, else EOS."""
    for token in template.end_tokens:
        token_id = _token_id(tokenizer, token)
        if token_id is not None:
            return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer has none of {template.end_tokens} and no EOS token")
    return int(tokenizer.eos_token_id)


def encode_sample(
    tokenizer: PreTrainedTokenizerBase,
    template: FimTemplate,
    sample: FimSample,
    *,
    loss_on: Literal["all", "middle"] = "all",
    context: str = "",
) -> EncodedSample:
    """Token ids and labels for one sample.

    A FIM sample's ids up to and including the middle sentinel (and, for SPM, the prefix) are
    what `build_prompt` produces for the same prefix and suffix; then come the middle's tokens
    and the end token. `loss_on="middle"` takes loss only on the middle and the end token, the
    part the model writes at serving time; `"all"` on every position after the first.
    Plain samples are `[BOS] text END` with loss on all of it. `context` (rendered repository
    snippets, `splice.training.repo_context`) goes after BOS and before the sentinels, as
    `build_prompt` places it, and never takes loss.
    """
    end = end_token_id(tokenizer, template)
    bos: list[int] = (
        [int(tokenizer.bos_token_id)] if template.add_bos and tokenizer.bos_token_id is not None else []
    )
    if sample.mode is None:
        ids = [*bos, *_encode_text(tokenizer, sample.prefix), end]
        labels = [IGNORE, *ids[1:]]
        return EncodedSample(ids, labels, len(ids))
    if not template.is_fim:
        raise ValueError(f"template {template.name!r} has no FIM tokens; add them first (add_fim_tokens)")
    missing = _missing_tokens(tokenizer, template)
    if missing:
        raise ValueError(f"FIM template {template.name!r} does not fit this tokenizer: missing {missing}")
    pre, suf, mid = (_token_id(tokenizer, t) for t in template.fim_tokens)
    assert pre is not None and suf is not None and mid is not None
    prefix = _encode_text(tokenizer, sample.prefix)
    suffix = _encode_continuation(tokenizer, sample.suffix)
    ctx = _encode_context(tokenizer, template, context) if context else []
    middle = _encode_continuation(tokenizer, sample.middle) if sample.middle else []
    if sample.mode == "psm":
        head = [*bos, *ctx, pre, *prefix, suf, *suffix, mid]
    elif sample.mode == "spm":
        head = [*bos, *ctx, pre, suf, *suffix, mid, *prefix]
    else:
        raise ValueError(f"unknown FIM mode {sample.mode!r}")
    ids = [*head, *middle, end]
    if loss_on == "middle":
        labels = [IGNORE] * len(head) + [*middle, end]
    elif loss_on == "all":
        skip = max(1, len(bos) + len(ctx))  # the first token, and the context, are not predicted
        labels = [IGNORE] * skip + ids[skip:]
    else:
        raise ValueError(f"loss_on must be 'all' or 'middle', got {loss_on!r}")
    return EncodedSample(ids, labels, len(head))


def add_fim_tokens(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None, template_name: str = "starcoder"
) -> tuple[FimTemplate, list[int]]:
    """Make sure the tokenizer (and the model's embeddings) have a FIM template's sentinels.

    A tokenizer that already detects a FIM template keeps it and nothing is added. Otherwise
    `template_name`'s sentinels become new special tokens; the model's embedding matrix grows
    to the new vocabulary, new rows initialised to the mean of the old ones (transformers'
    `mean_resizing`). Returns the template and the ids that were added.
    """
    detected = detect_template(tokenizer)
    if detected.is_fim:
        return detected, []
    template = TEMPLATES[template_name]
    if not template.is_fim:
        raise ValueError(f"template {template_name!r} has no FIM tokens to add")
    before = len(tokenizer)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(template.fim_tokens)}, replace_extra_special_tokens=False
    )
    added = list(range(before, len(tokenizer)))
    if model is not None and int(model.get_input_embeddings().weight.shape[0]) < len(tokenizer):  # type: ignore[index]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if detect_template(tokenizer).name != template.name:
        raise ValueError(f"added {template.fim_tokens} but the tokenizer does not detect {template_name!r}")
    return template, added
