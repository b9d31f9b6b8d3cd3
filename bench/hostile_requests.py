"""Send the malformed/hostile request table to a running server and print what it answered.

    splice serve &            # any model
    python bench/hostile_requests.py [--url http://127.0.0.1:8600] [--max-body-bytes 1048576]

Each row: the request, the expected and actual status and error code, the error message, and
whether the server still answered /v1/health afterwards. Exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.hostile import hostile_cases


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
