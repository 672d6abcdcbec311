"""The API's limits, referenced from settings: request body size (JSON), upload size
(multipart files, streamed to disk), requests per token, and failed authentications per address.

The rate limits count in the shared cache, and a cache that cannot be reached never fails a
request: counting falls back to this process until the cache answers again (``SharedCache``).

Kept apart from ``perfgate_site.api`` because DRF imports these while it loads its own views.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import orjson
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.db import DatabaseError
from redis.exceptions import RedisError
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What a cache backend raises when its server cannot be reached: redis-py's errors (Redis), the
# database's (the database cache), and the socket errors beneath both.
CACHE_ERRORS = (RedisError, DatabaseError, OSError)
_URL_CREDENTIALS = re.compile(r"//[^/@\s]*@")


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


def loggable(exc: BaseException) -> str:
    """An exception for the log: its class and message, with credentials in any URL masked (a
    connection error can quote the URL it was given)."""
    return f"{type(exc).__name__}: {_URL_CREDENTIALS.sub('//***@', str(exc))}"


def parse_rate(rate: str) -> tuple[int, int]:
    """A rate such as "600/min" as (600, 60): requests, and the window in seconds."""
    count, period = rate.split("/")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]
    return int(count), seconds


class Outage:
    """Whether a service answered its last call, so that an outage is logged when it starts and
    when it ends, not on every request (or every probe of a load balancer) in between."""

    def __init__(self, service: str, consequence: str):
        self.service = service
        self.consequence = consequence
        self.down_since: float | None = None
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        logger.warning("%s is unreachable (%s); %s", self.service, loggable(exc), self.consequence)

    def answered(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            down_since, self.down_since = self.down_since, None
        if down_since is not None:
            logger.info("%s answers again, after %.0f s.", self.service, time.monotonic() - down_since)

    def forget(self) -> None:
        """Start again as if the service had always answered (tests)."""
        self.down_since = None


class SharedCache:
    """The rate limits' calls to the shared cache. When the cache cannot be reached, the caller's
    per-process fallback answers instead and the request goes on; the outage is logged once.

    While the cache is down a process asks it again at most every PERFGATE_CACHE_RETRY_SECONDS,
    so a server that hangs until the socket timeout delays one request per interval, not all.
    """

    def __init__(self):
        self.outage = Outage(
            "The shared cache", "rate limits are counted by each server process alone until it answers."
        )
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def call(self, operation: Callable[[], T], fallback: Callable[[], T]) -> T:
        if not self._may_ask():
            return fallback()
        try:
            result = operation()
        except CACHE_ERRORS as exc:
            self._retry_at = time.monotonic() + settings.PERFGATE_CACHE_RETRY_SECONDS
            self.outage.failed(exc)
            return fallback()
        self.outage.answered()
        return result

    def answers(self) -> bool:
        """Whether the cache answers now (readiness probes): always asks it."""
        try:
            cache.get("perfgate:ready")
        except CACHE_ERRORS as exc:
            self.outage.failed(exc)
            return False
        self.outage.answered()
        return True

    def forget(self) -> None:
        """Start again as if the cache had always answered (tests)."""
        self.outage.forget()
        self._retry_at = 0.0

    def _may_ask(self) -> bool:
        if self.outage.down_since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._retry_at:
                return False
            self._retry_at = now + settings.PERFGATE_CACHE_RETRY_SECONDS
            return True


class LocalCounts:
    """Counts per key in this process: the rate limits' stand-in for the shared cache while it
    is down. Each key names its window, so a key is dropped once its window has ended."""

    def __init__(self):
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._pruned_at = 0.0

    def add(self, key: str, amount: int, expires_at: float) -> int:
        """Add ``amount`` to the key's count and return the new count."""
        with self._lock:
            now = time.time()
            if now - self._pruned_at >= 1:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
                self._pruned_at = now
            count = self._counts.get(key, (0, expires_at))[0] + amount
            self._counts[key] = (count, expires_at)
            return count

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


def _shared_add(key: str, amount: int, window: int) -> int:
    try:
        return cache.incr(key, amount)
    except ValueError:  # the first count of this window
        return amount if cache.add(key, amount, timeout=window + 1) else cache.incr(key, amount)


