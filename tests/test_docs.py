"""The docs site (mkdocs.yml, docs/): it builds with zero warnings, documents every public area, has
guide pages of substance the README links, and draws the performance charts from the benchmark's JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import chart  # noqa: E402 - benchmarks/ is not a package

# the guide pages the README's reference moved to: each must say something of its own
GUIDES = ["events", "publishing", "prefork", "spool", "cli", "delivery", "security", "performance", "development"]
THROUGHPUT_RUN = ROOT / "benchmarks" / "results" / "throughput-2026-12-07.json"

# page (its folder in the built site) -> objects it must document, by full path (the anchor id)
PAGES = {
    "events": [
        "edupulse_events.events.QuizSubmitted",
        "edupulse_events.events.EventRegistry",
        "edupulse_events.events.register_event",
        "edupulse_events.envelope.EventEnvelope",
        "edupulse_events.envelope.Timestamp",
        "edupulse_events.codec.Codec",
        "edupulse_events.codec.decode",
        "edupulse_events.schema.json_schema",
        "edupulse_events.schema.asyncapi",
    ],
    "publishing": [
        "edupulse_events.nats_publisher.NatsPublisher",
        "edupulse_events.nats_publisher.NatsPublisher.publish",
        "edupulse_events.nats_publisher.NatsPublisher.publish_many",
        "edupulse_events.stats.PublisherState",
        "edupulse_events.stats.PublisherStats",
        "edupulse_events.futures.PublishAck",
        "edupulse_events.futures.PublishFuture",
        "edupulse_events.publisher.EventPublisher",
        "edupulse_events.publisher.InMemoryPublisher",
        "edupulse_events.factory.build_from_env",
    ],
    "configuration": [
        "edupulse_events.config.PublisherConfig",
        "edupulse_events.config.PublisherConfig.max_queue",
        "edupulse_events.config.RetryPolicy",
        "edupulse_events.config.redact_url",
        "edupulse_events.config.ENV_PREFIX",
    ],
    "errors": [
        "edupulse_events.errors.EventsError",
        "edupulse_events.errors.BrokerError",
        "edupulse_events.errors.BrokerUnavailable",
        "edupulse_events.errors.QueueFull",
        "edupulse_events.errors.ServerNotFound",
    ],
    "testing": [
        "edupulse_events.testing.NatsServer",
        "edupulse_events.testing.NatsCluster",
        "edupulse_events.testing.nats_server_binary",
        "edupulse_events.testing.free_port",
        "edupulse_events.testing.release_port",
    ],
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_docs_build_strict_with_a_page_per_area(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds and gives each area a page documenting its public names, and no private ones."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr

    index = (site / "index.html").read_text(encoding="utf-8")
    for page, names in PAGES.items():
        assert f'href="{page}/"' in index, f"the index does not link the {page} page"
        html = (site / page / "index.html").read_text(encoding="utf-8")
        ids = set(re.findall(r'id="(edupulse_events[\w.]*)"', html))
        missing = [name for name in names if name not in ids]
        assert not missing, f"{page}: not documented: {missing}"
        assert all(f">{name.rsplit('.', 1)[-1]}<" in html for name in names), f"{page}: a heading lacks its name"
        private = sorted(i for i in ids if any(_is_private(part) for part in i.split(".")))
        assert not private, f"{page}: documents private names: {private}"
    assert not list(site.rglob("*.py")), "the griffe extension in docs/ was copied into the site"
    performance = (site / "performance" / "index.html").read_text(encoding="utf-8")
    assert performance.count('class="mermaid"') == 2, "the throughput charts are not rendered as mermaid"


def test_the_readme_fits_a_few_screens_and_links_every_guide() -> None:
    """The README has at most 250 lines and links each guide page, which is in the site's nav."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") : config.index("\nmarkdown_extensions:")]
    for page in GUIDES:
        assert f"(docs/{page}.md)" in readme, f"the README does not link docs/{page}.md"
        assert f": {page}.md\n" in nav, f"{page}.md is not in mkdocs.yml's nav"


def test_guide_pages_have_substance() -> None:
    """Every guide page holds prose of its own (not a pointer back to the README) and tables, code or lists."""
    for page in GUIDES[:-1]:  # development.md: the test command's parts, a table
        text = (ROOT / "docs" / f"{page}.md").read_text(encoding="utf-8")
        prose = [line for line in text.splitlines() if line and not line.startswith(("#", ":::", "|", "```", "    "))]
        assert len(" ".join(prose)) > 1500, f"docs/{page}.md is a stub"
        assert "is the project's `README.md`" not in text
        assert any(mark in text for mark in ("|---", "```", "\n- ")), f"docs/{page}.md: no table, example or list"


def test_the_performance_charts_are_drawn_from_the_benchmark_json() -> None:
    """docs/performance.md's charts are exactly what benchmarks/chart.py draws from the dated throughput run."""
    run = json.loads(THROUGHPUT_RUN.read_text(encoding="utf-8"))
    drawn = chart.charts(run)
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert f"{chart.START}\n{drawn}{chart.END}" in page, "run: python benchmarks/chart.py RUN.json --update PAGE"
    for name, label in chart.GROUPS["JetStream"]:
        assert f'"{label}"' in drawn
        assert str(round(run["rates"][name]["median"])) in drawn
    measured = THROUGHPUT_RUN.stem.removeprefix("throughput-")
    assert measured in drawn, "the chart does not say when its figures were measured"
