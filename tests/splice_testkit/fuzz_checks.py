"""schemathesis hooks (`SCHEMATHESIS_HOOKS=splice_testkit.fuzz_checks`): the error-shape check
that `tests/integration/test_openapi_fuzz.py` adds to schemathesis's own checks."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is exactly `{"error": {"code": str, "message": str}}`."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an error object: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, f"error has {sorted(error)}"
    assert isinstance(error["code"], str) and error["code"], "empty or non-string error.code"
    assert isinstance(error["message"], str) and error["message"], "empty or non-string error.message"
    return True
