"""What the suite-again-in-a-new-venv tests share (`test_nats_py_matrix`, `test_python_matrix`): the
test extra's requirements without what those runs do not use, and installing them one venv at a time."""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
#: The oldest CPython the library supports (python_requires) and the newest these machines have
#: (pyenv's): the nats-py matrix runs on the first, the pythons run on the second.
OLDEST_PYTHON = PYENV / "3.10.13" / "bin" / "python3.10"
NEWEST_PYTHON = PYENV / "3.13.0" / "bin" / "python3.13"

_CLI = (
    "the command line's own input and output in subprocesses (arguments, printing, exit codes, files): "
    "nats-py- and interpreter-independent; the library calls under it (publisher, consumer, relay, spool) "
    "run in process in the other files"
)
_HELPERS = (
    "edupulse_events.testing's own edge cases (it never imports nats-py); its servers start every "
    "broker the run uses, so its main path runs there anyway"
)
#: Test files the suite-again-in-a-new-venv runs leave to the main run, and why (the list and the
#: reasons are in docs/development.md): nothing in them differs between nats-py or CPython versions.
MAIN_RUN_ONLY: dict[str, str] = {
    "tests/test_tooling.py": "ruff, mypy and import-linter read the source (not installed there)",
    "tests/test_docs.py": "the docs build (mkdocs is not installed there)",
    "tests/test_cli_publish.py": _CLI,
    "tests/test_cli_spool.py": _CLI,
    "tests/test_cli_hostile.py": _CLI,
    "tests/test_cli_consume.py": _CLI,
    "tests/test_cli_outbox.py": _CLI,
    "tests/test_demo.py": _CLI,
    "tests/test_testing.py": _HELPERS,
    "tests/test_testing_cluster.py": _HELPERS,
}

#: Test-extra requirements the tier does not use (by distribution name).
NOT_INSTALLED = {
    "uwsgi",
    "gunicorn",
    "ruff",
    "mypy",
    "mkdocs",
    "mkdocs-material",
    "mkdocstrings",
    "mkdocstrings-python",
    "import-linter",
}


def tier_requirements() -> list[str]:
    """The ``test`` extra of setup.cfg, without `NOT_INSTALLED`."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in setup["options.extras_require"]["test"].splitlines()]
    wanted = [line for line in lines if line and not line.startswith("#")]
    return [r for r in wanted if re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() not in NOT_INSTALLED]


#: Held while a venv installs this checkout: ``pip install -e`` writes ``edupulse_events.egg-info``
#: into it, and under pytest-xdist the ``matrix`` and ``pythons`` tests would install at once.
_CHECKOUT = hashlib.sha256(bytes(ROOT)).hexdigest()[:16]
INSTALL_LOCK = Path(tempfile.gettempdir()) / f"edupulse-events-install-{_CHECKOUT}.lock"


def install_checkout(python: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``pip install -e`` this checkout with `tier_requirements` (and ``extra``) into ``python``'s venv,
    one install of this checkout at a time (`INSTALL_LOCK`)."""
    with FileLock(INSTALL_LOCK, timeout=900):
        return subprocess.run(
            [python, "-m", "pip", "install", "-q", "-e", str(ROOT), *tier_requirements(), *extra],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
