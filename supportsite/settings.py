"""Settings for the support site: one module, every knob read from the environment.

Local use needs no variable at all (SQLite, in-memory channel layer, the builtin model).
Production sets ``DJANGO_DEBUG=0`` and must then give ``DJANGO_SECRET_KEY``.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value, or ``default`` when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value if value else default


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env(name)
    return int(value) if value is not None else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = env(name)
    return [item.strip() for item in value.split(",") if item.strip()] if value else default


# SECURITY
DEBUG = env_bool("DJANGO_DEBUG", True)
_DEV_SECRET_KEY = "django-insecure-local-development-only"  # noqa: S105 - refused below outside DEBUG
SECRET_KEY = env("DJANGO_SECRET_KEY", _DEV_SECRET_KEY if DEBUG else None)
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Proxies (IPs or CIDRs) whose X-Forwarded-For is believed (supportsite.proxies); nobody else's is.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
# Keys customers type are long random tokens: a keyed HMAC, not a password hasher, stores them.
API_KEY_SECRET = env("API_KEY_SECRET", SECRET_KEY)

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
SESSION_ENGINE = "supportsite.sessions"  # Django's database sessions, no query before a new key
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# No inline script anywhere, nothing from another origin; the chat's socket is on this host.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# APPLICATIONS
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "axes",
    "tickets",
    "chat",
    "chat.evaluation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns an admin-login lockout into its 429 page
]

ROOT_URLCONF = "supportsite.urls"
ASGI_APPLICATION = "supportsite.asgi.application"

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

# DATABASE
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        # Kept connections in production (opening one costs more than a turn's queries); checked before
        # each use below. Local runs and tests close them after each request or sync step.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0 if DEBUG else 600),
        # A connection the database dropped (a restart, a failover) is replaced, not reused and failed on.
        conn_health_checks=env_bool("DATABASE_CONN_HEALTH_CHECKS", True),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several sockets write at once: wait for the lock instead of failing, and use WAL. A row rewritten to
    # mask a secret leaves no copy in a free page (secure_delete).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;",
            "transaction_mode": "IMMEDIATE",
        }
    )
# Crossings from async code to the database that run at once, per process (chat.db): on PostgreSQL a
# crossing mostly waits for the server, so several overlap, each with its own kept connection; SQLite
# takes one writer at a time.
DATABASE_THREADS = env_int(
    "DATABASE_THREADS", 1 if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else 4
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# CHANNELS
_REDIS_URL = env("REDIS_URL")
# Connections per process and pool (the channel layer's; the turn leases'): past it a command waits.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 1000)
if _REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, exactly the layer's 5 s blocking pop:
            # an idle socket's receive then fails and daphne closes it with 1011. Read for longer.
            # redis-py 8 caps a pool at 100 connections and raises MaxConnectionsError past it (inside
            # group_send, failing turns at 100 customers): size it for a process's concurrent sends.
            "CONFIG": {
                "hosts": [
                    {
                        "address": _REDIS_URL,
                        "socket_timeout": 30,
                        "socket_connect_timeout": 5,
                        "max_connections": REDIS_MAX_CONNECTIONS,
                    }
                ],
                "capacity": 1500,
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1500}}}

# CACHE: the flood limits' counters, shared by every server process (LocMem would be per process).
if _REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _REDIS_URL}}
else:
    # The table is made by a migration (chat 0004), so `migrate` is the only set-up step.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "chat_cache"}}

# AUTH
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# Staff login brute force (django-axes, supportsite.admin_login): failures per username AND client address.
AUTHENTICATION_BACKENDS = ["supportsite.admin_login.AdminLoginGuard", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_MAX_FAILURES", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("ADMIN_LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "supportsite.proxies.request_client_address"
AXES_RESET_ON_SUCCESS = True

# I18N
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# STATIC FILES
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# LOGGING
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "chat": {"handlers": ["console"], "level": env("CHAT_LOG_LEVEL", "INFO")},
        "tickets": {"handlers": ["console"], "level": env("CHAT_LOG_LEVEL", "INFO")},
        # The openai client's HTTP library logs a line per model request at INFO; the chat logs what matters.
        "httpx": {"level": env("HTTPX_LOG_LEVEL", "WARNING")},
        "httpx2": {"level": env("HTTPX_LOG_LEVEL", "WARNING")},
    },
}

# THE MODEL: which endpoint, and how long a customer may wait for it
OPENAI_BASE_URL = env("OPENAI_BASE_URL")
OPENAI_API_KEY = env("OPENAI_API_KEY")
CHAT_BACKEND = env("CHAT_BACKEND", "openai" if (OPENAI_API_KEY or OPENAI_BASE_URL) else "builtin")
if CHAT_BACKEND not in {"openai", "builtin"}:
    raise ImproperlyConfigured(f"CHAT_BACKEND must be 'openai' or 'builtin', not {CHAT_BACKEND!r}.")
CHAT_MODEL = env("CHAT_MODEL", "gpt-4o-mini" if CHAT_BACKEND == "openai" else "builtin-support-1")
CHAT_TIMEOUT_SECONDS = float(env("CHAT_TIMEOUT_SECONDS", "30"))
CHAT_MAX_RETRIES = env_int("CHAT_MAX_RETRIES", 2)
# However slow the endpoint, the customer hears back within this many seconds.
CHAT_REPLY_TIMEOUT_SECONDS = float(env("CHAT_REPLY_TIMEOUT_SECONDS", "90"))
CHAT_STREAM = env_bool("CHAT_STREAM", True)
# The builtin model pauses this long between words, so its replies stream in like a hosted model's.
CHAT_BUILTIN_DELAY_MS = env_int("CHAT_BUILTIN_DELAY_MS", 25)

# Streamed pieces of a reply are sent to the page at most once per this many milliseconds (coalesced).
CHAT_DELTA_COALESCE_MS = env_int("CHAT_DELTA_COALESCE_MS", 50)
# Call the model for a conversation's next turn while its first step is stored (chat.earlycall).
CHAT_EARLY_MODEL_CALL = env_bool("CHAT_EARLY_MODEL_CALL", True)

# THE AGENT'S BOUNDS: what one customer message may cost
CHAT_MAX_MODEL_CALLS = env_int("CHAT_MAX_MODEL_CALLS", 8)
# Tool calls run per model response; further calls are answered with an error and never run.
CHAT_MAX_TOOL_CALLS_PER_REPLY = env_int("CHAT_MAX_TOOL_CALLS_PER_REPLY", 8)
# A tool result longer than this is cut, with a note saying so.
CHAT_MAX_TOOL_RESULT_CHARS = env_int("CHAT_MAX_TOOL_RESULT_CHARS", 4000)
# What the model receives: the system prompt and the newest messages within this estimate (chars / 4).
CHAT_HISTORY_TOKEN_BUDGET = env_int("CHAT_HISTORY_TOKEN_BUDGET", 12000)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 4000)
# One model reply streams and is stored up to this many characters; a longer one is cut with a note.
CHAT_MAX_REPLY_CHARS = env_int("CHAT_MAX_REPLY_CHARS", 20000)
# A conversation takes at most this many customer messages; then the customer is asked to start anew.
CHAT_MAX_CUSTOMER_MESSAGES = env_int("CHAT_MAX_CUSTOMER_MESSAGES", 100)

# TOOLS: the functions the model may call, as dotted paths (the chat app knows no tool by name);
# ``manage.py check`` fails on a path that does not import or a function the toolbox cannot describe.
# A deployer adds their own without editing this file: CHAT_EXTRA_TOOLS, comma-separated dotted paths.
CHAT_TOOLS = [
    "tickets.tools.verify_user",
    "tickets.tools.get_ticket_status",
    "tickets.tools.list_my_tickets",
    "tickets.tools.create_ticket",
    "tickets.tools.add_ticket_comment",
    "chat.handoff.request_human",
    *env_list("CHAT_EXTRA_TOOLS", []),
]
# A tool that changes data runs only on the customer's "yes" (chat.toolbox.changes_data); unanswered for
# this long, it is not run and the model is told so. The turn waits (holding the conversation) meanwhile.
CHAT_CONFIRM_TIMEOUT_SECONDS = float(env("CHAT_CONFIRM_TIMEOUT_SECONDS", "120"))
# Finds secrets of the verified customer in free text (``(customer_id) -> (text -> secrets)``), so a key
# typed again after verification, or echoed by the model, is masked too.
CHAT_SECRET_FINDER = "tickets.services.apikey_finder"  # noqa: S105 - a dotted path, not a secret

# VERIFICATION: failed verify_user calls within VERIFY_LOCKOUT_SECONDS that pause verification (per
# username from one client address, per conversation, and per client address): failures elsewhere never
# lock a customer out.
VERIFY_MAX_FAILURES = env_int("VERIFY_MAX_FAILURES", 5)
VERIFY_MAX_FAILURES_PER_ADDRESS = env_int("VERIFY_MAX_FAILURES_PER_ADDRESS", 20)
VERIFY_LOCKOUT_SECONDS = env_int("VERIFY_LOCKOUT_SECONDS", 15 * 60)
# A verification holds this long (and only while the customer is active and the key not revoked).
VERIFY_TTL_SECONDS = env_int("VERIFY_TTL_SECONDS", 60 * 60)

# TICKETS THE AGENT WRITES: create_ticket calls per customer in 24 hours (a looping model cannot flood the
# desk), and the most tickets list_my_tickets returns (newest first).
TICKETS_CREATED_PER_DAY = env_int("TICKETS_CREATED_PER_DAY", 5)
TICKETS_LIST_MAX = env_int("TICKETS_LIST_MAX", 20)

# FLOOD LIMITS: per browser session and per client address, within a fixed minute / hour. Over a limit
# the socket gets an ``error`` frame (``rate_limited`` / ``too_many_connections``) and no model call is made.
CHAT_MESSAGES_PER_MINUTE = env_int("CHAT_MESSAGES_PER_MINUTE", 20)
CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS = env_int("CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS", 600)
CHAT_SOCKETS_PER_SESSION = env_int("CHAT_SOCKETS_PER_SESSION", 10)
CHAT_SOCKETS_PER_ADDRESS = env_int("CHAT_SOCKETS_PER_ADDRESS", 200)
CHAT_CONVERSATIONS_PER_HOUR = env_int("CHAT_CONVERSATIONS_PER_HOUR", 30)
CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS = env_int("CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS", 500)
# Where the counts live (chat.counters): Redis when set, else the database's own counter tables.
CHAT_LIMITS_REDIS_URL = _REDIS_URL

# TURNS: one at a time per conversation; across server processes through a lease in this Redis.
CHAT_TURN_LEASE_URL = env("CHAT_TURN_LEASE_URL", _REDIS_URL)

# TRANSCRIPTS
# purge_transcripts without --older-than deletes conversations idle this many days; unset keeps them.
TRANSCRIPT_RETENTION_DAYS = env_int("TRANSCRIPT_RETENTION_DAYS", 0) or None

# EVALUATION
# ``manage.py evaluate``: the scenario suite, and the model that plays simulated customers (any
# OpenAI-compatible endpoint; without EVAL_USER_MODEL, scenarios with a simulated customer are skipped).
EVAL_SUITE = env("EVAL_SUITE", str(BASE_DIR / "evals"))
EVAL_USER_MODEL = env("EVAL_USER_MODEL")
EVAL_USER_BASE_URL = env("EVAL_USER_BASE_URL")
EVAL_USER_API_KEY = env("EVAL_USER_API_KEY")

# THE WIDGET AND SIGNED-IN CUSTOMERS (static/chat/widget.js, chat.widget, chat.identity)
# Origins (scheme://host[:port]) of the company's pages allowed to frame the chat (/embed/ only: every
# other page stays unframeable). When set, the session and CSRF cookies are sent inside that third-party
# frame: SameSite=None, which browsers accept only with Secure (HTTPS; http://localhost and 127.0.0.1
# count as secure for Chromium and Firefox, so the local demo works).
CHAT_WIDGET_ORIGINS = env_list("CHAT_WIDGET_ORIGINS", [])
if CHAT_WIDGET_ORIGINS:
    SESSION_COOKIE_SAMESITE = "None"
    CSRF_COOKIE_SAMESITE = "None"
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # ... and Partitioned (CHIPS): Chromium keeps no other third-party cookie.
    MIDDLEWARE.insert(1, "chat.widget.PartitionedCookiesMiddleware")
# The secret shared with the company's website: it signs a signed-in customer's username (HMAC-SHA256,
# hex) and the chat verifies them without a key. Unset: nobody is ever signed in that way.
CHAT_IDENTITY_SECRET = env("CHAT_IDENTITY_SECRET")
# Load balancers ask /healthz over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# While the model endpoint is unreachable, each server process asks it again this often.
CHAT_MODEL_PROBE_SECONDS = float(env("CHAT_MODEL_PROBE_SECONDS", "15"))

# HANDING OVER TO A PERSON (chat.handoff)
# After this many fallback replies or model errors in a row the conversation is queued for a person; 0: never.
HANDOFF_AFTER_FAILURES = env_int("HANDOFF_AFTER_FAILURES", 0)
# When support staff answer, e.g. "mon-fri 09:00-17:00" (TIME_ZONE); empty: any time. Outside them a
# customer asking for a person is told so, and stays in the queue.
HANDOFF_SUPPORT_HOURS = env("HANDOFF_SUPPORT_HOURS", "")
# The dashboard counts conversations that waited longer than this for a person's first reply.
HANDOFF_WAIT_TARGET_SECONDS = env_int("HANDOFF_WAIT_TARGET_SECONDS", 120)
