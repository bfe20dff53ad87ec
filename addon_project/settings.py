"""Settings, all from the environment (12-factor). Every variable is in .env.example and the README."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path

import django_stubs_ext
import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

# A .env file is optional; real environment variables override it.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
env = environ.Env()
# `NAME=` (as in a copied .env.example) means "use the default", never "the empty string": an empty
# SECRET_KEY must not beat the development default, an empty number must not be a parse error.
env.ENVIRON = {name: value for name, value in os.environ.items() if value.strip()}


def env_strict_bool(name: str, *, default: bool) -> bool:
    """Read a flag whose `False` side is the safe one only from an explicit spelling.

    django-environ reads any unknown string as False; for flags where a typo must not silently
    weaken security or change behaviour, refuse anything but the usual spellings.
    """
    raw = env.str(name, default="").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_required(name: str, *, debug_default: str) -> str:
    """A secret that production must set; development gets a harmless default."""
    if DEBUG:
        return str(env.str(name, default=debug_default))
    value = str(env.str(name, default=""))
    if not value:
        raise ImproperlyConfigured(
            f"{name} must be set (it has a default only when DEBUG=True)"
        )
    return value


def env_list(name: str, *, default: list[str]) -> list[str]:
    """A comma list without blank items (`NAME=` in a .env file means "empty", not `[""]`)."""
    return [item.strip() for item in env.list(name, default=default) if item.strip()]


DEBUG = env_strict_bool("DEBUG", default=False)

SECRET_KEY = env_required("SECRET_KEY", debug_default="dev-only-insecure-secret-key")

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else []
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "eshops",
    "oauth",
    "shoptet_api",
    "sync",
]

MIDDLEWARE = [
    # First: every answer carries X-Request-ID (the HTTPS redirect and static files too) and every
    # log line of the request its id (addon_project/logging_context.py).
    "addon_project.logging_context.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Right after SecurityMiddleware (its HTTPS redirect and headers apply to static files too).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout signalled during authentication into a response.
    "axes.middleware.AxesMiddleware",
]

# Admin login lockout (django-axes). AxesStandaloneBackend first: it refuses a locked-out username or
# address before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "addon_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

WSGI_APPLICATION = "addon_project.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions plus a busy timeout let concurrent writers queue instead of failing
    # with "database is locked"; tests use a file database so threads do not share a connection.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20}
    )
    # One file per test process: parallel test runs on one machine must not share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(
            Path(tempfile.gettempdir()) / f"shoptet-addon-test-{os.getpid()}.sqlite3"
        )
    }
else:
    # Persistent connections (one per web thread / worker process): a new PostgreSQL connection
    # per request costs more than a webhook's whole work (bench/ingest.py). `?conn_max_age=0` in
    # DATABASE_URL turns it off; the health check replaces a connection the server dropped.
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # A test database per test process: runs sharing one PostgreSQL must not drop each other's.
    DATABASES["default"]["TEST"] = {
        "NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"
    }
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# django-axes: after AXES_FAILURE_LIMIT failed logins for one username, or from one address, further
# attempts are refused for AXES_COOLOFF_HOURS (an unknown username locks the same way, so the answer
# tells nothing about which accounts exist). Operators unlock in the admin (Axes > Access attempts) or
# with `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS`.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "addon_project.client_ip.client_ip"
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
# Axes would log every attempt with the username at INFO; failures are logged by us, once.
AXES_VERBOSE = False

LANGUAGE_CODE = "en"
# English pages (the operators' admin) show times as 2026-12-01 04:15:09 UTC.
FORMAT_MODULE_PATH = ["addon_project.formats"]
# The settings pages speak the Shoptet admin's language (#LANGUAGE#).
LANGUAGES = [
    ("cs", "Čeština"),
    ("sk", "Slovenčina"),
    ("hu", "Magyar"),
    ("en", "English"),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Development and tests serve the apps' static directories as they are (WhiteNoise's finders);
# production runs `manage.py collectstatic` first and serves STATIC_ROOT with compressed copies and
# content-hashed names (cached for a year by browsers and proxies). A missing collectstatic there is
# loud: pages that name a static file fail instead of silently serving unhashed files.
STATIC_FILES_UNCOLLECTED = DEBUG or env_strict_bool(
    "STATIC_FILES_UNCOLLECTED", default=False
)
STATIC_ROOT = None if STATIC_FILES_UNCOLLECTED else BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = STATIC_FILES_UNCOLLECTED
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if STATIC_FILES_UNCOLLECTED
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Security: production defaults are strict; DEBUG relaxes only what a laptop needs.
# Behind a TLS-terminating proxy, X-Forwarded-Proto tells Django the request was https.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_strict_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Load balancers probe health over plain http, and so may a scraper on the private network
# (a redirect protects no metrics token: the client has sent it by the time it is redirected).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = 0 if DEBUG else env.int("SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", default=[])

# Redis: Celery broker, token store, locks, cache.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "shoptet-cache",
    }
}

# Secrets at rest: comma list of Fernet keys, newest first (the first encrypts, all decrypt).
FIELD_ENCRYPTION_KEYS = env_list(
    "FIELD_ENCRYPTION_KEYS",
    # A fixed, public development key: never valid outside DEBUG (env_required refuses it empty).
    default=["ZGV2LW9ubHktZmllbGQtZW5jcnlwdGlvbi1rZXktMDA="] if DEBUG else [],
)
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "FIELD_ENCRYPTION_KEYS must be set (comma list of Fernet keys, newest first); "
        'make one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
    )

# Shoptet. Client id/secret, OAuth URL and redirect URI come from "Access to API" in the partner
# admin; they are required for installs (the install view refuses clearly without them).
SHOPTET_CLIENT_ID = env.str("SHOPTET_CLIENT_ID", default="")
SHOPTET_CLIENT_SECRET = env.str("SHOPTET_CLIENT_SECRET", default="")
SHOPTET_OAUTH_URL = env.str("SHOPTET_OAUTH_URL", default="")
SHOPTET_REDIRECT_URI = env.str("SHOPTET_REDIRECT_URI", default="")
SHOPTET_API_URL = env.str("SHOPTET_API_URL", default="https://api.myshoptet.com")
# Plain http:// Shoptet URLs only when asked for explicitly (the emulator on loopback).
SHOPTET_ALLOW_HTTP = env_strict_bool("SHOPTET_ALLOW_HTTP", default=False)
# The emulator (development, demos, tests) speaks plain http, so its `manage.py shoptet_emulator`
# exists only where http:// Shoptet URLs are allowed: a production deploy never loads it.
if SHOPTET_ALLOW_HTTP:
    INSTALLED_APPS.append("shoptet_emulator")

for _name in ("SHOPTET_OAUTH_URL", "SHOPTET_API_URL"):
    _url = globals()[_name]
    if (
        _url
        and not _url.startswith("https://")
        and not (SHOPTET_ALLOW_HTTP and _url.startswith("http://"))
    ):
        raise ImproperlyConfigured(
            f"{_name} must be an https:// URL (set SHOPTET_ALLOW_HTTP=true to use the http:// emulator)"
        )
if SHOPTET_OAUTH_URL and not SHOPTET_OAUTH_URL.endswith("/"):
    # `token` and `getAccessToken` hang off this base; a missing slash would replace its last segment.
    SHOPTET_OAUTH_URL += "/"

# Outbound HTTP timeouts (seconds). The install exchange must fit Shoptet's 5 s budget for the
# whole callback, so its read timeout is short and there is no retry.
SHOPTET_CONNECT_TIMEOUT = env.float("SHOPTET_CONNECT_TIMEOUT", default=2.0)
SHOPTET_READ_TIMEOUT = env.float("SHOPTET_READ_TIMEOUT", default=30.0)
SHOPTET_INSTALL_READ_TIMEOUT = env.float("SHOPTET_INSTALL_READ_TIMEOUT", default=3.0)

# API access tokens (shoptet_api/tokens/). Renew when a token has less than
# min(MARGIN, MARGIN_FRACTION * expires_in) seconds left; at most TOKEN_CAP valid tokens per e-shop
# (Shoptet allows 5; the default keeps one spare for people debugging by hand).
SHOPTET_REDIS_PREFIX = env.str("SHOPTET_REDIS_PREFIX", default="shoptet")
SHOPTET_TOKEN_RENEW_MARGIN = env.float("SHOPTET_TOKEN_RENEW_MARGIN", default=60.0)
SHOPTET_TOKEN_RENEW_MARGIN_FRACTION = env.float(
    "SHOPTET_TOKEN_RENEW_MARGIN_FRACTION", default=0.04
)
SHOPTET_TOKEN_CAP = env.int("SHOPTET_TOKEN_CAP", default=4)
if not 1 <= SHOPTET_TOKEN_CAP <= 5:
    raise ImproperlyConfigured(
        "SHOPTET_TOKEN_CAP must be between 1 and 5 (Shoptet allows 5 valid tokens)"
    )
SHOPTET_TOKEN_DEFAULT_LIFETIME = env.float(
    "SHOPTET_TOKEN_DEFAULT_LIFETIME", default=1800.0
)
# getAccessToken must answer well inside the renewal lock's lifetime.
SHOPTET_TOKEN_READ_TIMEOUT = env.float("SHOPTET_TOKEN_READ_TIMEOUT", default=10.0)
SHOPTET_TOKEN_LOCK_TTL = env.float("SHOPTET_TOKEN_LOCK_TTL", default=15.0)
SHOPTET_TOKEN_WAIT_TIMEOUT = env.float("SHOPTET_TOKEN_WAIT_TIMEOUT", default=15.0)
# Proactive renewal (beat): every SWEEP_INTERVAL seconds, renew tokens of e-shops that used the API
# within ACTIVE_WINDOW seconds and whose token would otherwise need renewing before the next sweep.
SHOPTET_TOKEN_SWEEP_INTERVAL = env.float("SHOPTET_TOKEN_SWEEP_INTERVAL", default=60.0)
SHOPTET_TOKEN_ACTIVE_WINDOW = env.float("SHOPTET_TOKEN_ACTIVE_WINDOW", default=900.0)
# Proactive renewals happen up to this many seconds before the margin, at random, to spread load.
SHOPTET_TOKEN_RENEW_JITTER = env.float("SHOPTET_TOKEN_RENEW_JITTER", default=20.0)
# The sweep queues shops due together as one task of at most RENEW_CHUNK shops; a worker process
# renews a chunk RENEW_THREADS at a time (renewals wait on Shoptet, not on CPU). A chunk of a
# multiple of RENEW_THREADS keeps every thread busy to its end.
SHOPTET_TOKEN_RENEW_CHUNK = env.int("SHOPTET_TOKEN_RENEW_CHUNK", default=128)
SHOPTET_TOKEN_RENEW_THREADS = env.int("SHOPTET_TOKEN_RENEW_THREADS", default=16)
if SHOPTET_TOKEN_RENEW_CHUNK < 1 or SHOPTET_TOKEN_RENEW_THREADS < 1:
    raise ImproperlyConfigured(
        "SHOPTET_TOKEN_RENEW_CHUNK and SHOPTET_TOKEN_RENEW_THREADS must be at least 1"
    )

# API client (shoptet_api/client.py).
SHOPTET_MAX_IN_FLIGHT = env.int("SHOPTET_MAX_IN_FLIGHT", default=3)
SHOPTET_RETRY_MAX_ATTEMPTS = env.int("SHOPTET_RETRY_MAX_ATTEMPTS", default=4)
SHOPTET_RETRY_MAX_TIME = env.float("SHOPTET_RETRY_MAX_TIME", default=60.0)
SHOPTET_RETRY_AFTER_CAP = env.float("SHOPTET_RETRY_AFTER_CAP", default=30.0)
SHOPTET_BUCKET_SLOWDOWN_AT = env.float("SHOPTET_BUCKET_SLOWDOWN_AT", default=0.75)
SHOPTET_BUCKET_LEAK_PER_SECOND = env.float(
    "SHOPTET_BUCKET_LEAK_PER_SECOND", default=10.0
)

# Webhooks (shoptet_api/webhooks.py, shoptet_api/provisioning.py).
# Our public receiver URL as Shoptet must call it; empty = do not register webhooks.
SHOPTET_WEBHOOK_URL = env.str("SHOPTET_WEBHOOK_URL", default="")
# Events registered for every installation (addon:* lifecycle events are configured in the partner
# admin instead and cannot be registered through the API).
SHOPTET_WEBHOOK_EVENTS = env_list(
    "SHOPTET_WEBHOOK_EVENTS", default=["eshop:projectDomain"]
)
SHOPTET_WEBHOOK_MAX_BODY = env.int("SHOPTET_WEBHOOK_MAX_BODY", default=65_536)
# After renew-signature-key, deliveries signed with the previous key are accepted this long
# (Shoptet retries failed deliveries twice, ~15 minutes apart).
SHOPTET_WEBHOOK_KEY_ROTATION_WINDOW = env.float(
    "SHOPTET_WEBHOOK_KEY_ROTATION_WINDOW", default=3600.0
)
# addon:* events may not be signed with the installation key (reference §4.3, UNCERTAIN):
# "signed" requires a valid signature; "signed_or_network" (default) accepts an unsigned one only
# from SHOPTET_WEBHOOK_ALLOWED_NETWORKS. Never "accept anything".
SHOPTET_LIFECYCLE_WEBHOOK_POLICY = env.str(
    "SHOPTET_LIFECYCLE_WEBHOOK_POLICY", default="signed_or_network"
)
if SHOPTET_LIFECYCLE_WEBHOOK_POLICY not in {"signed", "signed_or_network"}:
    raise ImproperlyConfigured(
        "SHOPTET_LIFECYCLE_WEBHOOK_POLICY must be 'signed' or 'signed_or_network'"
    )
SHOPTET_WEBHOOK_ALLOWED_NETWORKS = [
    ipaddress.ip_network(net, strict=False)
    for net in env_list(
        "SHOPTET_WEBHOOK_ALLOWED_NETWORKS", default=["185.184.254.0/24"]
    )
]
# Failed handlers retry with backoff up to this many attempts, then wait in the dead-letter state.
SHOPTET_WEBHOOK_MAX_ATTEMPTS = env.int("SHOPTET_WEBHOOK_MAX_ATTEMPTS", default=5)
# The hourly reconciliation checks each active e-shop's registrations once per this many hours
# (a slice of the tenants per run): an API call per tenant per hour would grow with all tenants.
SHOPTET_WEBHOOK_RECONCILE_HOURS = env.int("SHOPTET_WEBHOOK_RECONCILE_HOURS", default=24)
if SHOPTET_WEBHOOK_RECONCILE_HOURS < 1:
    raise ImproperlyConfigured("SHOPTET_WEBHOOK_RECONCILE_HOURS must be at least 1")
# Data of uninstalled e-shops is deleted this many days after the uninstall.
SHOPTET_UNINSTALLED_RETENTION_DAYS = env.int(
    "SHOPTET_UNINSTALLED_RETENTION_DAYS", default=30
)

# Settings pages inside the Shoptet admin (eshops/views.py).
# The signed, cookie-less session lasts this many seconds.
SHOPTET_SETTINGS_SESSION_MAX_AGE = env.int(
    "SHOPTET_SETTINGS_SESSION_MAX_AGE", default=1800
)
# redirect_uri sent with the #OAUTH_CODE# exchange; empty = this site's /settings/ URL.
SHOPTET_SETTINGS_REDIRECT_URI = env.str("SHOPTET_SETTINGS_REDIRECT_URI", default="")
# Origins allowed to frame the settings pages (CSP frame-ancestors), besides each e-shop's own origin.
SHOPTET_ADMIN_FRAME_ANCESTORS = env_list(
    "SHOPTET_ADMIN_FRAME_ANCESTORS", default=["https://*.myshoptet.com"]
)

# Optional allow-list of networks the install callback may come from (off when empty). Shoptet's
# published ranges: 78.24.15.64/26, 93.185.110.117/28 (older page), 185.184.254.0/24 (webhooks).
SHOPTET_INSTALL_ALLOWED_NETWORKS = [
    ipaddress.ip_network(net, strict=False)
    for net in env_list("SHOPTET_INSTALL_ALLOWED_NETWORKS", default=[])
]
# How many reverse proxies in front of us append to X-Forwarded-For. 0 = use REMOTE_ADDR and
# ignore the header entirely (a client can write anything into it).
NUM_PROXIES = env.int("NUM_PROXIES", default=0)


def _rate(name: str, value: str) -> tuple[int, int]:
    """`"20/60"` → (20, 60): at most 20 requests per 60-second window."""
    count, _, seconds = value.partition("/")
    if not (count.isdigit() and seconds.isdigit() and int(count) and int(seconds)):
        raise ImproperlyConfigured(
            f"{name} must look like COUNT/SECONDS with both above 0, e.g. 20/60"
        )
    return int(count), int(seconds)


# Throttles on the URLs that make us call Shoptet's OAuth servers with our client credentials
# (addon_project/throttle.py): per source address (IPv6 per /64) and per e-shop, shared by all
# processes in Redis, answered 429 with Retry-After before any outbound call. A real install is
# one call per shop (Shoptet's few servers send all of them); a merchant opens the settings a few
# times a minute.
THROTTLE_INSTALL_PER_ADDRESS = _rate(
    "THROTTLE_INSTALL_PER_ADDRESS",
    env.str("THROTTLE_INSTALL_PER_ADDRESS", default="20/60"),
)
THROTTLE_SETTINGS_PER_ADDRESS = _rate(
    "THROTTLE_SETTINGS_PER_ADDRESS",
    env.str("THROTTLE_SETTINGS_PER_ADDRESS", default="20/60"),
)
THROTTLE_SETTINGS_PER_ESHOP = _rate(
    "THROTTLE_SETTINGS_PER_ESHOP",
    env.str("THROTTLE_SETTINGS_PER_ESHOP", default="10/60"),
)

# Metrics (`/metrics`, Prometheus text): served for the bearer token or to an allowed network; with
# neither set it answers 404. PROMETHEUS_MULTIPROC_DIR (read by prometheus-client itself) makes
# the values of all gunicorn and Celery processes add up.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters long")
METRICS_ALLOWED_NETWORKS = [
    ipaddress.ip_network(net, strict=False)
    for net in env_list("METRICS_ALLOWED_NETWORKS", default=[])
]

# Celery
CELERY_BROKER_URL = REDIS_URL
# Instances sharing one Redis database need a queue each (else one's worker runs the other's tasks).
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing happens on request paths (after commit): never block a request for long on a broker
# outage. A missed enqueue is picked up by the periodic sweep.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 3}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
}
CELERY_TASK_ALWAYS_EAGER = env_strict_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # The operator dashboard shows this heartbeat's age (eshops/tasks.py).
    "beat-heartbeat": {"task": "eshops.beat_heartbeat", "schedule": 30.0},
    "renew-expiring-tokens": {
        "task": "shoptet_api.renew_expiring_tokens",
        "schedule": SHOPTET_TOKEN_SWEEP_INTERVAL,
    },
    "complete-pending-installs": {
        "task": "shoptet_api.complete_pending_installs",
        "schedule": 300.0,
    },
    "redeliver-webhooks": {
        "task": "shoptet_api.redeliver_webhooks",
        "schedule": 120.0,
    },
    # On the clock hour (not every 3600 s from beat's start): the task takes the hour's slice of
    # tenants, and a drifting interval would skip or repeat slices.
    "reconcile-webhooks": {
        "task": "shoptet_api.reconcile_webhooks",
        "schedule": crontab(minute=7),
    },
    "purge-uninstalled": {
        "task": "shoptet_api.purge_uninstalled",
        "schedule": 86_400.0,
    },
    # Background sync (sync/tasks.py): start due tenants, and find snapshot jobs that never report.
    "sync-schedule-due": {"task": "sync.schedule_due", "schedule": 60.0},
    "sync-sweep-jobs": {"task": "sync.sweep_jobs", "schedule": 600.0},
}

# Background sync of orders and products (sync/). Constants, not environment variables: tuning
# them is a code review, like the beat schedule. With SYNC_ENABLED and SHOPTET_WEBHOOK_URL set,
# SYNC_WEBHOOK_EVENTS are registered with SHOPTET_WEBHOOK_EVENTS (job:finished makes snapshots
# possible; order:* refresh single orders).
SYNC_ENABLED = True
SYNC_WEBHOOK_EVENTS = ["job:finished", "order:create", "order:update", "order:delete"]
# One Celery slice works this long, then re-queues at the back.
SYNC_SLICE_SECONDS = 20.0
SYNC_SLICE_PAGES = 5  # … or this many pages, whichever comes first
# A killed run's lock expires after this (renewed every third of it).
SYNC_LEASE_SECONDS = 30.0
SYNC_CHANGES_OVERLAP_SECONDS = 5.0  # the next /changes `from` reaches back this far
# Shoptet's guaranteed /changes history; older checkpoints copy in full.
SYNC_CHANGES_HISTORY_DAYS = 30
# Job-detail polls (Shoptet refuses the 11th).
SYNC_JOB_POLL_DELAYS = [60.0, 180.0, 600.0, 1800.0, 3600.0]
# Shoptet fails a silent job after 3 h; the sweeper gives up then.
SYNC_JOB_TIMEOUT_SECONDS = 3 * 3600 + 600
# Snapshot result size cap (compressed bytes on the wire).
SYNC_DOWNLOAD_MAX_BYTES = 4 * 1024**3
SYNC_DOWNLOAD_DEADLINE_SECONDS = 1800.0
# One JSONL item larger than this is recorded as an item error.
SYNC_MAX_LINE_BYTES = 8 * 1024**2
# Hosts a snapshot result may come from besides the shop's own (subdomains included).
SYNC_RESULT_HOSTS = ["myshoptet.com", "shoptet.cz"]

# Logs: one line per event on stderr. LOG_FORMAT=json (the production default) writes one JSON object
# per line; plain (the DEBUG default) is for people. Both carry our request id, the e-shop id, the
# task and Shoptet's requestId where known (addon_project/logging_context.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="").strip().lower() or (
    "plain" if DEBUG else "json"
)
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(
        f"LOG_FORMAT must be 'json' or 'plain', not {LOG_FORMAT!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "addon_project.logging_context.PlainFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "addon_project.logging_context.JsonFormatter"},
    },
    "filters": {
        "log_context": {"()": "addon_project.logging_context.ContextFilter"},
        "redact_query_secrets": {"()": "addon_project.log_filters.RedactQuerySecrets"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["log_context", "redact_query_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Listing a logger here removes the handlers it had, so each line is printed once, by
        # the root handler: Django's defaults give `django` (in DEBUG) and `django.server` their
        # own console handlers, gunicorn gives its loggers its own (and stops them propagating).
        "django": {"level": "INFO", "propagate": True},
        # runserver's access log prints full URLs: the root handler's filter redacts install codes.
        "django.server": {"level": "INFO", "propagate": True},
        "gunicorn.error": {"level": "INFO", "propagate": True},
        "gunicorn.access": {"level": "INFO", "propagate": True},
        # urllib3 logs full URLs at DEBUG; keep it quiet so a query string never reaches a log.
        "urllib3": {"level": "WARNING"},
    },
}
