"""The OpenAPI document says what the server does: request bodies parsed by hand
(`parse_body`, so that bad JSON gets our error shape) are described from their
pydantic models, nested models included, and every route's 4xx/5xx answers are
described as the one error shape `{"error": {"code", "message"}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads `model` from its JSON body."""
    schema = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
    }


def install_openapi(app: FastAPI, body_models: list[type[BaseModel]]) -> None:
    """Replace `app.openapi` with one whose components hold `body_models`' nested
    schemas and whose operations all document the error shape (FastAPI's own
    `HTTPValidationError` is never sent: validation errors use our shape too)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in body_models:
            full = model.model_json_schema(ref_template=REF)
            for name, sub in full.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas.setdefault(model.__name__, full)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Error"] = ERROR_SCHEMA
        for path in doc.get("paths", {}).values():
            for op in path.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = _error_response("client error (`error.code` says which)")
                responses["5XX"] = _error_response("server error")
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
