"""Long-polls that cost no thread: waiters sleep on futures, and one task per event loop wakes
them when their validation leaves queued/running.

Under an ASGI server each worker process has one event loop, so one hub and one listener. On
PostgreSQL the listener is a psycopg async connection doing ``LISTEN`` on ``CHANNEL``, fed by the
trigger of migration 0015 (``<validation id>:<status>`` on every status change, sent at commit).
Elsewhere (SQLite) the hub polls the statuses of every waited-on validation in one query each
``PERFGATE_LONGPOLL_POLL_SECONDS``. When the listener's connection drops, the hub polls the same way
until it listens again, so a waiter is never left to its deadline by a lost notification.

The number of waiters per token is capped per process (``PERFGATE_MAX_WAITERS_PER_TOKEN``): a
long-poll costs little memory, but one runaway CI job must not hold them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection

from gates.models import Validation

logger = logging.getLogger(__name__)

CHANNEL = "perfgate_validation_status"
# How long the hub polls after losing its listener before it tries to listen again.
RELISTEN_SECONDS = 5.0
# How often a quiet listener checks that its connection is still alive: a connection that died
# without a word (a network partition) would otherwise wait for notifications forever.
HEARTBEAT_SECONDS = 15.0
# A slot of the per-token cap frees when a waiter is answered, after at most 30 s.
RETRY_AFTER_SECONDS = 5

_slots_lock = threading.Lock()
_waiting_per_token: Counter[int] = Counter()


class TooManyWaiters(Exception):
    """The token already has its share of long-polls waiting in this process."""

    def __init__(self, limit: int):
        super().__init__(f"This token already has {limit} status requests waiting; retry in a few seconds.")
        self.limit = limit


@contextlib.contextmanager
def waiter_slot(token_id: int) -> Iterator[None]:
    """Hold one of the token's waiter slots in this process, or raise ``TooManyWaiters``.

    Counted per process, across event loops: under WSGI every request has a loop of its own."""
    limit = settings.PERFGATE_MAX_WAITERS_PER_TOKEN
    with _slots_lock:
        if _waiting_per_token[token_id] >= limit:
            raise TooManyWaiters(limit)
        _waiting_per_token[token_id] += 1
    try:
        yield
    finally:
        with _slots_lock:
            _waiting_per_token[token_id] -= 1
            if not _waiting_per_token[token_id]:
                del _waiting_per_token[token_id]


def waiting_count(token_id: int | None = None) -> int:
    """Long-polls waiting in this process (of one token, or of all)."""
    with _slots_lock:
        return _waiting_per_token[token_id] if token_id is not None else sum(_waiting_per_token.values())


def decided_among(validation_ids: list[str]) -> set[str]:
    """Which of these validations have left queued/running (one query). The connection is closed
    after it: the hub's reads run on whatever executor thread is free, and hold nothing between."""
    try:
        decided = (
            Validation.objects.filter(pk__in=validation_ids)
            .exclude(status__in=Validation.PENDING_STATUSES)
            .values_list("pk", flat=True)
        )
        return {str(pk) for pk in decided}
    finally:
        connection.close()


async def wait_for_decision(validation_id: str, seconds: float, *, still_pending) -> None:
    """Return once the validation has left queued/running, or after ``seconds``.

    ``still_pending`` is an async callable that reads the status as the caller sees it: it is
    asked once the hub is sure to hear of every change, because a change made between the
    caller's first read and then reaches no one."""
    hub = _hub()
    decided = hub.register(validation_id)
    try:
        async with asyncio.timeout(seconds):
            await hub.ready.wait()
            if await still_pending():
                await decided
    except TimeoutError:
        pass
    finally:
        hub.unregister(validation_id, decided)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def _hub() -> Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(loop)
    return hub


class Hub:
    """The waiters of one event loop and the one task that wakes them.

    ``ready`` is set while every status change is sure to reach the hub: while it listens, or
    while it polls."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.ready = asyncio.Event()
        self._waiters: dict[str, set[asyncio.Future]] = {}
        self._arrived = asyncio.Event()
        # A context of its own: the task must not share the database connection (or the request
        # thread) of the request that happened to start it.
        self._task = loop.create_task(self._run(loop), context=contextvars.Context())

    def register(self, validation_id: str) -> asyncio.Future:
        decided = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(validation_id, set()).add(decided)
        self._arrived.set()
        return decided

    def unregister(self, validation_id: str, decided: asyncio.Future) -> None:
        futures = self._waiters.get(validation_id)
        if futures is not None:
            futures.discard(decided)
            if not futures:
                del self._waiters[validation_id]

    def wake(self, validation_ids) -> None:
        for validation_id in validation_ids:
            for decided in self._waiters.get(validation_id, ()):
                if not decided.done():
                    decided.set_result(None)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while True:
                if connection.vendor == "postgresql":
                    try:
                        await self._listen()
                    except (psycopg.Error, DatabaseError, OSError, TimeoutError) as exc:
                        logger.warning(
                            "long-polls: the status listener is down (%s); polling until it is back", exc
                        )
                    await self._poll(for_seconds=RELISTEN_SECONDS)
                else:
                    await self._poll(for_seconds=None)
        finally:
            _hubs.pop(loop, None)

    async def _listen(self) -> None:
        """Wake waiters from the trigger's notifications until the connection fails."""
        async with await psycopg.AsyncConnection.connect(**_listener_params(), autocommit=True) as listener:
            await listener.execute(f"LISTEN {CHANNEL}")
            # Changes made before LISTEN took effect were announced to no one: look once.
            await self._sweep()
            self.ready.set()
            while True:
                async for notify in listener.notifies(timeout=HEARTBEAT_SECONDS):
                    validation_id, _, status = notify.payload.partition(":")
                    if status not in Validation.PENDING_STATUSES:
                        self.wake([validation_id])
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    await listener.execute("SELECT 1")

    async def _poll(self, *, for_seconds: float | None) -> None:
        """Wake waiters from a poll of all their statuses, for a while (or for ever)."""
        self.ready.set()
        until = None if for_seconds is None else time.monotonic() + for_seconds
        while until is None or time.monotonic() < until:
            if not self._waiters:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if until is None else until - time.monotonic()):
                        await self._arrived.wait()
                continue
            try:
                await self._sweep()
            except DatabaseError as exc:
                # The database is down too: the waiters answer (or fail) at their deadlines.
                logger.warning("long-polls: cannot read the statuses waited on (%s)", exc)
            await asyncio.sleep(settings.PERFGATE_LONGPOLL_POLL_SECONDS)

    async def _sweep(self) -> None:
        if self._waiters:
            self.wake(await sync_to_async(decided_among, thread_sensitive=False)(list(self._waiters)))


def _listener_params() -> dict:
    """The default database's connection parameters, less what only Django's own cursors use."""
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    params.setdefault("connect_timeout", 5)
    return params
