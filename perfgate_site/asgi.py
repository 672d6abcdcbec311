"""ASGI entry point, and the recommended way to serve perfgate:

    gunicorn -k uvicorn_worker.UvicornWorker --workers 2 perfgate_site.asgi

A long-poll (``status?wait=N``) then waits on the worker's event loop instead of holding a thread
(docs/architecture.md, "Long-polls").
"""

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "perfgate_site.settings")
# Each request's database work runs in a thread of its own under ASGI: PostgreSQL connections come
# from a pool per process, not one kept per thread (settings, DATABASE_POOL; set it to false to opt out).
os.environ.setdefault("DATABASE_POOL", "true")
application = get_asgi_application()
if settings.DEBUG:
    # As runserver does under WSGI: in development the admin's static files are served by Django;
    # in production by the proxy in front, from STATIC_ROOT (`manage.py collectstatic`).
    application = ASGIStaticFilesHandler(application)
