"""JetStream streams as a publisher needs them: the configured one exists (or is created, allowing
atomic and fast-ingest batches) and captures every subject the publisher writes to, and whether
any stream captures a subject."""

from __future__ import annotations

import logging
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StreamConfig

from ..config import PublisherConfig
from ..errors import BrokerError
from ._paths import nats_py_version

__all__ = ["ensure_stream", "stream_captures", "subject_covered"]

log = logging.getLogger("edupulse_events")


#: Streams this library creates allow atomic and fast-ingest batches (nats-server 2.12+; older
#: servers ignore the fields), where the installed nats-py knows the fields (2.12+).
_BATCH_FLAGS: dict[str, Any] = {
    name: True
    for name in ("allow_atomic", "allow_batched")
    if name in getattr(StreamConfig, "__dataclass_fields__", {})
}


def subject_covered(pattern: str, subject: str) -> bool:
    """Whether every subject matching ``subject`` (which may use ``*``) also matches the
    stream filter ``pattern`` (``*`` one token, ``>`` the rest)."""
    want, have = subject.split("."), pattern.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want):
            return False
        if token != "*" and token != want[i]:
            return False
    return len(want) == len(have)


async def stream_captures(nc: Client, subject: str, timeout: float) -> bool | None:
    """Whether some JetStream stream captures ``subject`` (None if the server did not say)."""
    try:
        await nc.jsm(timeout=timeout).find_stream_name_by_subject(subject)
        return True
    except nats.js.errors.NotFoundError:
        return False
    except Exception:  # noqa: BLE001 - timeouts, no responders, lost connection: unknown
        return None


async def ensure_stream(nc: Client, cfg: PublisherConfig) -> bool:
    """The configured stream exists — created (with ``create_stream``) when missing — and
    captures the publisher's subject(s); otherwise a `BrokerError` that says which and why.
    Returns whether it allows fast-ingest batches (``allow_batched``; False where nats-py or the
    server does not know it: logged once)."""
    assert cfg.stream is not None
    jsm = nc.jsm(timeout=cfg.connect_timeout)
    wanted = cfg.stream_subject
    try:
        try:
            info = await jsm.stream_info(cfg.stream)
        except nats.js.errors.NotFoundError:
            if not cfg.create_stream:
                raise BrokerError(
                    f"JetStream stream {cfg.stream!r} does not exist: create it, or pass create_stream=True"
                ) from None
            await jsm.add_stream(name=cfg.stream, subjects=[wanted], num_replicas=cfg.stream_replicas, **_BATCH_FLAGS)
            log.info("created JetStream stream %s for subject %s", cfg.stream, wanted)
            if not _BATCH_FLAGS:
                log.warning(
                    "nats-py %s cannot set allow_atomic and allow_batched (2.12 and later can): stream %s was "
                    "created without them, so atomic batches are refused (err_code 10174) and publish_many() "
                    "gets an ack per event; set them on the stream, or install a newer nats-py",
                    nats_py_version(),
                    cfg.stream,
                )
            info = await jsm.stream_info(cfg.stream)
    except BrokerError:
        raise
    except Exception as exc:
        raise BrokerError(f"could not check stream {cfg.stream!r}: {exc or type(exc).__name__}") from exc
    subjects = list(info.config.subjects or [])
    if not any(subject_covered(pattern, wanted) for pattern in subjects):
        raise BrokerError(
            f"JetStream stream {cfg.stream!r} captures {subjects}, not the subject {wanted!r} this publisher "
            "writes to: add it to the stream's subjects, or publish to a subject the stream captures"
        )
    batched = bool(getattr(info.config, "allow_batched", False))
    if not batched and cfg.fast_ingest and cfg.stream not in _told:
        _told.add(cfg.stream)
        log.info(
            "stream %s does not allow fast-ingest batches (allow_batched, nats-server 2.14+): "
            "publish_many() gets an ack per event",
            cfg.stream,
        )
    return batched


_told: set[str] = set()  # streams whose missing allow_batched was logged
