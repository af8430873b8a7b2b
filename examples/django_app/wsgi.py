"""The example Django project's WSGI application (``gunicorn django_app.wsgi`` from ``examples/``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]  # Django ships no type hints

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

application = get_wsgi_application()
