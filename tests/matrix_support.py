"""What the suite-again-in-a-new-venv tests share (`test_nats_py_matrix`, `test_python_matrix`): the
test extra's requirements without what those runs do not use."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
#: The oldest CPython the library supports (python_requires) and the newest these machines have
#: (pyenv's): the nats-py matrix runs on the first, the pythons run on the second.
OLDEST_PYTHON = PYENV / "3.10.13" / "bin" / "python3.10"
NEWEST_PYTHON = PYENV / "3.13.0" / "bin" / "python3.13"

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
