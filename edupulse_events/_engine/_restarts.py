"""When a publisher whose thread crashed may start a new one: the crash count and the backoff.

A thread that crashes within `QUICK_CRASH` seconds of its start counts as crashing again; the
first crash restarts at once (on the next ``publish()``), each quick one after that waits twice
as long as the one before (0.5 s, 1 s, 2 s, ... up to `MAX_RESTART_DELAY`), so a thread that
cannot run does not turn every ``publish()`` into a new thread and connection. The publisher
holds one `Restarts` and calls it under its own lock.
"""

from __future__ import annotations

import time

from ..errors import PublisherCrashed

__all__ = ["MAX_RESTART_DELAY", "QUICK_CRASH", "Restarts"]

#: A thread that crashed within this many seconds of its start counts as crashing again.
QUICK_CRASH = 10.0
MAX_RESTART_DELAY = 30.0


class Restarts:
    """Crashes and restarts of one publisher's thread (for ``stats()``) and the backoff between them."""

    def __init__(self) -> None:
        self.crashes = 0
        self.restarts = 0
        self.quick_crashes = 0
        self.restart_at = 0.0
        self.last: PublisherCrashed | None = None

    def crashed(self, error: PublisherCrashed, started_at: float) -> None:
        """A thread started at ``started_at`` (``time.monotonic()``) crashed with ``error``."""
        self.crashes += 1
        self.last = error
        now = time.monotonic()
        self.quick_crashes = self.quick_crashes + 1 if now - started_at < QUICK_CRASH else 1
        quick = self.quick_crashes
        self.restart_at = now + (0.0 if quick <= 1 else min(0.5 * 2 ** (quick - 2), MAX_RESTART_DELAY))

    def restart(self) -> int:
        """A new thread may start now (the restart's number), or `PublisherCrashed` says when."""
        wait = self.restart_at - time.monotonic()
        if wait > 0:
            raise PublisherCrashed(
                f"the publisher thread crashed {self.quick_crashes} times in a row (last: {self.last}); "
                f"it restarts in {wait:.1f} s, events are refused until then"
            )
        self.restarts += 1
        return self.restarts
