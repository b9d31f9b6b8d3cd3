"""Fill-in-the-middle prompts: the text before and after the cursor, laid out the way each model
family was trained to see it.

Code models learn infilling with their own sentinel tokens and layouts, so the same
(prefix, suffix) pair must become different token sequences for StarCoder, Qwen2.5-Coder,
DeepSeek-Coder and CodeLlama. This module names those layouts (`FimTemplate`), picks one from a
tokenizer's vocabulary (`detect_template`, `resolve_template`), and assembles the prompt ids
(`build_prompt`). Models without FIM tokens get `prefix-only`: the prompt is the prefix alone.

Sentinels are inserted by id, never by pasting strings, and the user's text is always encoded
as plain text, so code that contains a literal `<fim_prefix>` cannot forge a control token.
The ids `build_prompt` returns are complete: they already hold BOS where the template wants it.

Trimming policy. When a prompt would exceed `max_prompt_tokens`, the budget for text is
`max_prompt_tokens` minus the sentinel and BOS tokens the template adds. The suffix keeps at most
a quarter of that budget, or more when the prefix is short enough to leave the room unused,
and it keeps the tokens at its start, nearest the cursor. The prefix gets the rest of the
budget and keeps the tokens at its end, nearest the cursor. A prefix-only prompt gives the
whole budget to the prefix. Long input is trimmed, never refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from splice.completion.token_edits import TokenizeStats

FIM_MODES = ("psm", "spm")

# Prepended to text that must be encoded as a continuation of earlier text, then removed again:
# the same trick as Meta's codellama `encode_infilling`. The second one is a fallback should the
# text's first characters merge with the first.
_SENTINELS = ("☺", "\n")


@dataclass(frozen=True)
class FimTemplate:
    """One family's infilling layout. PSM is `[BOS] PRE prefix SUF suffix MID`, SPM is
    `[BOS] PRE SUF suffix MID prefix`; the model then writes the middle."""

    name: str
    prefix_token: str | None
    suffix_token: str | None
    middle_token: str | None
    end_tokens: tuple[str, ...]  # candidates; only those present in the vocabulary are used
    modes: tuple[str, ...]
    add_bos: bool
    file_sep: str | None = None  # repository-level separator before each file's path, if trained with one

    def __post_init__(self) -> None:
        sentinels = (self.prefix_token, self.suffix_token, self.middle_token)
        if any(t is None for t in sentinels) and any(t is not None for t in sentinels):
            raise ValueError(f"template {self.name!r}: give all three FIM tokens or none")
        unknown = [m for m in self.modes if m not in FIM_MODES]
        if unknown or not self.modes:
            raise ValueError(
                f"template {self.name!r}: modes must be drawn from {FIM_MODES}, got {self.modes}"
            )

    @property
    def is_fim(self) -> bool:
        return self.prefix_token is not None

    @property
    def fim_tokens(self) -> tuple[str, ...]:
        """The three sentinels (empty for prefix-only)."""
        return tuple(t for t in (self.prefix_token, self.suffix_token, self.middle_token) if t is not None)

    @property
    def added_tokens(self) -> int:
        """How many tokens the layout adds around the user's text."""
        return len(self.fim_tokens) + int(self.add_bos)


TEMPLATES: dict[str, FimTemplate] = {
    t.name: t
    for t in (
        FimTemplate(
            "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
            ("<|endoftext|>", "<fim_pad>", "<file_sep>"), ("psm", "spm"), add_bos=False,
            file_sep="<file_sep>",
        ),
        FimTemplate(
            "qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
            ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>"), ("psm",), add_bos=False,
            file_sep="<|file_sep|>",
        ),
        FimTemplate(
            "deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
            ("<｜end▁of▁sentence｜>", "<|EOT|>"), ("psm",), add_bos=True,
        ),
        FimTemplate(
            "codellama", "▁<PRE>", "▁<SUF>", "▁<MID>",
            ("▁<EOT>", "</s>"), ("psm", "spm"), add_bos=True,
        ),
        # Modes are accepted and ignored: without a suffix both layouts are the prefix alone.
        FimTemplate("prefix-only", None, None, None, ("<|endoftext|>",), FIM_MODES, add_bos=False),
    )
}  # fmt: skip


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of `token` if it is in the vocabulary (a miss may map to unk; that is a miss)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        return None
    if token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return None
    return token_id


def _missing_tokens(tokenizer: PreTrainedTokenizerBase, template: FimTemplate) -> list[str]:
    missing = [t for t in template.fim_tokens if _token_id(tokenizer, t) is None]
    if template.add_bos and tokenizer.bos_token_id is None:
        missing.append("a BOS token")
    return missing


