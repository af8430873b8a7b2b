"""The example's one model: a lesson, saved with its `LessonPublished` event in one transaction."""

from __future__ import annotations

from django.db import models  # type: ignore[import-untyped]  # Django ships no type hints


class Lesson(models.Model):  # type: ignore[misc]
    id = models.UUIDField(primary_key=True)
    title = models.CharField(max_length=200)

    class Meta:
        app_label = "django_app"
