"""The API's limits, referenced from settings: request body size (JSON), upload size
(multipart files, streamed to disk), and requests per token.

Kept apart from ``perfgate_site.api`` because DRF imports these while it loads its own views.
"""

from __future__ import annotations

import hashlib

import orjson
from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.throttling import SimpleRateThrottle


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE (DRF's own parser reads the stream and never
    checks Django's limit), parsed strictly: NaN and Infinity are not JSON."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        too_large = PayloadTooLarge(
            f"The request body is larger than {limit / 2**20:g} MB; upload large results as a multipart "
            "file part."
        )
        length = int((request.META.get("CONTENT_LENGTH") if request else 0) or 0)
        if limit is not None and length > limit:
            raise too_large
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise too_large
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise exceptions.ParseError(f"The body is not valid JSON: {exc}.") from None


class UploadTooLarge(PayloadTooLarge):
    pass


class LimitedUploadHandler(TemporaryFileUploadHandler):
    """Every uploaded file goes straight to a temporary file (never held in memory), is refused
    beyond PERFGATE_UPLOAD_MAX_BYTES, and carries the SHA-256 of its bytes for idempotency."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        limit = settings.PERFGATE_UPLOAD_MAX_BYTES
        if content_length and content_length > limit + 64 * 1024:
            raise UploadTooLarge(f"The upload is larger than the limit of {limit // 2**20} MB.")

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0
        self.digest = hashlib.sha256()

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.PERFGATE_UPLOAD_MAX_BYTES:
            raise UploadTooLarge(
                f"The upload is larger than the limit of {settings.PERFGATE_UPLOAD_MAX_BYTES // 2**20} MB."
            )
        self.digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self.digest.hexdigest()
        return uploaded


class TokenRateThrottle(SimpleRateThrottle):
    """Per-token request budget in the shared cache (database cache, or Redis when configured)."""

    scope = "token"

    def get_cache_key(self, request, view):
        token = getattr(request, "auth", None)
        if token is None or not hasattr(token, "pk"):
            return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
        return self.cache_format % {"scope": self.scope, "ident": f"token-{token.pk}"}
