"""Settings for the support site: one module, every knob read from the environment.

Local use needs no variable at all (SQLite, in-memory channel layer, the builtin model).
Production sets ``DJANGO_DEBUG=0`` and must then give ``DJANGO_SECRET_KEY``.
"""

import os
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
    "tickets",
    "chat",
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
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        # A connection the database dropped (a restart, a failover) is replaced, not reused and failed on.
        conn_health_checks=env_bool("DATABASE_CONN_HEALTH_CHECKS", True),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several sockets write at once: wait for the lock instead of failing, and use WAL.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
    # A file, not memory, so that a server process started by the browser tests sees the test data.
    # One per test process, so that two runs in the same checkout never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}
if env("DATABASE_TEST_NAME"):
    # Lets two test runs share one PostgreSQL server without sharing the test database.
    DATABASES["default"]["TEST"] = {"NAME": env("DATABASE_TEST_NAME")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# CHANNELS
_REDIS_URL = env("REDIS_URL")
if _REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, exactly the layer's 5 s blocking pop:
            # an idle socket's receive then fails and daphne closes it with 1011. Read for longer.
            "CONFIG": {
                "hosts": [{"address": _REDIS_URL, "socket_timeout": 30, "socket_connect_timeout": 5}],
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
    },
}

# THE AGENT
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
CHAT_MAX_MODEL_CALLS = env_int("CHAT_MAX_MODEL_CALLS", 8)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 4000)
# The functions the model may call, as dotted paths: the chat app knows no tool by name.
CHAT_TOOLS = [
    "tickets.tools.verify_user",
    "tickets.tools.get_ticket_status",
]
# Failed verify_user calls within VERIFY_LOCKOUT_SECONDS that pause verification (per username or
# conversation, and per client address).
VERIFY_MAX_FAILURES = env_int("VERIFY_MAX_FAILURES", 5)
VERIFY_MAX_FAILURES_PER_ADDRESS = env_int("VERIFY_MAX_FAILURES_PER_ADDRESS", 20)
VERIFY_LOCKOUT_SECONDS = env_int("VERIFY_LOCKOUT_SECONDS", 15 * 60)

# LIMITS
# Flooding: per browser session and per client address, within a sliding minute / hour. Over a limit the
# socket gets an ``error`` frame (``rate_limited`` / ``too_many_connections``) and no model call is made.
CHAT_MESSAGES_PER_MINUTE = env_int("CHAT_MESSAGES_PER_MINUTE", 20)
CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS = env_int("CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS", 600)
CHAT_SOCKETS_PER_SESSION = env_int("CHAT_SOCKETS_PER_SESSION", 10)
CHAT_SOCKETS_PER_ADDRESS = env_int("CHAT_SOCKETS_PER_ADDRESS", 200)
CHAT_CONVERSATIONS_PER_HOUR = env_int("CHAT_CONVERSATIONS_PER_HOUR", 30)
CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS = env_int("CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS", 500)
# A conversation takes at most this many customer messages; then the customer is asked to start anew.
CHAT_MAX_CUSTOMER_MESSAGES = env_int("CHAT_MAX_CUSTOMER_MESSAGES", 100)
# What the model receives: the system prompt and the newest messages within this estimate (chars / 4).
CHAT_HISTORY_TOKEN_BUDGET = env_int("CHAT_HISTORY_TOKEN_BUDGET", 12000)
# A tool result longer than this is cut, with a note saying so.
CHAT_MAX_TOOL_RESULT_CHARS = env_int("CHAT_MAX_TOOL_RESULT_CHARS", 4000)
# Tool calls run per model response; further calls are answered with an error and never run.
CHAT_MAX_TOOL_CALLS_PER_REPLY = env_int("CHAT_MAX_TOOL_CALLS_PER_REPLY", 8)
# Finds secrets of the verified customer in free text (``(customer_id) -> (text -> secrets)``), so a key
# typed again after verification, or echoed by the model, is masked too.
CHAT_SECRET_FINDER = env("CHAT_SECRET_FINDER", "tickets.services.apikey_finder")

# TRANSCRIPTS
# purge_transcripts without --older-than deletes conversations idle this many days; unset keeps them.
TRANSCRIPT_RETENTION_DAYS = env_int("TRANSCRIPT_RETENTION_DAYS", 0) or None
