"""The suite's default tier again on the newest CPython these machines have (3.13, installed by
pyenv), in a fresh virtual environment: where ``futures.py``'s reliance on
`concurrent.futures.Future` internals, the nats-py fast path, asyncio, sqlite3 and the codec's
dependencies would break first on another interpreter. The oldest supported CPython (3.10) runs
the whole suite in `test_nats_py_matrix` (with the oldest nats-py: the oldest corner), so CI
makes two extra venvs, not three.

To keep CI's whole run within its budget, the tier is narrowed to what depends on the interpreter.
The venv gets the package and the ``test`` extra without what the tier does not run
(`matrix_support.tier_requirements`). The tier is
``-m "not matrix and not servers and not pythons and not slow"`` without `SKIPPED_FILES`: the
files of `matrix_support.MAIN_RUN_ONLY` (the tooling and docs checks, the command line's
subprocess I/O and the demo, the testing helpers' own edge cases; argument parsing and help
still run, in ``test_cli.py``) and ``tail``'s (its nats-py reading is the main run's, on the same
nats-py). An interpreter missing on this machine is skipped with its path.

Marked ``pythons``: CI runs it; skip it locally with ``-m "not pythons"``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from matrix_support import MAIN_RUN_ONLY, NEWEST_PYTHON, install_checkout

ROOT = Path(__file__).resolve().parents[1]
INTERPRETERS = {"3.13": NEWEST_PYTHON}
TIER = "not matrix and not servers and not pythons and not slow"
SKIPPED_FILES = (*MAIN_RUN_ONLY, "tests/test_cli_tail.py")

pytestmark = pytest.mark.pythons


@pytest.mark.timeout(1200)  # a suite in a new venv: pytest-timeout's 300 s are for one test
@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_the_default_tier_passes_on_the_newest_cpython(version: str, tmp_path: Path) -> None:
    """On CPython 3.13 (fresh venv) every test of the narrowed default tier passes."""
    interpreter = INTERPRETERS[version]
    if not os.access(interpreter, os.X_OK):
        pytest.skip(f"CPython {version} is not installed at {interpreter}")
    venv = tmp_path / "venv"
    subprocess.run([str(interpreter), "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = install_checkout(python)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    which = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert which.stdout.strip() == str(tuple(int(n) for n in version.split(".")))
    ignored = [f"--ignore={path}" for path in SKIPPED_FILES]
    suite = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "-m", TIER, *ignored],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-3000:]
    assert " passed" in suite.stdout.splitlines()[-1]
