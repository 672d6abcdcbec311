"""What every API endpoint shares: the one error shape, strict input, per-token rate limits.

Every 4xx answers ``{"error": "<code>", "detail": "<human sentence>", "fields": {...}}``.
"""

from __future__ import annotations

import logging

import orjson
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import Http404, JsonResponse
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from gates.errors import ServiceError
from gates.results.common import MAX_JSON_DEPTH, nested_too_deep
from perfgate_site.limits import PayloadTooLarge

logger = logging.getLogger(__name__)

ERROR_CODES = {
    400: "invalid",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "throttled",
}


def error_body(code: str, detail: str, fields: dict | None = None) -> dict:
    return {"error": code, "detail": detail, "fields": fields or {}}


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error dicts as {"testConfig.vus": ["..."]}."""
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and prefix == "":
                name = "_"
            fields.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            fields[prefix or "_"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                fields.update(_flatten(item, f"{prefix}[{index}]"))
    else:
        fields[prefix or "_"] = [str(detail)]
    return fields


def api_exception_handler(exc, context):
    """DRF's handler, reshaped into the one error shape; domain refusals mapped to their status."""
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.detail, exc.fields), status=exc.http_status)
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 2**20} MB; "
            "upload large results as a multipart file part."
        )
    elif isinstance(exc, TooManyFieldsSent):
        exc = exceptions.ParseError("Too many fields in the request.")
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = ERROR_CODES.get(response.status_code, "error")
    if isinstance(exc, exceptions.ParseError):
        code = "malformed"
    if isinstance(exc, exceptions.ValidationError):
        response.data = invalid_body(exc.detail, code)
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else str(response.data)
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            detail = f"Too many requests for this token; retry in {int(exc.wait + 0.999)} s."
        response.data = error_body(code, str(detail))
    return response


def invalid_body(errors, code: str = "invalid") -> dict:
    """A serializer's errors in the error shape, the first one repeated in ``detail``."""
    fields = _flatten(errors)
    first = next(iter(fields.items()), None)
    detail = "The request is invalid"
    if first:
        detail += f": {first[0]}: {first[1][0]}" if first[0] != "_" else f": {first[1][0]}"
    return error_body(code, detail, fields)


def json_object(raw: bytes | str, *, what: str) -> dict:
    """A JSON object sent to perfgate outside the API's body parser (the multipart ``request``
    part, a webhook body), held to the same rules: strict JSON (no NaN or Infinity), nested at
    most MAX_JSON_DEPTH levels. Anything else is a 400 naming ``what``."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise exceptions.ParseError(f"{what} is not valid JSON: {exc}.") from None
    if not isinstance(document, dict):
        raise exceptions.ParseError(f"{what} is not a JSON object.")
    _refuse_deep_nesting(document)
    return document


def _refuse_deep_nesting(data) -> None:
    # Past a few hundred levels the json module, repr and DRF's own error messages recurse until
    # RecursionError; no request perfgate understands is more than a few levels deep.
    if nested_too_deep(data):
        raise exceptions.ParseError(
            f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep (depth limit exceeded)."
        )


def json_not_found(request, exception=None):
    """404 for URLs that match nothing: JSON under /api/, the usual page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def json_server_error(request):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
    from django.views.defaults import server_error

    return server_error(request)


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, at every level: a typo in CI's request must not be
    silently ignored (``thresholds`` spelled ``threshold`` would loosen nothing but check nothing).
    Input nested deeper than MAX_JSON_DEPTH is refused before any field reads it."""

    def run_validation(self, data=serializers.empty):
        if self.parent is None:
            _refuse_deep_nesting(data)
        return super().run_validation(data)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class StrictSerializerSchema(OpenApiSerializerExtension):
    """The OpenAPI schema says what a StrictSerializer does: a property it does not know is
    refused (``additionalProperties: false``), so clients generated from it learn it too."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}
