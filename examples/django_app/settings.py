"""Settings of the example Django project: the event-context middleware, and one SQLite database
(``EDUPULSE_EXAMPLE_DB``, default ``example.db`` here) for the lessons and the transactional outbox."""

from __future__ import annotations

import os
from pathlib import Path

# a development key: set DJANGO_SECRET_KEY anywhere else
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-edupulse-events-example")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = ["django_app"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EDUPULSE_EXAMPLE_DB", str(Path(__file__).resolve().parent.parent / "example.db")),
        # IMMEDIATE: a transaction takes the write lock at BEGIN, so workers queue instead of deadlocking
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "edupulse_events.django.EventContextMiddleware",
]
ROOT_URLCONF = "django_app.urls"
WSGI_APPLICATION = "django_app.wsgi.application"
USE_TZ = True

# the request's tenant, for the events its views create (see edupulse_events.django)
EDUPULSE_EVENTS_TENANT = "django_app.views.tenant_of"
