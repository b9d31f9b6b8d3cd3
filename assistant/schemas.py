"""Request and response bodies of the v1 REST API.

`POST /v1/completions` takes either a Tabby-style body (`segments{prefix, suffix, filepath}`)
or an OpenAI-style body (`prompt` + `suffix`); both become one `CompletionInput`. Types are
strict: `"max_tokens": "10"` is a 422, not a silent conversion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 4


def _encodable(v: str | None) -> str | None:
    """JSON allows lone surrogates (\\ud800); they are not text and no tokenizer takes them."""
    if v is not None:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"contains an invalid code point (lone surrogate) at index {exc.start}") from exc
    return v


class Segments(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    prefix: str = Field("", description="Document text before the cursor")
    suffix: str | None = Field(None, description="Document text after the cursor")
    filepath: str | None = Field(None, description="Path of the document, relative to its repository")

    _text = field_validator("prefix", "suffix")(_encodable)


class DebugOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    return_snippets: bool = Field(
        False, description="Return the repository snippets and the recent edits used in `debug_data`"
    )
    disable_retrieval_augmented_code_completion: bool = Field(
        False, description="Complete without repository context"
    )
    compare_full: bool = Field(
        False,
        description="Also encode the prompt in full and complete from that: `debug_data.full_recompute` says "
        "whether the document cache changed the answer (costs a full prompt encode and a second decode)",
    )


def exactly_one(a: str, a_type: str, b: str, b_type: str) -> dict[str, Any]:
    """JSON Schema for "`a` or `b`, not both" where null means absent (the validators' rule)."""
    return {
        "anyOf": [
            {"required": [a], "properties": {a: {"type": a_type}, b: {"type": "null"}}},
            {"required": [b], "properties": {b: {"type": b_type}, a: {"type": "null"}}},
        ]
    }


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="ignore", json_schema_extra=exactly_one("segments", "object", "prompt", "string")
    )

    model: str | None = Field(None, description="Must name the served model when given")
    # Tabby style
    language: str | None = Field(None, max_length=64)
    segments: Segments | None = None
    # OpenAI style
    prompt: str | None = None
    suffix: str | None = None
    document: str | None = Field(
        None, max_length=1024, description="Splice: names the document so its KV cache is reused across calls"
    )
    repository: str | None = Field(
        None, max_length=256, description="Splice: id of a registered repository to take context from"
    )
    debug_options: DebugOptions | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(1, description="Only 1 is supported", json_schema_extra={"enum": [1]})
    echo: bool = Field(False, description="Not supported", json_schema_extra={"enum": [False]})
    # shared
    max_tokens: int | None = Field(
        None, description="Tokens to generate, 1..max_tokens_limit", json_schema_extra={"minimum": 1}
    )
    temperature: float | None = Field(
        None, description="0 (default) is greedy; up to 2", json_schema_extra={"minimum": 0, "maximum": 2}
    )
    top_p: float | None = Field(
        None,
        description="Nucleus sampling mass, (0, 1]",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 1},
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    early_exit: Literal["off", "on"] | None = Field(
        None, description="Splice: early exit for this request (default: the server's SPLICE_EARLY_EXIT)"
    )
    exit_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Splice: early exit's Exit threshold, (0, 1] (1 = never exit)"
    )
    stop_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Splice: early exit's Stop threshold, (0, 1] (1 = never stop)"
    )

    _text = field_validator("prompt", "suffix")(_encodable)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 2.0:
            raise ValueError("must be between 0 and 2")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError("must be in (0, 1]")
        return v

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop sequences must be 1..64 characters")
        return stops

    @model_validator(mode="after")
    def _one_style(self) -> CompletionRequest:
        if self.segments is None and self.prompt is None:
            raise ValueError("give either `segments` (Tabby style) or `prompt` (OpenAI style)")
        if self.segments is not None and self.prompt is not None:
            raise ValueError("give either `segments` or `prompt`, not both")
        if self.n != 1:
            raise ValueError("only n=1 is supported")
        if self.echo:
            raise ValueError("echo is not supported")
        return self

    def prefix_suffix(self) -> tuple[str, str]:
        if self.segments is not None:
            return self.segments.prefix, self.segments.suffix or ""
        return self.prompt or "", self.suffix or ""


class PositionBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    line: int = Field(ge=0, description="0-based line")
    character: int = Field(ge=0, description="UTF-16 code units from the start of the line (LSP)")


