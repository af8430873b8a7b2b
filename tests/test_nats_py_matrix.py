"""The suite again in a fresh virtual environment with the oldest nats-py this library supports
(2.6.0), where the fast path is refused and every publisher takes nats-py's public API, on the
oldest CPython it supports (3.10, from pyenv; this interpreter where that one is missing) — all
but the pre-fork server runs (``servers``: gunicorn and uWSGI add nothing nats-py-specific, and
1.5 minutes) and the files of `matrix_support.MAIN_RUN_ONLY` (the tooling and docs checks, the
command line's subprocess I/O, the testing helpers' own edge cases: each with its reason there).

The venv gets the package and the ``test`` extra without what these tests do not use (uWSGI and
gunicorn, ruff, mypy, mkdocs: `matrix_support.tier_requirements`).

Marked ``matrix``: CI runs it (docs/development.md says how long); skip it locally with ``-m "not matrix"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from matrix_support import MAIN_RUN_ONLY, OLDEST_PYTHON, install_checkout

ROOT = Path(__file__).resolve().parents[1]
OLDEST = "2.6.0"

pytestmark = pytest.mark.matrix

WHICH_PATH = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    from helpers import envelope
    from edupulse_events import NatsPublisher
    from edupulse_events.testing import NatsServer
    with NatsServer() as server:
        with NatsPublisher.connect(server.url, "which.path", stream="WHICH", create_stream=True) as pub:
            pub.publish(envelope()).result(timeout=10)
            print(pub.stats().nats_path)
    """
)


@pytest.mark.timeout(1500)  # a whole suite in a new venv: pytest-timeout's 300 s are for one test
def test_the_suite_passes_on_the_oldest_supported_nats_py(tmp_path: Path) -> None:
    """On nats-py 2.6.0 and CPython 3.10 (fresh venv) publishers take the public path and every other test passes."""
    venv = tmp_path / "venv"
    interpreter = str(OLDEST_PYTHON) if os.access(OLDEST_PYTHON, os.X_OK) else sys.executable
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = install_checkout(python, f"nats-py=={OLDEST}")
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('nats-py'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert version.stdout.strip() == OLDEST
    which = subprocess.run(
        [python, "-c", WHICH_PATH], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert which.stdout.strip().splitlines()[-1:] == ["public"], which.stdout + which.stderr
    suite = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            # two workers of its own: the longest test of the run, it would otherwise end minutes after
            # everything else (docs/development.md)
            "-n",
            "2",
            "-m",
            "not matrix and not servers and not pythons",
            *(f"--ignore={path}" for path in MAIN_RUN_ONLY),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-3000:]
    assert " passed" in suite.stdout.splitlines()[-1]
