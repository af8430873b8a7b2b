"""One PostgreSQL server on loopback for tests and demos: :class:`PostgresServer`.

Owns a throw-away cluster's life: finding ``initdb``/``pg_ctl`` (``$EDUPULSE_PG_BIN``, the
``PATH``, then Debian's ``/usr/lib/postgresql/<version>/bin``), ``initdb`` into a temp dir,
starting it on a free 127.0.0.1 port with ``fsync=off`` (a test server: speed, not
durability), creating databases, and stopping it with its own ``pg_ctl stop`` (then its
postmaster pid, if that failed). PostgreSQL refuses to run as root: a root process runs
every server command as the ``postgres`` user (``runuser -u postgres --``), which owns the
temp dir. Like :class:`NatsServer` it never talks the protocol itself (no driver imported):
readiness is ``pg_ctl start -w``, databases are made with ``createdb``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from ..errors import ServerError, ServerNotFound
from ._net import HOST, POLL, free_port, release_port

__all__ = ["PG_BIN_ENV_VAR", "PostgresServer", "postgres_binaries"]

#: A directory holding ``initdb``, ``pg_ctl`` and ``createdb`` (checked before the ``PATH``).
PG_BIN_ENV_VAR = "EDUPULSE_PG_BIN"
_TOOLS = ("initdb", "pg_ctl", "createdb")
_SUPERUSER = "postgres"


def postgres_binaries() -> Path:
    """The directory with ``initdb``, ``pg_ctl`` and ``createdb``; `ServerNotFound` saying what
    is missing and how to get it when there is none."""
    candidates: list[Path] = []
    given = os.environ.get(PG_BIN_ENV_VAR)
    if given:
        candidates.append(Path(given))
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in _TOOLS):
            return directory
    raise ServerNotFound(
        "no PostgreSQL server binaries (initdb, pg_ctl, createdb) found: looked in "
        f"${PG_BIN_ENV_VAR}, the PATH and /usr/lib/postgresql/*/bin; install PostgreSQL "
        "(Debian: apt-get install postgresql) or point $EDUPULSE_PG_BIN at its bin directory"
    )


def _as_postgres() -> list[str]:
    """The command prefix that runs a server command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:  # pragma: no cover - util-linux is on every Debian
        raise ServerNotFound("running as root and no runuser to start PostgreSQL as the postgres user")
    return [runuser, "-u", _SUPERUSER, "--"]


def _stop(bin_dir: str, data: str, prefix: list[str], tmpdir: str | None) -> None:
    """Stop the server in ``data`` (fast shutdown, then SIGKILL of its postmaster) and remove ``tmpdir``."""
    pid_file = Path(data) / "postmaster.pid"
    pid = _read_pid(pid_file)
    if pid is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [*prefix, f"{bin_dir}/pg_ctl", "stop", "-D", data, "-m", "immediate", "-w", "-t", "10"],
                capture_output=True,
                timeout=20,
                check=False,
            )
        if not _gone(pid, 10.0):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _gone(pid, 5.0)
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for process ``pid`` to end (a zombie counts as ended); True if it did."""
    end = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        except OSError:  # no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return True
        if time.monotonic() >= end:
            return False
        time.sleep(POLL)


class PostgresServer:
    """A throw-away PostgreSQL server on 127.0.0.1 (trust authentication, ``fsync=off``).

    ``with PostgresServer() as pg: psycopg.connect(pg.dsn())``. :meth:`create_database` makes
    a fresh database (what each test takes); :attr:`url` is the SQLAlchemy-style URL of the
    ``postgres`` database. `ServerNotFound` when PostgreSQL is not installed; `ServerError`
    (with the server's log) when it does not start.
    """

    def __init__(self, *, port: int | None = None, bin_dir: str | os.PathLike[str] | None = None) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else postgres_binaries()
        self.port = port if port is not None else free_port()
        self._prefix = _as_postgres()
        self._tmpdir: str | None = None
        self._finalizer: weakref.finalize[..., PostgresServer] | None = None
        self._databases = 0

    @property
    def data_dir(self) -> Path:
        if self._tmpdir is None:
            raise ServerError("the PostgreSQL server is not started")
        return Path(self._tmpdir) / "data"

    @property
    def log_path(self) -> Path:
        return Path(self._tmpdir or ".") / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The server's URL for ``database`` (``postgresql://postgres@127.0.0.1:<port>/<database>``)."""
        return f"postgresql://{_SUPERUSER}@{HOST}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string (what ``psycopg.connect`` takes)."""
        return f"host={HOST} port={self.port} user={_SUPERUSER} dbname={database}"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._prefix, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=self._tmpdir
        )
        if result.returncode != 0:
            raise ServerError(
                f"{Path(args[0]).name} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"
                f"\n{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """``initdb`` a new cluster in a temp dir and start it; returns when it takes connections."""
        if self._tmpdir is not None:
            raise ServerError("the PostgreSQL server was started already")
        self._tmpdir = tempfile.mkdtemp(prefix="edupulse-pg-")
        if self._prefix:  # the postgres user owns the cluster (and may cross into the temp dir)
            os.chmod(self._tmpdir, 0o755)
            shutil.chown(self._tmpdir, _SUPERUSER)
        data = str(self.data_dir)
        self._finalizer = weakref.finalize(self, _stop, str(self.bin_dir), data, self._prefix, self._tmpdir)
        try:
            self._run(
                f"{self.bin_dir}/initdb",
                "-D",
                data,
                "-U",
                _SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                timeout=timeout,
            )
            options = (
                f"-c listen_addresses={HOST} -p {self.port} -k {self._tmpdir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            self._run(
                f"{self.bin_dir}/pg_ctl",
                "start",
                "-D",
                data,
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                timeout=timeout + 10,
            )
        except BaseException:
            self.close()
            raise
        return self

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database (``name``, or ``test_<n>``); returns its name."""
        if name is None:
            self._databases += 1
            name = f"test_{self._databases}"
        self._run(f"{self.bin_dir}/createdb", "-h", HOST, "-p", str(self.port), "-U", _SUPERUSER, name)
        return name

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return None if self._tmpdir is None else _read_pid(self.data_dir / "postmaster.pid")

    def close(self) -> None:
        """Stop the server and remove its files. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        elif self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tmpdir = None
        release_port(self.port)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.url()} {'running' if self._tmpdir else 'stopped'}>"
