"""An OpenAPI 3.1 document for a worker, built from the hosted models' own schemas."""

from __future__ import annotations

from typing import Any

from modelfleet import __version__
from modelfleet.models.runner import ModelRunner

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "details": {"type": "array", "items": {"type": "object"}}},
}


def _error_responses(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed JSON or request envelope",
        404: "Unknown model",
        413: "Body over the limit",
        415: "Content type is not application/json",
        422: "Input does not fit the model's schema",
        500: "The model failed",
        504: "Deadline exceeded",
    }
    return {
        str(code): {
            "description": reasons[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def openapi_document(service: str, runners: dict[str, ModelRunner]) -> dict[str, Any]:
    """Describe every route, with one concrete predict path per model so clients get exact schemas."""
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {}
    for name, runner in runners.items():
        for schema_type in (runner.input_type, runner.output_type):
            document = schema_type.model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in document.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas[schema_type.__name__] = document
        in_ref = {"$ref": f"#/components/schemas/{runner.input_type.__name__}"}
        out_ref = {"$ref": f"#/components/schemas/{runner.output_type.__name__}"}
        paths[f"/v1/models/{name}/predict"] = {
            "post": {
                "summary": f"Predict with {name}",
                "description": type(runner.model).description,
                "operationId": f"predict_{name.replace('-', '_')}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [in_ref, {"type": "array", "items": in_ref}]}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "One output per input",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "model": {"type": "string"},
                                        "version": {"type": "string"},
                                        "output": out_ref,
                                        "outputs": {"type": "array", "items": out_ref},
                                    },
                                }
                            }
                        },
                    },
                    **_error_responses(400, 404, 413, 415, 422, 500, 504),
                },
            }
        }
    json_object = {"application/json": {"schema": {"type": "object"}}}
    paths["/v1/models"] = {
        "get": {
            "summary": "Models hosted here",
            "responses": {"200": {"description": "ok", "content": json_object}},
        }
    }
    paths["/v2/health/live"] = {"get": {"summary": "Liveness", "responses": {"200": {"description": "live"}}}}
    paths["/v2/health/ready"] = {
        "get": {
            "summary": "Readiness",
            "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}},
        }
    }
    paths["/v2/models/{model_name}/infer"] = {
        "post": {
            "summary": "Open Inference Protocol v2 inference",
            "parameters": [
                {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "requestBody": {"required": True, "content": json_object},
            "responses": {
                "200": {"description": "Inference response", "content": json_object},
                **_error_responses(400, 404, 413, 415, 422, 500, 504),
            },
        }
    }
    paths["/metrics"] = {
        "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"modelfleet worker: {service}", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
