"""The one outbound HTTP path (on ``requests``): timeouts always, redirects never followed
blindly, and every failure sorted into "try again later" (with how much later the other side
asked for) or "this will never work".

Retrying is the outbox's job (``integrations.outbox``): a call that must not be lost is recorded
first and delivered by a task, with backoff between attempts.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import time
from dataclasses import dataclass

import requests

USER_AGENT = "perfgate (+https://github.com/perfgate)"
_session = requests.Session()


class CallFailed(Exception):
    """A call that did not succeed. ``retry_after``: seconds the other side asked us to wait."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None, detail: str = ""
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.detail = detail  # what the other side said (its error message or code), if anything


class TryLater(CallFailed):
    """Down, overloaded, rate limited or too slow: the same call may work later."""


class Pending(TryLater):
    """The call went through and what it started is still under way (a rollback's alias request,
    a workflow run): look again after ``retry_after`` seconds. Not a failure: it neither grows the
    backoff nor holds back the project's other calls."""


class Refused(CallFailed):
    """The other side refused the call itself (4xx): sending it again will not help."""


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body) if self.body else None


def wait_asked_for(headers, now: float | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or an HTTP date) or GitHub's rate-limit
    headers (``x-ratelimit-remaining: 0`` with ``x-ratelimit-reset``, epoch seconds).

    A value that is neither (``Retry-After: soon``, ``inf``) is ignored: the caller's own backoff
    applies, and a garbled header from the other side never breaks delivery."""
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        wait = _seconds(value)
        if wait is None:
            wait = _until(value, now)
        if wait is not None:
            return wait
    if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
        reset = _seconds(headers["x-ratelimit-reset"])
        return None if reset is None else max(0.0, reset - now)
    return None


def _seconds(value: str) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _until(value: str, now: float) -> float | None:
    """Seconds from ``now`` until an HTTP date (never negative), or None when it is not one."""
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:  # "-0000": UTC, with no claim about the sender's zone
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0.0, moment.timestamp() - now)


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace")
    if isinstance(body, dict):
        error = body.get("error")
        # GitHub answers {"message": …}; Vercel {"error": {"code": …, "message": …}}.
        text = str(body.get("message") or (error.get("message", "") if isinstance(error, dict) else ""))
        if body.get("errors"):
            text += f" {body['errors']}"
        return text[:500]
    return str(body)[:300]


def call(
    method: str,
    url: str,
    *,
    timeout: float,
    headers: dict | None = None,
    json=None,
    max_bytes: int = 10 * 2**20,
    label: str = "",
) -> Reply:
    """One request. Redirects are returned, not followed (the caller decides whether a
    credential may go along). Raises ``TryLater`` or ``Refused``; never leaks the request's
    headers into its messages, nor its URL when ``label`` names the call instead (a Slack
    webhook's URL is its secret)."""
    what = label or f"{method} {url}"
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    try:
        response = _session.request(
            method, url, headers=all_headers, json=json, timeout=timeout, allow_redirects=False, stream=True
        )
    except requests.Timeout:
        raise TryLater(f"{what}: no answer within {timeout:g} s") from None
    except requests.RequestException as exc:
        raise TryLater(f"{what}: {type(exc).__name__}") from None
    chunks: list[bytes] = []
    with response:
        _copy_limited(response, chunks.append, max_bytes, what)
    body = b"".join(chunks)
    status = response.status_code
    if status < 400:
        return Reply(status, response.headers, body)
    wait = wait_asked_for(response.headers)
    detail = _message(body) if body else ""
    text = f"{what}: HTTP {status} {detail}".strip()
    rate_limited = status == 429 or (status == 403 and wait is not None)
    if status >= 500 or status == 408 or rate_limited:
        raise TryLater(text, status=status, retry_after=wait, detail=detail)
    raise Refused(text, status=status, detail=detail)


def _copy_limited(response: requests.Response, write, max_bytes: int, what: str) -> int:
    """Stream the body to ``write``, refusing more than ``max_bytes``; returns the size."""
    size = 0
    try:
        for chunk in response.iter_content(256 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise Refused(f"{what}: the answer is larger than {max_bytes} bytes")
            write(chunk)
    except requests.RequestException as exc:
        raise TryLater(f"{what}: the answer broke off ({type(exc).__name__})") from None
    return size


def download(url: str, destination, *, timeout: float, max_bytes: int) -> int:
    """Fetch a file (e.g. from blob storage a GitHub redirect points at) into ``destination``,
    an open binary file, with no credentials at all; at most ``max_bytes``. Returns its size."""
    try:
        response = _session.get(
            url, headers={"User-Agent": USER_AGENT}, timeout=timeout, stream=True, allow_redirects=True
        )
    except requests.RequestException as exc:
        raise TryLater(f"download: {type(exc).__name__}") from None
    with response:
        if response.status_code >= 400:
            error = TryLater if response.status_code >= 500 else Refused
            raise error(f"download: HTTP {response.status_code}", status=response.status_code)
        return _copy_limited(response, destination.write, max_bytes, "download")
