"""A local fake of Slack's incoming webhooks, strict where Slack is strict.

``FakeSlack`` serves ``hooks.slack.com/services/T…/B…/<secret>`` from a ``ThreadingHTTPServer`` on
127.0.0.1 (a free port, a daemon thread). ``webhook_url(name)`` registers a webhook (a channel) and
returns its URL; the random last part is the secret. Where the fake has to choose (a status or body
the documents do not give) it says so.

Answers (api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks)
    200 ``ok`` (text/html, as Slack answers). 400 ``invalid_payload``: the body does not match its
    Content-Type (only ``application/json`` is modelled, the ``payload=`` form is not) or is not
    structurally valid; here also a body that is not an object or has neither a non-empty ``text``
    nor non-empty ``blocks`` (attachments-only messages are not modelled). 403 ``action_prohibited``,
    404 ``channel_not_found``, 410 ``channel_is_archived``, 500 ``rollup_error``. ``no_service`` (404,
    also any unknown path) and ``invalid_token`` (403) are the codes Slack's incoming-webhooks page
    (docs.slack.dev/messaging/sending-messages-using-incoming-webhooks) lists, seen here only through
    pages quoting it. Other 5xx bodies and 405 for a method other than POST are the fake's choice.
Block Kit
    A bad block is 400 with the body ``invalid_blocks`` and nothing else, as Slack answers webhooks
    (github.com/slackapi/java-slack-sdk/issues/1017,
    github.com/sourcegraph/sourcegraph-public-snapshot/issues/49979); the reason goes to the
    request log only. Enforced: at most 50 blocks (api.slack.com/reference/block-kit/blocks); types
    header, section, context, actions, divider, image, rich_text; ``block_id`` <= 255 and unique in
    the message; header text ``plain_text`` <= 150 (docs.slack.dev/reference/block-kit/blocks/
    header-block); a section needs ``text`` (<= 3000) or ``fields`` (<= 10, each <= 2000); context
    <= 10 elements (docs.slack.dev/reference/block-kit/blocks/context-block), actions <= 25
    (api.slack.com/reference/block-kit/blocks). Text objects (docs.slack.dev/reference/block-kit/
    composition-objects/text-object): ``plain_text`` or ``mrkdwn``, text 1..3000 characters, ``emoji``
    (bool) only on plain_text, ``verbatim`` (bool) only on mrkdwn. Buttons (docs.slack.dev/reference/
    block-kit/block-elements/button-element): ``plain_text`` text <= 75, ``url`` <= 3000, ``value``
    <= 2000, ``action_id`` <= 255 and unique "among all other action_ids in the containing block",
    ``style`` primary or danger. Image blocks need ``alt_text`` and ``image_url`` (or ``slack_file``).
Top-level text
    Slack truncates ``text`` beyond 40,000 characters and still posts it, for incoming webhooks too
    (api.slack.com/changelog/2018-04-truncating-really-long-messages). The fake accepts it too,
    records the payload as sent and marks the message ``truncated=True`` so a test can refuse it.
Rate limits (api.slack.com/docs/rate-limits)
    About one message per second per webhook, with short bursts; beyond that 429 with a
    ``Retry-After`` header in whole seconds (the body ``rate_limited`` is the fake's choice; the page
    speaks of a JSON object). ``rate_limit(per_second)`` models it without the bursts: a message
    sooner than ``1 / per_second`` after the webhook's last accepted one is refused.

Failure injection (``fail_next``, ``outage``, ``break_webhook``, ``rate_limit``, ``slow``) is
thread-safe. Every request is appended to ``requests`` (time, webhook name, status, body, reason);
accepted messages to ``messages``. A refused request posts nothing.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from tests.fake_http import KeepAliveHandler, LoopbackFake, QuietServer

TEAM_ID = "T0PERFGATE"
BROKEN_CODES = {
    "channel_not_found": 404,
    "channel_is_archived": 410,
    "action_prohibited": 403,
    "no_service": 404,
    "invalid_token": 403,
}
BLOCK_TYPES = ("header", "section", "context", "actions", "divider", "image", "rich_text")
MAX_BLOCKS = 50
MAX_TEXT = 40_000
SECRET_ALPHABET = string.ascii_letters + string.digits


@dataclass
class Request:
    at: float  # epoch seconds
    webhook: str | None  # the webhook's name; None for an unknown path
    status: int
    body: str  # what was answered: "ok" or Slack's code
    reason: str = ""  # why it was refused, in words (invalid_blocks names nothing else to the client)


@dataclass
class Message:
    webhook: str
    at: float
    payload: dict[str, Any]
    truncated: bool = False  # text was over 40,000 characters and Slack would have cut it


class Answer(Exception):
    """What a request gets; raised to stop checking a request at its first fault."""

    def __init__(self, status: int, body: str, reason: str = "", headers: dict[str, str] | None = None):
        super().__init__(reason or body)
        self.status, self.body, self.reason, self.headers = status, body, reason, headers or {}


def invalid_blocks(reason: str) -> Answer:
    return Answer(400, "invalid_blocks", reason)


class FakeSlack(LoopbackFake):
    def __init__(self):
        self.requests: list[Request] = []
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._webhooks: dict[str, str] = {}  # path -> name
        self._broken: dict[str, str] = {}  # path -> code
        self._failures: list[tuple[int, int | None, str | None]] = []  # (status, retry_after, path)
        self._outage: int | None = None
        self._interval: float | None = None  # seconds between accepted messages of one webhook
        self._last_accepted: dict[str, float] = {}
        self._delay: float | None = None

    def start(self) -> FakeSlack:
        return self._serve(QuietServer, _Handler, "fake-slack")

    @property
    def base_url(self) -> str:
        return self.url

    def webhook_url(self, name: str) -> str:
        """The URL of the webhook posting to channel ``name``, registered on first use."""
        bot_id = "B" + re.sub(r"[^A-Z0-9]", "", name.upper())
        if bot_id == "B":
            raise ValueError(f"webhook name {name!r} has no letters or digits")
        with self._lock:
            for path, known in self._webhooks.items():
                if known == name:
                    return self.base_url + path
            path = f"/services/{TEAM_ID}/{bot_id}/" + "".join(
                secrets.choice(SECRET_ALPHABET) for _ in range(24)
            )
            self._webhooks[path] = name
            return self.base_url + path

    def _path(self, webhook: str) -> str:
        """The path of a registered webhook given by URL or by name."""
        path = urlsplit(webhook).path if "/" in webhook else None
        for known_path, name in self._webhooks.items():
            if known_path == path or name == webhook:
                return known_path
        raise KeyError(f"no webhook {webhook!r}")

    def fail_next(
        self, count: int, *, status: int = 500, retry_after: float | None = None, webhook: str | None = None
    ) -> None:
        """The next ``count`` requests (to ``webhook``, a URL or name, or to any) get ``status``."""
        with self._lock:
            path = self._path(webhook) if webhook else None
            self._failures.extend([(status, retry_after, path)] * count)

    def outage(self, status: int = 503) -> None:
        with self._lock:
            self._outage = status

    def recover(self) -> None:
        """End an outage and drop pending ``fail_next`` failures (broken webhooks stay broken)."""
        with self._lock:
            self._outage = None
            self._failures.clear()

    def break_webhook(self, webhook: str, code: str) -> None:
        """Answer ``webhook`` (URL or name) with Slack's ``code`` from now on."""
        if code not in BROKEN_CODES:
            raise ValueError(f"code is one of {', '.join(BROKEN_CODES)}")
        with self._lock:
            self._broken[self._path(webhook)] = code

    def rate_limit(self, per_second: float | None = 1.0) -> None:
        """Accept at most ``per_second`` messages per second per webhook; ``None`` turns it off."""
        with self._lock:
            self._interval = 1.0 / per_second if per_second else None
            self._last_accepted.clear()

    def slow(self, seconds: float | None) -> None:
        with self._lock:
            self._delay = seconds

    def messages_for(self, name: str) -> list[Message]:
        with self._lock:
            return [message for message in self.messages if message.webhook == name]

    def rejected(self, status: int | None = None) -> list[Request]:
        with self._lock:
            return [
                request
                for request in self.requests
                if request.status != 200 and (status is None or request.status == status)
            ]

    def handle(self, method: str, path: str, content_type: str, body: bytes) -> Answer:
        with self._lock:
            delay = self._delay
        if delay:
            time.sleep(delay)
        with self._lock:
            now = time.time()
            name = self._webhooks.get(path)
            try:
                payload, truncated = self._check(method, path, content_type, body, now)
            except Answer as refused:
                answer = refused
            else:
                self._last_accepted[path] = now
                self.messages.append(Message(name, now, payload, truncated))
                answer = Answer(200, "ok", "text truncated to 40,000 characters" if truncated else "")
            self.requests.append(Request(now, name, answer.status, answer.body, answer.reason))
        return answer

    def _check(self, method, path, content_type, body, now) -> tuple[dict, bool]:
        if self._outage is not None:
            raise _failure(self._outage, None, "outage")
        for index, (status, retry_after, only) in enumerate(self._failures):
            if only is None or only == path:
                del self._failures[index]
                raise _failure(status, retry_after, "fail_next")
        if path not in self._webhooks:
            raise Answer(404, "no_service", "unknown webhook path")
        if path in self._broken:
            code = self._broken[path]
            raise Answer(BROKEN_CODES[code], code, f"broken webhook: {code}")
        if method != "POST":
            raise Answer(405, HTTPStatus(405).phrase, f"{method} instead of POST")
        if self._interval is not None and path in self._last_accepted:
            wait = self._last_accepted[path] + self._interval - now
            if wait > 0:
                raise _failure(429, wait, f"rate limited: {wait:.3f} s too soon")
        if content_type != "application/json":
            raise Answer(400, "invalid_payload", f"Content-Type {content_type}, not application/json")
        try:
            payload = json.loads(body)
        except ValueError:
            raise Answer(400, "invalid_payload", "malformed JSON") from None
        return check_message(payload)


