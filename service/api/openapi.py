"""The ``/v1`` routes in FastAPI's openapi.json, generated from the route table and the protocol models.

The pipeline (``pipeline.py``) serves them ahead of FastAPI, so FastAPI does not know them; this
adds each route's request body and answers (JSON, and SSE events where it can stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from ..protocol import ErrorResponse
from .pipeline import ApiRoute

ERROR_DESCRIPTION = 'An OpenAI error envelope: `{"error": {...}}`.'
STREAM_DESCRIPTION = " With `stream: true`, server-sent events: `data: <chunk>` lines, then `data: [DONE]`."


def describe(openapi: dict[str, Any], routes: Sequence[ApiRoute]) -> dict[str, Any]:
    """``openapi`` with ``routes`` described (once: FastAPI keeps the document it returns)."""
    paths = openapi.setdefault("paths", {})
    if any(route.path in paths for route in routes):
        return openapi
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return openapi


def _operation(route: ApiRoute) -> dict[str, Any]:
    content = {"application/json": {"schema": _schema(route.response)}}
    description = f"The {route.response.__name__}."
    if route.stream is not None:
        content["text/event-stream"] = {"schema": _schema(route.stream)}
        description += STREAM_DESCRIPTION
    operation: dict[str, Any] = {
        "tags": [route.tag],
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "responses": {
            "200": {"description": description, "content": content},
            "default": {
                "description": ERROR_DESCRIPTION,
                "content": {"application/json": {"schema": _schema(ErrorResponse)}},
            },
        },
    }
    if "{" in route.path:  # a templated path: its one parameter
        name = route.path[route.path.index("{") + 1 : route.path.index("}")]
        parameter = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        operation["parameters"] = [parameter]
    if route.request is not None:
        body = {"application/json": {"schema": _schema(route.request)}}
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined: ``#/$defs/...`` would not resolve in openapi.json."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return dict(resolve(schema))
