"""Malformed and hostile requests, each with the 4xx and error code it must get.

Shared by the integration test (which asserts them) and `bench/hostile_requests.py` (which
prints them as a table against any running server).
"""

from __future__ import annotations

from typing import NamedTuple


class HostileCase(NamedTuple):
    name: str
    path: str
    body: bytes | None  # None: a GET
    status: int
    code: str
    words: str  # must appear in the error message (case-insensitive)


def hostile_cases(max_body_bytes: int) -> list[HostileCase]:
    C = HostileCase
    big = b'{"prompt": "' + b"a" * (max_body_bytes + 10) + b'"}'
    return [
        C("bad JSON", "/v1/completions", b'{"prompt": "x', 422, "invalid_json", "not valid JSON"),
        C("empty body", "/v1/completions", b"", 422, "invalid_json", "empty"),
        C("JSON array, not object", "/v1/completions", b'["x"]', 422, "invalid_json", "JSON object"),
        C("deeply nested JSON", "/v1/completions", b"[" * 60_000, 422, "invalid_json", "nested"),
        C("wrong type: prompt", "/v1/completions", b'{"prompt": 123}', 422, "invalid_request", "prompt"),
        C(
            "wrong type: max_tokens string",
            "/v1/completions",
            b'{"prompt": "x", "max_tokens": "10"}',
            422,
            "invalid_request",
            "max_tokens",
        ),
        C(
            "negative max_tokens",
            "/v1/completions",
            b'{"prompt": "x", "max_tokens": -5}',
            422,
            "invalid_request",
            "max_tokens",
        ),
        C(
            "max_tokens over the limit",
            "/v1/completions",
            b'{"prompt": "x", "max_tokens": 100000}',
            422,
            "invalid_request",
            "at most",
        ),
        C(
            "temperature out of range",
            "/v1/completions",
            b'{"prompt": "x", "temperature": 7}',
            422,
            "invalid_request",
            "temperature",
        ),
        C(
            "NaN temperature",
            "/v1/completions",
            b'{"prompt": "x", "temperature": NaN}',
            422,
            "invalid_request",
            "temperature",
        ),
        C("n > 1", "/v1/completions", b'{"prompt": "x", "n": 3}', 422, "invalid_request", "n=1"),
        C(
            "too many stop sequences",
            "/v1/completions",
            b'{"prompt": "x", "stop": ["a","b","c","d","e"]}',
            422,
            "invalid_request",
            "stop",
        ),
        C(
            "unknown model",
            "/v1/completions",
            b'{"prompt": "x", "model": "gpt-9"}',
            404,
            "model_not_found",
            "gpt-9",
        ),
        C("non-UTF-8 body", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400, "invalid_encoding", "UTF-8"),
        C(
            "lone surrogate in text",
            "/v1/completions",
            b'{"prompt": "a\\ud800"}',
            422,
            "invalid_request",
            "surrogate",
        ),
        C("empty prompt", "/v1/completions", b'{"prompt": ""}', 422, "empty_prompt", "empty"),
        C(
            "neither segments nor prompt",
            "/v1/completions",
            b'{"max_tokens": 4}',
            422,
            "invalid_request",
            "segments",
        ),
        C(
            "both segments and prompt",
            "/v1/completions",
            b'{"prompt": "x", "segments": {"prefix": "y"}}',
            422,
            "invalid_request",
            "not both",
        ),
        C("huge body (Content-Length)", "/v1/completions", big, 413, "body_too_large", "limit"),
        C(
            "bad event type",
            "/v1/events",
            b'{"type": "boom", "completion_id": "c"}',
            422,
            "invalid_request",
            "type",
        ),
        C("GET on a POST route", "/v1/completions", None, 405, "method_not_allowed", "Method Not Allowed"),
        C("unknown route", "/v2/nothing", None, 404, "not_found", "Not Found"),
    ]
