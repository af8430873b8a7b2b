"""The lessons table and the transactional outbox's tables (edupulse_events.django.create_outbox_tables)."""

from __future__ import annotations

from django.db import migrations, models  # type: ignore[import-untyped]  # Django ships no type hints

from edupulse_events.django import create_outbox_tables


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    atomic = False  # outside a transaction, so the outbox can switch a SQLite file to WAL mode
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 - Django reads these class attributes
    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Lesson",
            fields=[
                ("id", models.UUIDField(primary_key=True, serialize=False)),
                ("title", models.CharField(max_length=200)),
            ],
        ),
        migrations.RunPython(create_outbox_tables, migrations.RunPython.noop),
    ]
