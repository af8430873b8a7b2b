"""Which of the two paths a connection publishes through, and saying so.

The fast path (``_fast.py``) is taken unless ``EDUPULSE_EVENTS_NATS_PATH=public`` forces
nats-py's public API, or the installed nats-py's internals are not the ones it was built for
(`check_internals`, whose answer is kept); its probe then decides at each connection. The
public path is announced once per process with its reason, and every connection's log line
names the path and the nats-py version. `prepare_process` decides ahead what a process's
first connection would, for a pre-fork server's workers to inherit.
"""

from __future__ import annotations

import logging
import os

import nats.aio.client

from ._fast import check_internals, prepare_acks

__all__ = ["PATH_ENV", "fast_path_refusal", "log_public_path", "nats_py_version", "prepare_process"]

log = logging.getLogger("edupulse_events")
PATH_ENV = "EDUPULSE_EVENTS_NATS_PATH"
_logged_paths: set[str] = set()


def nats_py_version() -> str:
    """The installed nats-py release: as nats-py says it (read once at its import), else as its
    distribution says. Asking the distribution scans sys.path's metadata, which every pre-fork
    worker would pay on its first connection (docs/performance.md)."""
    said = getattr(nats.aio.client, "__version__", None)
    if isinstance(said, str) and said[:1].isdigit() and said != "0.0.0":
        return said
    import importlib.metadata  # here, not at import: its import is slow (docs/performance.md), needed once

    try:
        return importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def fast_path_refusal() -> str | None:
    """Why this process does not use the fast path (None: it does, if the probe passes)."""
    if os.environ.get(PATH_ENV, "").strip().lower() == "public":
        return f"{PATH_ENV}=public"
    return check_internals()


def prepare_process() -> None:
    """Decide, once per process, what every first connection would: whether the fast path can
    be taken (the answer is kept) and, if so, its ack matchers (`_processes.prepare_children`)."""
    if fast_path_refusal() is None:
        prepare_acks()


def log_public_path(why: str) -> None:
    """Warn, once per process, that the public path is taken and why (the connection's own
    log line names the path every time)."""
    if "public" in _logged_paths:
        return
    _logged_paths.add("public")
    log.warning("nats-py %s: publishing through nats-py's public API (slower): %s", nats_py_version(), why)