def _failure(status: int, retry_after: float | None, reason: str) -> Answer:
    headers = {}
    if status == 429 or retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after or 1)))
    if status == 429:
        body = "rate_limited"
    elif status == 500:
        body = "rollup_error"
    else:
        body = HTTPStatus(status).phrase
    return Answer(status, body, reason, headers)


def check_message(payload: Any) -> tuple[dict, bool]:
    """The payload and whether its text would be truncated, or the ``Answer`` Slack refuses it with."""
    if not isinstance(payload, dict):
        raise Answer(400, "invalid_payload", "the body is not a JSON object")
    text, blocks = payload.get("text"), payload.get("blocks")
    if text is not None and not isinstance(text, str):
        raise Answer(400, "invalid_payload", "text is not a string")
    if blocks is not None and not isinstance(blocks, list):
        raise invalid_blocks("blocks is not an array")
    if not text and not blocks:
        raise Answer(400, "invalid_payload", "neither text nor blocks")
    blocks = blocks or []
    if len(blocks) > MAX_BLOCKS:
        raise invalid_blocks(f"{len(blocks)} blocks, at most {MAX_BLOCKS}")
    block_ids = set()
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            raise invalid_blocks(f"{where}: not a block of a known type")
        block_id = block.get("block_id")
        if block_id is not None:
            _string(block_id, f"{where}.block_id", 255)
            if block_id in block_ids:
                raise invalid_blocks(f"{where}.block_id {block_id!r} is not unique")
            block_ids.add(block_id)
        _check_block(block, f"{where} ({block['type']})")
    return payload, bool(text) and len(text) > MAX_TEXT


