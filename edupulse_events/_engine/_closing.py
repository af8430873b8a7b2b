"""What a publisher does with what it still holds when it closes or its thread crashes
(`fail_taken`), and what it says when it closes: how many events it delivered, and the ids (never the
payloads) of every event it could not confirm — those close() gave up on, and those that failed
earlier (a deadline, a refusal, a crash), which fire-and-forget callers never looked at. It says
what is known of them: not confirmed, which is not "not stored" (an event whose ack was lost, or
that reached the broker after its deadline, is in the stream), so republishing the same envelopes
within the stream's duplicate window is the safe remedy: JetStream stores each once. Ids go 500 to
a line, so log pipelines keep each line whole."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import PublisherCrashed
from ..stats import PublisherStats
from ._outstanding import undelivered

if TYPE_CHECKING:
    from .._pipeline._routing import Item
    from .._spool._spooling import Spooling

__all__ = ["fail_taken", "log_closed"]

log = logging.getLogger("edupulse_events")
IDS_PER_LINE = 500
#: What an operator may do about events that were not confirmed (some may be stored: see above).
_REMEDY = (
    ": possibly stored (an ack lost, or the broker back after the deadline); republish the same envelopes "
    "within the stream's duplicate window and JetStream stores each once"
)


def fail_taken(
    items: Iterable[Item], crash: PublisherCrashed | None, spooling: Spooling | None
) -> tuple[list[str], str, int]:
    """Fail events a publisher took back from its queue (at close() or after a crash): with the
    crash's error, or `PublisherClosed`; a spool keeps the transient ones instead. Returns the
    ids failed, their error's class name, and how many the spool kept."""
    pairs: list[tuple[Item, BaseException]] = [(item, undelivered(item, crash, "sent")) for item in items]
    kept = 0
    if spooling is not None and pairs:
        pairs, kept = spooling.keep(pairs)
    ids, name = [], ""
    for item, error in pairs:
        try:
            item.future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            continue
        ids.append(item.event_id)
        name = type(error).__name__
    return ids, name, kept


def log_closed(
    stats: PublisherStats, abandoned: list[str], failed_before: Iterable[str], spooling: Spooling | None = None
) -> None:
    """Log the closing summary; ``abandoned``: failed by close() itself; ``failed_before``: the
    ids of events that failed earlier (possibly including ``abandoned`` ones, left out here);
    ``spooling``: the spool (closed), whose events left on disk the next publisher there sends."""
    waiting = spooling.store.count if spooling is not None else 0
    given_up = set(abandoned)
    earlier = [event_id for event_id in failed_before if event_id not in given_up]
    if waiting and spooling is not None:
        log.warning(
            "publisher closed: %d events acknowledged, %d failed; %d wait in the spool %s (the next publisher "
            "there sends them)",
            stats.acknowledged,
            stats.failed,
            waiting,
            spooling.store.path,
        )
        if not abandoned and not earlier:
            return
    elif not abandoned and not earlier:
        log.info(
            "publisher closed: %d events acknowledged, %d failed, none left undelivered",
            stats.acknowledged,
            stats.failed,
        )
        return
    if abandoned:
        _log_ids(
            f"publisher closed: {stats.acknowledged} events acknowledged, {stats.failed} failed; "
            f"{len(abandoned)} were not confirmed{_REMEDY} (event ids{_more(abandoned)}: {{ids}})",
            "not confirmed (event ids {first}-{last} of {total}): {ids}",
            abandoned,
        )
    else:
        log.error("publisher closed: %d events acknowledged, %d failed", stats.acknowledged, stats.failed)
    if earlier:
        counted = "" if stats.failed - len(abandoned) <= len(earlier) else f" (the last {len(earlier)})"
        _log_ids(
            f"{len(earlier)} events failed before close{counted} and were not confirmed{_REMEDY} "
            f"(event ids{_more(earlier)}: {{ids}})",
            "failed before close (event ids {first}-{last} of {total}): {ids}",
            earlier,
        )


def _more(ids: list[str]) -> str:
    return f" {IDS_PER_LINE} of {len(ids)}, the rest on the next lines" if len(ids) > IDS_PER_LINE else ""


def _log_ids(first_line: str, next_lines: str, ids: list[str]) -> None:
    log.error(first_line.replace("{ids}", ", ".join(ids[:IDS_PER_LINE])))
    for start in range(IDS_PER_LINE, len(ids), IDS_PER_LINE):
        chunk = ids[start : start + IDS_PER_LINE]
        log.error(next_lines.format(first=start + 1, last=start + len(chunk), total=len(ids), ids=", ".join(chunk)))
