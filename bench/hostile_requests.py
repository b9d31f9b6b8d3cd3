"""Malformed and hostile requests, each with the 4xx and error code it must get; sent to a running
server, with what it answered printed as a table. The integration tests assert the same table.

    splice serve &            # any model
    python -m splice.bench.hostile_requests [--url http://127.0.0.1:8600] [--max-body-bytes 1048576]

Each row: the request, the expected and actual status and error code, the error message, and
whether the server still answered /v1/health afterwards. Exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

import httpx


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
            "unknown early-exit strategy",
            "/v1/completions",
            b'{"prompt": "x", "early_exit": "sometimes"}',
            422,
            "invalid_request",
            "early_exit",
        ),
        C(
            "exit threshold out of range",
            "/v1/completions",
            b'{"prompt": "x", "exit_threshold": 1.5}',
            422,
            "invalid_request",
            "exit_threshold",
        ),
        C(
            "stop threshold zero",
            "/v1/completions",
            b'{"prompt": "x", "stop_threshold": 0}',
            422,
            "invalid_request",
            "stop_threshold",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument(
        "--max-body-bytes", type=int, default=1_048_576, help="the server's SPLICE_MAX_BODY_BYTES"
    )
    args = parser.parse_args(argv)
    failures = 0
    print(f"| request | expected | got | code | message | still serving |\n|{'---|' * 6}")
    for case in hostile_cases(args.max_body_bytes):
        if case.body is None:
            resp = httpx.get(args.url + case.path, timeout=60)
        else:
            resp = httpx.post(
                args.url + case.path,
                content=case.body,
                timeout=60,
                headers={"Content-Type": "application/json"},
            )
        error = resp.json().get("error", {})
        alive = httpx.get(args.url + "/v1/health", timeout=60).status_code == 200
        ok = resp.status_code == case.status and error.get("code") == case.code and alive
        failures += not ok
        message = str(error.get("message", ""))[:90].replace("|", "\\|")
        print(
            f"| {case.name} | {case.status} | {resp.status_code} | `{error.get('code')}` | {message} | "
            f"{'yes' if alive else 'NO'} |"
        )
    print(f"\n{len(hostile_cases(args.max_body_bytes)) - failures} as expected, {failures} not")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