def _check_block(block: dict, where: str) -> None:
    kind = block["type"]
    if kind == "header":
        _text(block.get("text"), f"{where}.text", 150, plain_only=True)
    elif kind == "section":
        if block.get("text") is None and block.get("fields") is None:
            raise invalid_blocks(f"{where}: needs text or fields")
        if block.get("text") is not None:
            _text(block["text"], f"{where}.text", 3000)
        if block.get("fields") is not None:
            fields = _list(block["fields"], f"{where}.fields", 10)
            for index, item in enumerate(fields):
                _text(item, f"{where}.fields[{index}]", 2000)
        accessory = block.get("accessory")
        if accessory is not None:
            _element(accessory, f"{where}.accessory", set())
    elif kind == "context":
        for index, element in enumerate(_list(block.get("elements"), f"{where}.elements", 10)):
            if isinstance(element, dict) and element.get("type") == "image":
                _image(element, f"{where}.elements[{index}]")
            else:
                _text(element, f"{where}.elements[{index}]", 3000)
    elif kind == "actions":
        action_ids: set[str] = set()
        for index, element in enumerate(_list(block.get("elements"), f"{where}.elements", 25)):
            _element(element, f"{where}.elements[{index}]", action_ids)
    elif kind == "image":
        _image(block, where)
    elif kind == "rich_text":
        _list(block.get("elements"), f"{where}.elements", None)