def detect_template(tokenizer: PreTrainedTokenizerBase) -> FimTemplate:
    """The first FIM template whose tokens are all in the vocabulary, else prefix-only."""
    for template in TEMPLATES.values():
        if template.is_fim and not _missing_tokens(tokenizer, template):
            return template
    return TEMPLATES["prefix-only"]


def resolve_template(tokenizer: PreTrainedTokenizerBase, name: str = "auto") -> FimTemplate:
    """`auto` detects; a template name is checked against this tokenizer's vocabulary."""
    if name == "auto":
        return detect_template(tokenizer)
    if name not in TEMPLATES:
        valid = ", ".join(["auto", *TEMPLATES])
        raise ValueError(f"unknown FIM template {name!r}; valid names: {valid}")
    template = TEMPLATES[name]
    missing = _missing_tokens(tokenizer, template)
    if missing:
        raise ValueError(
            f"FIM template {name!r} does not fit this tokenizer: missing {', '.join(missing)}; "
            f"the detected template is {detect_template(tokenizer).name!r}"
        )
    return template


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: FimTemplate) -> frozenset[int]:
    """Ids that end a completion: the template's end tokens that exist, EOS, and the FIM sentinels
    themselves (a model that writes `<fim_prefix>` mid-completion has left the middle)."""
    ids = {_token_id(tokenizer, t) for t in (*template.end_tokens, *template.fim_tokens)}
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i is not None)


@dataclass(frozen=True)
class FimPrompt:
    input_ids: list[int]  # complete, BOS included when the template adds one
    prefix_tokens: int  # prefix tokens kept in the prompt
    suffix_tokens: int  # suffix tokens kept in the prompt (0 for prefix-only)
    trimmed_prefix_tokens: int  # prefix tokens dropped from the left by the budget
    trimmed_suffix_tokens: int  # suffix tokens dropped from the right by the budget
    context_tokens: int = 0  # repository context tokens at the start of the prompt


def _encode_without_added_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Run the fast tokenizer's normalizer, pre-tokenizer and model only: no added tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"cannot encode {text[:40]!r} as plain text with a {type(tokenizer).__name__}")
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [token.id for piece in pieces for token in backend.model.tokenize(piece)]


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode user text as plain text: no BOS/EOS, and no added token matched from its characters.

    `split_special_tokens=True` covers special added tokens only; Qwen2.5-Coder and others mark
    their FIM tokens `special: false`, so a text that still produced one is encoded again without
    the added-token pass.
    """
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    plain_added = {i for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    if plain_added.intersection(ids):
        ids = _encode_without_added_tokens(tokenizer, text)
    return ids


class TextEncoder:
    """How `build_prompt` turns the document's prefix and suffix into ids: here, whole, on every
    call. `splice.completion.kv_manager.DocumentTokens` keeps a document's tokens from one request
    to the next and re-tokenizes only around what changed, with the same ids. `stats` counts the
    characters that went through the tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.stats = TokenizeStats()

    def document(self, text: str) -> None:
        """The whole document (prefix + suffix before healing) the next calls cut from."""

    def prefix(self, text: str) -> list[int]:
        self.stats.add(text)
        return _encode_text(self.tokenizer, text)

    def suffix(self, text: str) -> list[int]:
        self.stats.add(text)
        return _encode_continuation(self.tokenizer, text)


def plain_added_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """Added tokens that are not special: a text containing one is encoded differently (see
    `_encode_text`)."""
    return tuple(t.content for t in tokenizer.added_tokens_decoder.values() if not t.special)


