"""The ``bench`` command: run one of the repository's benchmark scripts, or list them.

This module owns finding the ``benchmarks/`` directory (beside the package in a source checkout
or an editable install; it is not installed with the package), naming its scripts
(``bench_throughput.py`` is ``throughput``) with the first line of each one's docstring, and
running one with this interpreter as a child process, its arguments passed through, its exit
code returned. The benchmarks themselves are the scripts'.

Exit codes: the script's; 2 no benchmarks directory, or no or an unknown benchmark name; 124 the
script ran past --timeout (then it is killed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._common import seconds

__all__ = ["add_bench_command", "benchmarks", "benchmarks_dir"]

_PREFIX = "bench_"


def add_bench_command(commands: Any) -> None:
    """Register ``bench`` on ``commands`` (the ``add_subparsers()`` result)."""
    parser = commands.add_parser(
        "bench",
        help="run one of the benchmark scripts (a source checkout's benchmarks/ directory)",
        description="Run benchmarks/bench_NAME.py of a source checkout with this Python, passing ARGS through "
        "(after NAME, or after --: `bench throughput -- --events 1000`; `bench NAME -- --help` shows the "
        "script's own options). The benchmarks are not installed with the package.",
        epilog="Exit codes: the script's; 2 no benchmarks directory, or no or an unknown NAME; 124 the script ran "
        "past --timeout (killed); 130 interrupted.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="which benchmark (see --list)")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")
    parser.add_argument("--list", action="store_true", help="list the benchmarks, with what each measures")
    parser.add_argument("--dir", help="the benchmarks directory (default: benchmarks/ beside the package)")
    parser.add_argument(
        "--timeout", type=seconds, default=3600.0, help="seconds the script may run before it is killed (default 3600)"
    )
    parser.set_defaults(handler=_bench)


def benchmarks_dir(given: str | None = None) -> Path | None:
    """``given``, or the ``benchmarks/`` directory beside the package's directory; None if not a directory."""
    path = Path(given).expanduser() if given else Path(__file__).resolve().parents[2] / "benchmarks"
    return path if path.is_dir() else None


def benchmarks(directory: Path) -> dict[str, tuple[Path, str]]:
    """Each benchmark's name, script and the first line of its docstring, sorted by name."""
    found: dict[str, tuple[Path, str]] = {}
    for path in sorted(directory.glob(f"{_PREFIX}*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except (OSError, SyntaxError, ValueError):
            doc = ""
        found[path.stem.removeprefix(_PREFIX)] = (path, (doc.splitlines() or [""])[0])
    return found


def _bench(args: argparse.Namespace) -> int:
    directory = benchmarks_dir(args.dir)
    if directory is None:
        where = repr(args.dir) if args.dir else "beside the package (only a source checkout has them)"
        print(f"edupulse-events bench: no benchmarks directory {where}; pass --dir", file=sys.stderr)
        return 2
    found = benchmarks(directory)
    if args.list or args.name is None:
        width = max([len(name) for name in found] + [4])
        for name, (_, doc) in found.items():
            print(f"{name:<{width}}  {doc}")
        if args.name is None and not args.list:
            print("edupulse-events bench: which one? give a NAME from the list above", file=sys.stderr)
            return 2
        return 0
    if args.name not in found:
        print(
            f"edupulse-events bench: no benchmark {args.name!r} in {directory} (there are: {', '.join(found)})",
            file=sys.stderr,
        )
        return 2
    script, _ = found[args.name]
    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    try:
        return subprocess.run([sys.executable, str(script), *extra], check=False, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"edupulse-events bench: {args.name} ran past --timeout {args.timeout:g} s: killed", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        return 130