def _element(element: Any, where: str, action_ids: set[str]) -> None:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        raise invalid_blocks(f"{where}: not an element")
    action_id = element.get("action_id")
    if action_id is not None:
        _string(action_id, f"{where}.action_id", 255)
        if action_id in action_ids:
            raise invalid_blocks(f"{where}.action_id {action_id!r} is not unique in its block")
        action_ids.add(action_id)
    if element["type"] != "button":
        return
    _text(element.get("text"), f"{where}.text", 75, plain_only=True)
    for key, limit in (("url", 3000), ("value", 2000), ("accessibility_label", 75)):
        if key in element:
            _string(element[key], f"{where}.{key}", limit)
    if "style" in element and element["style"] not in ("primary", "danger"):
        raise invalid_blocks(f"{where}.style is {element['style']!r}, not primary or danger")


def _image(image: dict, where: str) -> None:
    _string(image.get("alt_text"), f"{where}.alt_text", None)
    if "slack_file" not in image:
        _string(image.get("image_url"), f"{where}.image_url", None)


def _text(obj: Any, where: str, limit: int, *, plain_only: bool = False) -> None:
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in kinds:
        raise invalid_blocks(f"{where}: not a {' or '.join(kinds)} text object")
    _string(obj.get("text"), f"{where}.text", min(limit, 3000))
    for key, only_on in (("emoji", "plain_text"), ("verbatim", "mrkdwn")):
        if key in obj and (obj["type"] != only_on or not isinstance(obj[key], bool)):
            raise invalid_blocks(f"{where}.{key} is only a boolean on {only_on}")


def _string(value: Any, where: str, limit: int | None) -> None:
    if not isinstance(value, str) or not value:
        raise invalid_blocks(f"{where}: not a non-empty string")
    if limit is not None and len(value) > limit:
        raise invalid_blocks(f"{where}: {len(value)} characters, at most {limit}")


def _list(value: Any, where: str, limit: int | None) -> list:
    if not isinstance(value, list) or not value:
        raise invalid_blocks(f"{where}: not a non-empty array")
    if limit is not None and len(value) > limit:
        raise invalid_blocks(f"{where}: {len(value)} items, at most {limit}")
    return value


class _Handler(KeepAliveHandler):
    def _handle(self):
        body = self.read_body()
        path = urlsplit(self.path).path
        answer = self.server.fake.handle(self.command, path, self.headers.get_content_type(), body)
        payload = answer.body.encode()
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
