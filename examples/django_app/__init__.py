"""A minimal Django project whose view publishes a `LessonPublished` carrying the request's context.

``settings.MIDDLEWARE`` has `edupulse_events.django.EventContextMiddleware`, so each request runs
inside an `event_context`: the correlation id comes from the ``X-Correlation-Id``,
``X-Request-Id`` or ``traceparent`` header, the tenant from ``X-Tenant-Id`` (the
``EDUPULSE_EVENTS_TENANT`` setting names `views.tenant_of`). The view calls
``EventEnvelope.new(lesson)`` without passing either, and the envelope carries both.

Run it from the ``examples`` directory (``pip install -e '.[django]'``)::

    cd examples && DJANGO_SETTINGS_MODULE=django_app.settings python -m django runserver
    curl -X POST localhost:8000/lessons -H 'Content-Type: application/json' -H 'X-Tenant-Id: school-42' \\
         -d '{"title": "Fractions"}'

or under a WSGI server: ``cd examples && gunicorn django_app.wsgi``. No database is used.
"""