class NextEditRequest(BaseModel):
    """`POST /v1/next-edit`: rewrite the lines around `position` given the tenant's recent edits."""

    model_config = ConfigDict(
        strict=True, extra="ignore", json_schema_extra=exactly_one("document", "string", "text", "string")
    )

    document: str | None = Field(
        None, max_length=4096, description="URI of a document this tenant's editor keeps in sync"
    )
    text: str | None = Field(None, description="The document's text, when it is not synced")
    filepath: str | None = Field(None, max_length=1024, description="Path of `text` in its repository")
    language: str | None = Field(None, max_length=64)
    position: PositionBody
    lines_before: int = Field(5, ge=0, le=20, description="Window lines above the cursor's line")
    lines_after: int = Field(5, ge=0, le=20, description="Window lines below it")
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens the rewrite may take (default: 1.5× the window's, + 16)"
    )

    _text = field_validator("text")(_encodable)

    @model_validator(mode="after")
    def _one_source(self) -> NextEditRequest:
        if (self.document is None) == (self.text is None):
            raise ValueError("give either `document` (a synced document's URI) or `text`, not both")
        return self


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    trimmed_prompt_tokens: int = Field(0, description="Prompt tokens dropped to fit the context")
    encoded_prompt_tokens: int = Field(0, description="Prompt tokens run through the model for this request")
    reused_prompt_tokens: int = Field(0, description="Prompt tokens whose KV came from the document cache")
    refreshed_prompt_tokens: int = Field(
        0, description="Of the encoded, kept tokens re-encoded against drift (drift policy)"
    )
    tokenized_chars: int = Field(
        0,
        description="Characters of the document that went through the tokenizer for this request: "
        "all of them for a new document, a window around each change after an edit",
    )
    decode_passes: int = Field(
        0, description="Forward passes after the prompt's (fewer than the tokens when drafts were accepted)"
    )
    accepted_draft_tokens: int = Field(0, description="Generated tokens that came from verified drafts")
    decode_layers: int = Field(
        0, description="Decoder layers run in full over the decode passes (early exit: fewer)"
    )
    exited_tokens: int = Field(0, description="Generated tokens emitted from an early-exit layer")


class TimingInfo(BaseModel):
    queue_ms: float
    prompt_ms: float
    first_token_ms: float
    total_ms: float
    tokens_per_second: float


class SnippetOut(BaseModel):
    path: str
    start_line: int = Field(description="0-based first line of the snippet in its file")
    end_line: int = Field(description="0-based last line (inclusive)")
    source: str = Field(description="definition, recent_edit or similar")
    name: str
    names: list[str] = Field(default_factory=list, description="definitions shown (one file's, best first)")
    score: float
    text: str


class FullRecompute(BaseModel):
    text: str = Field(..., description="The completion a full recompute of the same prompt gives")
    same_text: bool = Field(..., description="It equals the returned completion")
    next_token_kl: float = Field(..., description="KL(full || cached) of the first next-token distribution")
    next_token_top1_agree: bool = Field(..., description="Both first next-token distributions agree on top-1")


class DebugData(BaseModel):
    snippets: list[SnippetOut] = Field(default_factory=list)
    recent_edits: str = Field(
        "", description="With return_snippets: the tenant's recent edits as the prompt's slot shows them"
    )
    context_tokens: int = 0
    full_recompute: FullRecompute | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    adapter: str | None = Field(
        None, description="Splice: the tenant's fine-tuned adapter that served it, if any"
    )
    choices: list[Choice]
    usage: Usage
    timings: TimingInfo
    debug_data: DebugData | None = None


class RepositoryRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="Absolute path on the server",
        json_schema_extra={"pattern": "^/"},
    )
    languages: list[str] | None = Field(None, description="Index only these languages (default: all)")


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="ignore", json_schema_extra=exactly_one("query", "string", "prefix", "string")
    )

    repository: str = Field(..., min_length=1, max_length=256)
    query: str | None = Field(None, max_length=10_000, description="Free text: BM25 over identifier tokens")
    filepath: str | None = Field(None, max_length=4096, description="With prefix: rank context for a cursor")
    prefix: str | None = Field(None, max_length=1_000_000)
    suffix: str | None = Field(None, max_length=1_000_000)
    language: str | None = Field(None, max_length=64)
    limit: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRequest:
        if (self.query is None) == (self.prefix is None):
            raise ValueError("give either `query` (text search) or `prefix` (+ filepath: a cursor's context)")
        return self


class EventRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["view", "select", "dismiss"]
    completion_id: str = Field(..., min_length=1, max_length=128)
    choice_index: int = Field(0, ge=0)
    elapsed_ms: int | None = Field(
        None, ge=0, description="Time the suggestion was shown before select/dismiss"
    )


class EventResponse(BaseModel):
    status: Literal["recorded"] = "recorded"


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    device: str
    dtype: str
    version: str
    fim_template: str
    adapter: str | None = None  # name of the LoRA adapter merged into the model, if any
    context_window: int


class FineTuneRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    repository: str = Field(..., min_length=1, max_length=256, description="Id of one of your repositories")
    method: Literal["lora", "sara"] = Field("lora", description="LoRA, or SaRA (sparse low-rank adaptation)")
    max_steps: int = Field(
        200, ge=1, description="Training steps (up to the server's finetune_max_steps_limit)"
    )
    time_limit_s: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="Training budget: at the limit, the gate runs",
    )
    lintseq: bool = Field(True, description="Mix in LintSeq synthetic edit sequences")
    history: bool = Field(True, description="Mix in edits from the repository's git history")
