"""Probes for load balancers: /healthz says the process is alive, /readyz that it can work.
Neither needs a token; neither says more than it must.

/readyz checks the database, the task broker and the shared cache. Without the database nothing
works: 503. Without the broker or the cache the API still answers (reads, uploads, blocks; rate
limits count per process), so the instance stays in rotation: 200, status "degraded", and the
check that failed says "unreachable". They are shared by every instance, so a 503 would take all
of them out at once and turn a partial outage into a full one. Each outage is logged once, when it
starts, not on every probe.
"""

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_q.brokers import get_broker

from perfgate_site.limits import Outage, shared_cache

database_outage = Outage("The database", "readyz answers 503.")
broker_outage = Outage(
    "The task broker", "readyz says degraded; queued load tests wait until the broker answers."
)


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def _database_ready() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            ready = cursor.fetchone() == (1,)
    except Exception as exc:  # whatever the driver raises when the server is gone
        database_outage.failed(exc)
        return False
    database_outage.answered()
    return ready


def _broker_ready() -> bool:
    try:
        ready = bool(get_broker().ping())
    except Exception as exc:  # whatever the broker's client raises (Redis, or the ORM's database)
        broker_outage.failed(exc)
        return False
    broker_outage.answered()
    return ready


@never_cache
@require_GET
def readyz(request):
    checks = {"database": _database_ready(), "broker": _broker_ready(), "cache": shared_cache.answers()}
    if all(checks.values()):
        state, status = "ready", 200
    elif checks["database"]:
        state, status = "degraded", 200
    else:
        state, status = "unavailable", 503
    body = {"status": state, "checks": {name: "ok" if ok else "unreachable" for name, ok in checks.items()}}
    return JsonResponse(body, status=status)