def adds_dummy_prefix(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer encodes a text's start differently from its continuation."""
    return _encode_text(tokenizer, "a") != _strip_sentinel(tokenizer, "a", _SENTINELS[0])


def _encode_continuation(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode `text` as if it continued earlier text: without a sentencepiece dummy-prefix space.

    A tokenizer that adds that space does so at the start of the string only, so encode
    sentinel + text and strip the sentinel's tokens, checking that they come out unchanged.
    """
    if not adds_dummy_prefix(tokenizer):
        return _encode_text(tokenizer, text)  # nothing to undo
    for sentinel in _SENTINELS:
        ids = _strip_sentinel(tokenizer, text, sentinel)
        if ids is not None:
            return ids
    raise ValueError(f"cannot encode {text[:40]!r} without a dummy prefix: it merges with every sentinel")


def _strip_sentinel(tokenizer: PreTrainedTokenizerBase, text: str, sentinel: str) -> list[int] | None:
    sentinel_ids = _encode_text(tokenizer, sentinel)
    ids = _encode_text(tokenizer, sentinel + text)
    if ids[: len(sentinel_ids)] != sentinel_ids:
        return None
    return ids[len(sentinel_ids) :]


def _trim(prefix_ids: list[int], suffix_ids: list[int], budget: int | None) -> tuple[list[int], list[int]]:
    """Apply the trimming policy in the module docstring to the text tokens."""
    if budget is None:
        return prefix_ids, suffix_ids
    if budget < 1:
        raise ValueError(f"max_prompt_tokens leaves {budget} tokens for text after the template's own")
    suffix_keep = min(len(suffix_ids), max(budget // 4, budget - len(prefix_ids)))
    prefix_keep = min(len(prefix_ids), budget - suffix_keep)
    return prefix_ids[len(prefix_ids) - prefix_keep :], suffix_ids[:suffix_keep]


def repository_separator(tokenizer: PreTrainedTokenizerBase, template: FimTemplate) -> str | None:
    """The template's file separator when this tokenizer has it as one token, else None."""
    if template.file_sep is None or _token_id(tokenizer, template.file_sep) is None:
        return None
    return template.file_sep


def _encode_context(tokenizer: PreTrainedTokenizerBase, template: FimTemplate, context: str) -> list[int]:
    """Plain text, except that the template's file separator becomes its one token."""
    sep = repository_separator(tokenizer, template)
    if sep is None or sep not in context:
        return _encode_text(tokenizer, context)
    sep_id = _token_id(tokenizer, sep)
    assert sep_id is not None
    first, *rest = context.split(sep)
    ids = _encode_text(tokenizer, first) if first else []
    for part in rest:
        ids += [sep_id, *(_encode_text(tokenizer, part) if part else [])]
    return ids


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    template: FimTemplate,
    prefix: str,
    suffix: str,
    *,
    mode: str = "psm",
    max_prompt_tokens: int | None = None,
    context: str = "",
    encoder: TextEncoder | None = None,
) -> FimPrompt:
    """The prompt ids for infilling between `prefix` and `suffix`, trimmed to `max_prompt_tokens`.

    `context` (repository snippets, already rendered and fitted to their own budget) comes
    first, before the template's sentinels, so the document part of the prompt keeps its
    layout; it may use at most half of the budget, and is cut at a line boundary if longer.
    `encoder` tokenizes the prefix and suffix (default: whole, each call).
    """
    encoder = encoder or TextEncoder(tokenizer)
    if mode not in template.modes:
        raise ValueError(
            f"FIM mode {mode!r} is not supported by template {template.name!r}; "
            f"supported: {', '.join(template.modes)}"
        )
    budget = None if max_prompt_tokens is None else max_prompt_tokens - template.added_tokens
    context_ids = _encode_context(tokenizer, template, context) if context else []
    if budget is not None and len(context_ids) > budget // 2:
        lines = context.split("\n")
        while lines and len(context_ids) > budget // 2:
            lines = lines[: max(0, len(lines) - max(1, len(lines) // 8))]
            context_ids = _encode_context(tokenizer, template, "\n".join(lines) + "\n") if lines else []
    if budget is not None:
        budget -= len(context_ids)
    full_prefix = encoder.prefix(prefix)

    if not template.is_fim:
        kept_prefix, _ = _trim(full_prefix, [], budget)
        return FimPrompt(
            [*context_ids, *kept_prefix],
            len(kept_prefix),
            0,
            len(full_prefix) - len(kept_prefix),
            0,
            context_tokens=len(context_ids),
        )

    missing = _missing_tokens(tokenizer, template)
    if missing:
        raise ValueError(f"FIM template {template.name!r} does not fit this tokenizer: missing {missing}")
    pre, suf, mid = (_token_id(tokenizer, t) for t in template.fim_tokens)
    assert pre is not None and suf is not None and mid is not None  # checked by _missing_tokens
    bos: list[int] = [tokenizer.bos_token_id] if template.add_bos else []

    # The suffix follows a sentinel directly, so it must not gain a dummy-prefix space (CodeLlama);
    # the prefix keeps it, as in Meta's reference layout. For byte-level tokenizers both are plain.
    full_suffix = encoder.suffix(suffix)
    kept_prefix, kept_suffix = _trim(full_prefix, full_suffix, budget)
    if mode == "psm":
        input_ids = [*bos, *context_ids, pre, *kept_prefix, suf, *kept_suffix, mid]
    else:
        input_ids = [*bos, *context_ids, pre, suf, *kept_suffix, mid, *kept_prefix]
    return FimPrompt(
        input_ids=input_ids,
        prefix_tokens=len(kept_prefix),
        suffix_tokens=len(kept_suffix),
        trimmed_prefix_tokens=len(full_prefix) - len(kept_prefix),
        trimmed_suffix_tokens=len(full_suffix) - len(kept_suffix),
        context_tokens=len(context_ids),
    )
