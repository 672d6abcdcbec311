"""The API's limits, referenced from settings: request body size (JSON), upload size
(multipart files, streamed to disk), and requests per token.

Kept apart from ``perfgate_site.api`` because DRF imports these while it loads its own views.
"""

from __future__ import annotations

import hashlib
import threading
import time

import orjson
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle


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


class _Allowance:
    """Requests this process reserved from the shared budget of one (token, window)."""

    __slots__ = ("exhausted", "left", "window_start")

    def __init__(self, window_start: int):
        self.window_start = window_start
        self.left = 0
        self.exhausted = False


class TokenRateThrottle(BaseThrottle):
    """Per-token request budget ("600/min") kept in the shared cache (the database cache by
    default, Redis when configured), so every worker on every host draws on the same budget.

    Fixed windows. A process reserves requests from the shared counter a few at a time
    (PERFGATE_RATE_LIMIT_BATCH) and spends them locally, so most requests touch no shared
    state; what it reserved is counted against the budget at once, and a process holding
    unspent requests can make another hit 429 at most that many requests early. When little
    budget is left it reserves one at a time. With Redis the counter is atomic and the budget
    is never exceeded; the database cache's increment is a read and a write, so two
    reservations at the same instant can count once. Requests before a token is known count
    against the client address. ``Retry-After`` points at the window's end.
    """

    scope = "token"
    THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    _allowances: dict[str, _Allowance] = {}
    _lock = threading.Lock()

    def __init__(self):
        self.wait_seconds: float | None = None

    @staticmethod
    def parse_rate(rate: str) -> tuple[int, int]:
        count, period = rate.split("/")
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]
        return int(count), seconds

    def allow_request(self, request, view) -> bool:
        rate = self.THROTTLE_RATES.get(self.scope)
        if not rate:
            return True
        limit, window = self.parse_rate(rate)
        token = getattr(request, "auth", None)
        ident = f"token-{token.pk}" if getattr(token, "pk", None) else f"addr-{self.get_ident(request)}"
        now = time.time()
        window_start = int(now // window) * window
        with self._lock:
            allowance = self._allowances.get(ident)
            if allowance is None or allowance.window_start != window_start:
                allowance = self._allowances[ident] = _Allowance(window_start)
            if allowance.left == 0 and not allowance.exhausted:
                allowance.left, allowance.exhausted = self._reserve(ident, window_start, window, limit)
            if allowance.left > 0:
                allowance.left -= 1
                return True
        self.wait_seconds = max(1.0, window_start + window - now)
        return False

    @staticmethod
    def _reserve(ident: str, window_start: int, window: int, limit: int) -> tuple[int, bool]:
        """Take requests from the shared counter: (granted, budget exhausted)."""
        key = f"throttle:{ident}:{window_start}"
        used = cache.get(key, 0)
        batch = max(1, min(settings.PERFGATE_RATE_LIMIT_BATCH, (limit - used) // 8))
        try:
            total = cache.incr(key, batch)
        except ValueError:  # the first reservation of this window
            total = batch if cache.add(key, batch, timeout=window + 1) else cache.incr(key, batch)
        granted = max(0, min(batch, limit - (total - batch)))
        return granted, granted < batch

    @classmethod
    def forget(cls) -> None:
        """Drop this process's reservations (tests)."""
        with cls._lock:
            cls._allowances.clear()

    def wait(self) -> float | None:
        return self.wait_seconds


class FastJSONRenderer(JSONRenderer):
    """JSON responses through orjson: the status endpoint is polled constantly, and rendering is
    a visible share of its cost. Same output as DRF's renderer (UTC times end in "Z")."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        return orjson.dumps(data, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
