"""Settings of the example: everything that differs per deploy from the env.

    DJANGO_SECRET_KEY      set it in any real deploy; the example falls back to a fixed,
                           insecure key
    DJANGO_DEBUG           "1" to turn debug on (default off)
    DJANGO_ALLOWED_HOSTS   comma-separated (default "localhost,127.0.0.1")
    BUS_CONFIG             the bus config, read by shop/bus.py (bus.yaml here; outbox.yaml
                           for the orders app's transactional events)
    BUS_LOG_LEVEL          level of Bus's log lines (default WARNING; the orders worker, a
                           `bus run` that loads these settings, wants INFO)
    DATABASE_URL           postgresql://user:password@host:port/name: the database of the
                           orders app and of the outbox tables (unset: no database; the
                           accounts views need none)
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-the-bus-django-example")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = [host.strip() for host in
                 os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
                 if host.strip()]

INSTALLED_APPS = ["shop.apps.ShopConfig", "orders.apps.OrdersConfig"]

# No sessions or cookies, hence no CSRF middleware: these are JSON endpoints. An app with
# session login keeps django.middleware.csrf.CsrfViewMiddleware.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "shop.middleware.BusErrorMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"


def _database(url: str) -> dict[str, str]:
    """Django's DATABASES entry for a postgresql:// URL."""
    parts = urlsplit(url)
    return {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
            "USER": unquote(parts.username or ""), "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "", "PORT": str(parts.port or "")}


# The accounts service keeps its own data; the orders app (and the outbox) need PostgreSQL.
DATABASES: dict[str, dict[str, str]] = (
    {"default": _database(os.environ["DATABASE_URL"])} if os.environ.get("DATABASE_URL")
    else {})
USE_TZ = True
TIME_ZONE = "UTC"  # also the time zone of the log lines (Django sets $TZ to it)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "shop": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "bus": {"handlers": ["console"], "level": os.environ.get("BUS_LOG_LEVEL", "WARNING"),
                "propagate": False},
    },
}
