"""Mermaid charts of a `bench_throughput.py --json` run, for docs/performance.md.

Usage: python benchmarks/chart.py RUN.json                 # print the charts (Markdown)
       python benchmarks/chart.py RUN.json --update PAGE   # replace the charts in PAGE

Two ``xychart-beta`` bar charts, JetStream and core, each drawing the median msgs/s of the
library's APIs beside nats-py's baselines and the raw ceiling of the same run (rows the run
did not measure, e.g. with ``--only``, are left out). The docs site renders them with
mkdocs-material's mermaid support. With ``--update``, the text between the page's
``<!-- chart: throughput -->`` and ``<!-- /chart -->`` lines is replaced by the charts.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (scenario name in the JSON, its label on the chart), left to right
GROUPS: dict[str, list[tuple[str, str]]] = {
    "JetStream": [
        ("C naive sync js.publish", "naive sync wrapper"),
        ("B nats-py js.publish_async", "nats-py publish_async"),
        ("lib JetStream, 1 thread", "publish() 1 thread"),
        ("lib JetStream, 4 threads", "publish() 4 threads"),
        ("lib JetStream, publish_many", "publish_many()"),
        ("R raw JetStream ceiling", "raw ceiling"),
    ],
    "core NATS": [
        ("A nats-py core publish+flush", "nats-py publish+flush"),
        ("lib core, 1 thread", "publish() 1 thread"),
        ("lib core, 4 threads", "publish() 4 threads"),
        ("lib core, publish_many", "publish_many()"),
        ("R raw core ceiling", "raw ceiling"),
    ],
}
START, END = "<!-- chart: throughput -->", "<!-- /chart -->"


def charts(run: Mapping[str, Any]) -> str:
    """The Markdown of the run's charts: one mermaid block per group."""
    rates: Mapping[str, Mapping[str, float]] = run["rates"]
    blocks = []
    for group, rows in GROUPS.items():
        shown = [(label, rates[name]["median"]) for name, label in rows if name in rates]
        if not shown:
            continue
        top = max(value for _, value in shown)
        labels = ", ".join(f'"{label}"' for label, _ in shown)
        values = ", ".join(f"{round(value)}" for _, value in shown)
        blocks.append(
            "```mermaid\n"
            "xychart-beta\n"
            f'    title "{group}: msgs/s, median of {run["rounds"]} rounds ({run["machine"]})"\n'
            f"    x-axis [{labels}]\n"
            f'    y-axis "msgs/s" 0 --> {_ceil(top)}\n'
            f"    bar [{values}]\n"
            "```\n"
        )
    return "\n".join(blocks)


def _ceil(value: float) -> int:
    """``value`` rounded up to two significant digits: a tidy top for the y axis."""
    step = int(10 ** max(len(str(int(value))) - 2, 0))
    return -(-int(value) // step) * step


def update(page: Path, text: str) -> None:
    """Replace what stands between the page's chart markers with ``text``."""
    content = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), flags=re.S)
    if not pattern.search(content):
        raise SystemExit(f"{page}: no {START} ... {END} lines to replace")
    page.write_text(pattern.sub(lambda _: f"{START}\n{text}{END}", content), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the JSON written by bench_throughput.py --json")
    parser.add_argument("--update", type=Path, metavar="PAGE", help="replace the charts in this Markdown page")
    args = parser.parse_args()
    text = charts(json.loads(args.run.read_text(encoding="utf-8")))
    if args.update is None:
        print(text, end="")
    else:
        update(args.update, text)
        print(f"updated {args.update}")


if __name__ == "__main__":
    main()
