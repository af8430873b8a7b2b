"""OpenTelemetry metrics for `NatsConsumer`, used only where ``opentelemetry-api`` is installed (the
``otel`` extra): `metrics_for` returns None otherwise.

Observable instruments read the consumer's ``stats()`` at collection time — nothing per message:
``messaging.client.consumed.messages`` (messages delivered to this process),
``edupulse.consumer.settled`` (outcomes, by ``edupulse.consumer.outcome``: ``ack``, ``nak``,
``term``, ``dead_letter``) and the gauge ``edupulse.consumer.in_flight`` (delivered and not settled
yet). The ``messaging.process.duration`` histogram is recorded by ``run()``'s handler threads per
handler call (with ``error.type`` when it raised), and only while a metrics SDK is configured (looked
up when the consumer is built, connects and at each ``run()``'s start). Every point carries
``messaging.system``, the durable as ``messaging.consumer.group.name`` and ``messaging.client.id``
(``client_name`` and the consumer's number in the process), so several consumers in one process
are each reported: like the publisher's (`_engine._otel.shared`), a meter provider's instruments
are created once and read every live consumer. Nothing of opentelemetry is imported until the
application has imported it (or given a ``meter_provider``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._engine._otel import Readings, shared
from .._version import __version__

if TYPE_CHECKING:
    from ..config import ConsumerConfig
    from ..stats import ConsumerStats

__all__ = ["OUTCOMES", "Metrics", "metrics_for"]

_NO_SDK = ("_ProxyMeterProvider", "NoOpMeterProvider")
#: ``edupulse.consumer.outcome`` values and how each is read from `ConsumerStats` (terminations
#: there include the dead letters: ``term`` is the rest).
OUTCOMES: dict[str, Callable[[ConsumerStats], int]] = {
    "ack": lambda s: s.acknowledged,
    "nak": lambda s: s.nacked,
    "term": lambda s: s.terminated - s.dead_lettered,
    "dead_letter": lambda s: s.dead_lettered,
}


def metrics_for(config: ConsumerConfig, client_id: str, stats: Callable[[], ConsumerStats]) -> Metrics | None:
    """The consumer's metrics, or None when opentelemetry-api is not installed."""
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return None
    except ValueError:  # imported as None: blocked on purpose
        return None
    return Metrics(config, client_id, stats)


class Metrics:
    """One consumer's metric readings and its handling-duration histogram."""

    def __init__(self, config: ConsumerConfig, client_id: str, stats: Callable[[], ConsumerStats]) -> None:
        self._provider: Any = config.meter_provider
        self._stats = stats
        self.attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.consumer.group.name": config.durable,
            "messaging.client.id": client_id,
        }
        self._process = {**self.attributes, "messaging.operation.name": "process"}
        self._ready = False
        #: Whether handler durations are recorded (a metrics SDK is configured).
        self.metering = False
        self.recheck()

    def recheck(self) -> None:
        """Look again whether a metrics SDK is configured (when connecting and at ``run()``'s start)."""
        if not self._ready:
            if self._provider is None and "opentelemetry" not in sys.modules:
                return
            from opentelemetry import metrics

            self._metrics = metrics
            meter = metrics.get_meter("edupulse_events.consumer", __version__, meter_provider=self._provider)
            self.duration = shared(self._provider or metrics.get_meter_provider(), meter, _Instruments).join(self)
            self._ready = True
        provider = self._provider or self._metrics.get_meter_provider()
        self.metering = type(provider).__name__ not in _NO_SDK

    def record(self, seconds: float, error: BaseException | None) -> None:
        """One handler call's duration (``error``: what it raised)."""
        attributes = self._process if error is None else {**self._process, "error.type": type(error).__name__}
        self.duration.record(seconds, attributes)

    def observe(self, what: str) -> list[tuple[int, Mapping[str, Any]]]:
        """One reading of ``stats()`` for an instrument: ``consumed``, ``in_flight`` or ``settled``."""
        stats = self._stats()
        if what == "consumed":
            return [(stats.received, self.attributes)]
        if what == "in_flight":
            return [(stats.held, self.attributes)]
        return [(read(stats), {**self.attributes, "edupulse.consumer.outcome": o}) for o, read in OUTCOMES.items()]


class _Instruments:
    """The consumer instruments of one meter provider, created once, reporting every live consumer."""

    def __init__(self, meter: Any) -> None:
        self._readings = readings = Readings()
        meter.create_observable_counter(
            "messaging.client.consumed.messages",
            [readings.reading("consumed")],
            unit="{message}",
            description="Messages delivered to the consumer",
        )
        meter.create_observable_counter(
            "edupulse.consumer.settled",
            [readings.reading("settled")],
            unit="{message}",
            description="Messages settled, by edupulse.consumer.outcome (ack, nak, term, dead_letter)",
        )
        meter.create_observable_gauge(
            "edupulse.consumer.in_flight",
            [readings.reading("in_flight")],
            unit="{message}",
            description="Messages delivered to the consumer and not settled yet",
        )
        self.duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="How long run()'s handler took per message"
        )

    def join(self, member: Metrics) -> Any:
        """Report ``member`` from now on (for as long as it lives); returns the duration histogram."""
        self._readings.join(member)
        return self.duration
