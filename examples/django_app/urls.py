"""URLs of the example Django project."""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped]  # Django ships no type hints

from . import views

urlpatterns = [
    path("lessons", views.publish_lesson, name="publish-lesson"),
    path("lessons/outbox", views.save_lesson, name="save-lesson"),
    path("health", views.health, name="health"),
]
