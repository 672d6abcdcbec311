"""Probes for load balancers: /healthz says the process is alive, /readyz that it can work
(database and task broker reachable). Neither needs a token; neither says more than it must."""

import logging

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def _database_ready() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.warning("readyz: the database is not reachable", exc_info=True)
        return False


def _broker_ready() -> bool:
    from django_q.brokers import get_broker

    try:
        return bool(get_broker().ping())
    except Exception:
        logger.warning("readyz: the task broker is not reachable", exc_info=True)
        return False


@never_cache
@require_GET
def readyz(request):
    checks = {"database": _database_ready(), "broker": _broker_ready()}
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": {name: "ok" if ok else "unreachable" for name, ok in checks.items()},
    }
    return JsonResponse(body, status=200 if ready else 503)
