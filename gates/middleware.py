"""The reaper of the web process: a validation whose worker is lost never stays running because
no worker is alive to run django-q2's scheduled reaper (docs/architecture.md, "Faults")."""

from __future__ import annotations

import logging
import threading
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.urls import reverse

from gates.services import validation_dispatch_pending, validation_reap_expired

logger = logging.getLogger(__name__)


class ReapExpiredLeases:
    """After a request, at most every ``PERFGATE_WEB_REAPER_SECONDS`` in this process, end the
    running validations whose lease expired, as the scheduled reaper would (an error, then
    blocked or failed by policy; each once, whoever reaps it first), and send the load tests the
    task broker could not take when it was down.

    CI's status polling keeps it going while anyone waits for a verdict. The response was made
    before the reaping, so the status that found an expired lease shows it (``leaseExpired``) and
    the next one the outcome. Under WSGI only a request that used the database reaps, so the
    liveness probe (and any request that needs no database) is not made to depend on it. Under
    ASGI the middleware is async, so a long-poll waiting below it holds no thread; there every
    request but the liveness probe may reap, in a worker thread.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.lock = threading.Lock()
        self.next_reap = 0.0

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        queried = False

        def note_query(execute, sql, params, many, context):
            nonlocal queried
            queried = True
            return execute(sql, params, many, context)

        with connection.execute_wrapper(note_query):
            response = self.get_response(request)
        if queried and self._due():
            self._reap()
        return response

    async def __acall__(self, request):
        response = await self.get_response(request)
        if request.path != reverse("healthz") and self._due():
            await sync_to_async(self._reap)()
        return response

    def _due(self) -> bool:
        interval = settings.PERFGATE_WEB_REAPER_SECONDS
        if not interval:
            return False
        with self.lock:
            now = time.monotonic()
            if now < self.next_reap:
                return False
            self.next_reap = now + interval
            return True

    def _reap(self) -> None:
        try:
            validation_dispatch_pending()
            reaped = validation_reap_expired()
        except DatabaseError as exc:
            # The response is made; a database that just went away only delays the reaping.
            logger.warning("the web process's reaper could not run: %s", exc.__class__.__name__)
            return
        if reaped:
            logger.warning("the web process's reaper ended %d validation(s) whose worker was lost", reaped)
