"""Settings of the example Django project: no database, no apps, the event-context middleware."""

from __future__ import annotations

import os

# a development key: set DJANGO_SECRET_KEY anywhere else
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-edupulse-events-example")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "edupulse_events.django.EventContextMiddleware",
]
ROOT_URLCONF = "django_app.urls"
WSGI_APPLICATION = "django_app.wsgi.application"
USE_TZ = True

# the request's tenant, for the events its views create (see edupulse_events.django)
EDUPULSE_EVENTS_TENANT = "django_app.views.tenant_of"
