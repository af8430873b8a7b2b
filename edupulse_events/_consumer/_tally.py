"""A consumer's counters, added to from its caller threads and its own thread under one lock."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Tally"]

FIELDS = (
    "received",
    "acknowledged",
    "nacked",
    "terminated",
    "dead_lettered",
    "dead_letter_failures",
    "undecodable",
    "handler_errors",
    "redelivered",
    "expired",
    "in_progress",
)


class Tally:
    """Counts of what happened to the messages of one consumer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(FIELDS, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._counts)