shared_cache = SharedCache()
local_counts = LocalCounts()


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

    While the shared cache is unreachable each process counts alone, with the same budget: the
    limit still holds per process, and a token can make that many requests in every process.
    """

    scope = "token"
    THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    _allowances: dict[str, _Allowance] = {}
    _lock = threading.Lock()

    def __init__(self):
        self.wait_seconds: float | None = None

    def allow_request(self, request, view) -> bool:
        rate = self.THROTTLE_RATES.get(self.scope)
        if not rate:
            return True
        limit, window = parse_rate(rate)
        token = getattr(request, "auth", None)
        ident = f"token-{token.pk}" if getattr(token, "pk", None) else f"addr-{self.get_ident(request)}"
        now = time.time()
        window_start = int(now // window) * window
        with self._lock:
            allowance = self._allowance(ident, window_start)
            if allowance.left > 0:
                allowance.left -= 1
                return True
            ask = not allowance.exhausted
        if ask:
            # The shared counter is asked outside the lock: with the database cache that takes a
            # pooled connection, and a thread waiting for one must not hold up every other thread
            # (which may hold the connections it waits for).
            granted, exhausted = self._reserve(ident, window_start, window, limit)
            with self._lock:
                allowance = self._allowance(ident, window_start)
                if allowance.window_start == window_start:
                    allowance.left += granted
                    allowance.exhausted = allowance.exhausted or exhausted
                if allowance.left > 0:
                    allowance.left -= 1
                    return True
        self.wait_seconds = max(1.0, window_start + window - now)
        return False

    def _allowance(self, ident: str, window_start: int) -> _Allowance:
        """This process's reservation for the window (a newer window's, once one began)."""
        allowance = self._allowances.get(ident)
        if allowance is None or allowance.window_start < window_start:
            allowance = self._allowances[ident] = _Allowance(window_start)
        return allowance

    @staticmethod
    def _reserve(ident: str, window_start: int, window: int, limit: int) -> tuple[int, bool]:
        """Take requests from the shared counter (or, while it is down, this process's own):
        (granted, budget exhausted)."""
        key = f"throttle:{ident}:{window_start}"

        def from_shared() -> tuple[int, bool]:
            used = cache.get(key, 0)
            batch = max(1, min(settings.PERFGATE_RATE_LIMIT_BATCH, (limit - used) // 8))
            total = _shared_add(key, batch, window)
            granted = max(0, min(batch, limit - (total - batch)))
            return granted, granted < batch

        def from_process() -> tuple[int, bool]:
            granted = int(local_counts.add(key, 1, window_start + window) <= limit)
            return granted, granted == 0

        return shared_cache.call(from_shared, from_process)

    @classmethod
    def forget(cls) -> None:
        """Drop this process's reservations, stand-in counts and cache outage (tests)."""
        with cls._lock:
            cls._allowances.clear()
        local_counts.clear()
        shared_cache.forget()

    def wait(self) -> float | None:
        return self.wait_seconds


class TooManyFailedAuthentications(exceptions.AuthenticationFailed):
    """429 for an address beyond its budget of failed authentications; ``wait`` (seconds to the
    window's end) becomes ``Retry-After``. Still an authentication failure, so code that handles
    one (the chart view authenticates by hand) refuses the request instead of failing."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "throttled"

    def __init__(self, wait: float):
        self.wait = max(1, math.ceil(wait))
        super().__init__(
            f"Too many failed authentications from this address; retry in {self.wait} s with a valid token."
        )


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, or the address the trusted proxies in front of
    perfgate saw (REST_FRAMEWORK's NUM_PROXIES, from PERFGATE_TRUSTED_PROXIES)."""
    return BaseThrottle().get_ident(request)


def failed_authentication(request) -> None:
    """Count one failed authentication against the client's address; beyond
    PERFGATE_FAILED_AUTH_RATE in the current window, raise ``TooManyFailedAuthentications``.

    Only failures count, so a valid token is never slowed by this limit, whoever shares its
    address. The address that crosses the limit is logged once per window."""
    rate = settings.PERFGATE_FAILED_AUTH_RATE
    if not rate:
        return
    limit, window = parse_rate(rate)
    address = client_address(request)
    now = time.time()
    window_start = int(now // window) * window
    key = f"authfail:{address}:{window_start}"
    failures = shared_cache.call(
        lambda: _shared_add(key, 1, window), lambda: local_counts.add(key, 1, window_start + window)
    )
    if failures <= limit:
        return
    if failures == limit + 1:
        logger.warning(
            "Authentication failed %d times from %s within %s; its failed attempts get 429 until the "
            "window ends.",
            failures,
            address,
            rate,
        )
    raise TooManyFailedAuthentications(window_start + window - now)


class FastJSONRenderer(JSONRenderer):
    """JSON responses through orjson: the status endpoint is polled constantly, and rendering is
    a visible share of its cost. Same output as DRF's renderer (UTC times end in "Z")."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        return orjson.dumps(data, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
