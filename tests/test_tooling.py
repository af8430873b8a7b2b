"""The tools that keep the code honest, run as part of the suite: ruff (lint and format), mypy --strict,
import-linter (the layering contract in pyproject.toml) and the package's own rules (no import cycle,
no module reaches another's private names; sorted public names)."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edupulse_events

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edupulse_events"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_finds_nothing() -> None:
    """`ruff check` (pyproject.toml's rules) reports no finding in the package, tests and benchmarks."""
    proc = run("ruff", "check", "--output-format", "concise", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_changes_nothing() -> None:
    """Every file is formatted as `ruff format` would write it."""
    proc = run("ruff", "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_finds_nothing() -> None:
    """`mypy` (strict, as configured) finds no error in the package, tests and benchmarks."""
    proc = run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_imports_keep_the_layering_contract() -> None:
    """`lint-imports` finds every import (lazy and TYPE_CHECKING ones too) flowing down the layers of pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout, proc.stdout


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:  # the most specific module it names
                target = target.rpartition(".")[0]
            if target and target != name and not (path.name == "__init__.py" and target.startswith(name + ".")):
                found.add(target)
    return found


def test_no_import_cycle_in_the_package() -> None:
    """No two modules of the package import each other, even through others or lazily (a package's re-exports aside)."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: _imported(path, name, set(files)) for name, path in files.items()}
    done: set[str] = set()

    def cycle_from(start: str) -> list[str] | None:
        """Depth-first, without recursion: the first cycle reachable from ``start``."""
        trail: list[str] = [start]
        stack = [iter(sorted(graph[start]))]
        on_trail = {start}
        while stack:
            step = next(stack[-1], None)
            if step is None:  # every import of trail[-1] explored: no cycle through it
                finished = trail.pop()
                done.add(finished)
                on_trail.discard(finished)
                stack.pop()
                continue
            if step in on_trail:
                return [*trail[trail.index(step) :], step]
            if step not in done:
                trail.append(step)
                on_trail.add(step)
                stack.append(iter(sorted(graph[step])))
        return None

    for name in sorted(graph):
        if name not in done:
            cycle = cycle_from(name)
            assert cycle is None, " -> ".join(cycle)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_names(path: Path) -> None:
    """Modules import only public names from one another (a module's own privates stay its own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("edupulse_events"))
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, f"{path.name} imports private names: {private}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_what_it_owns(path: Path) -> None:
    """Each module opens with a docstring saying what it owns (its size follows that concern: no line limit)."""
    source = path.read_text(encoding="utf-8")
    assert ast.get_docstring(ast.parse(source)), f"{path.name} has no module docstring"


def _isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_public_names_are_sorted_and_importable() -> None:
    """`edupulse_events.__all__` is sorted and every name in it exists; so are the public modules'."""
    names = edupulse_events.__all__
    assert names == sorted(names, key=_isort_key)
    for name in names:
        assert hasattr(edupulse_events, name), name
    for info in pkgutil.walk_packages(edupulse_events.__path__, "edupulse_events."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{info.name} has no __all__"
        assert list(exported) == sorted(exported, key=_isort_key), info.name
        for name in exported:
            assert hasattr(module, name), f"{info.name}.{name}"


def test_version_license_and_changelog_agree() -> None:
    """__version__ is the installed distribution's, CHANGELOG.md has its section, LICENSE is setup.cfg's MIT."""
    from importlib.metadata import metadata, version

    assert edupulse_events.__version__ == version("edupulse_events")
    assert f"## {edupulse_events.__version__}" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert metadata("edupulse_events")["License"] == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
