"""The publisher's side of the durable spool (`PublisherConfig.spool_dir`): when events go to
disk, how their futures resolve, and how spooled events come back. The files themselves
(SQLite in WAL mode, one database per process, adoption of dead processes' databases) are
`_spool`'s.

- write-ahead: `accept` writes each event (group commit across caller threads) before
  publish() queues it, so an event whose publish() returned survives a killed process;
  acknowledged events' rows are deleted (`acked`, batched once per loop iteration).
- overflow: `overflow` writes an event the queue has no room for (while the broker is away),
  instead of raising `QueueFull`.
- both: `keep` takes events that would fail with a transient error (deadline passed while the
  broker was away, close() or exit, a crash): write-ahead parks their rows, overflow writes
  them; their futures resolve with `SPOOLED` (``PublishAck(spooled=True)``). Permanent
  refusals still fail (and their rows go). `claim` turns parked rows, and rows adopted from
  processes that died, into items sent again with the same ``Nats-Msg-Id``, oldest first.
- atomic batches (`Group`): written all or none (`accept_many`, `refused`, `keep`), claimed
  whole and replayed as one `Group` again (``item.replay``: a batch the stream holds already
  resolves as stored).

Rows adopted from other processes' files are not trusted: `_pipeline._encoded.RowCheck` lets
through only a row this publisher could have written (its subject template's subjects, the
routing and trace-context headers, consistent with the subject and the event id); a file with
any other row is moved aside whole, with the reason (`Spool.adopt_orphans`).

Replayed items belong to no caller: their futures are private, they count in ``replayed``,
never in ``acknowledged``/``failed`` (so flush() keeps counting this publisher's own events).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._pipeline._encoded import RowCheck
from .._pipeline._routing import Group, Item
from ..config import PublisherConfig
from ..errors import BrokerUnavailable, PublisherClosed, PublisherCrashed, PublishTimeout, SpoolError, SpoolFull
from ..futures import PublishAck, new_future

if TYPE_CHECKING:
    from ._store import Spool, Stored

__all__ = ["DELETE_DELAY", "SPOOLED", "Spooling"]

log = logging.getLogger("edupulse_events")

#: The result of a future whose event waits in the spool.
SPOOLED = PublishAck(None, None, False, True)
#: Errors that mean "not delivered yet", not "never deliverable": those events are kept.
_TRANSIENT = (PublishTimeout, PublisherClosed, PublisherCrashed, BrokerUnavailable)
#: Rows of acknowledged events are deleted this many at once, or after this many seconds (a kill
#: before that replays them: JetStream stores them once, as their Nats-Msg-Id is the same).
DELETE_BATCH = 4096
DELETE_DELAY = 0.2
#: JetStream's default duplicate window: a replay older than this may be stored twice.
DUPLICATE_WINDOW = 120.0

Pair = tuple[Item, BaseException]


class Spooling:
    """One process's spool, as one publisher uses it."""

    def __init__(self, config: PublisherConfig, condition: threading.Condition) -> None:
        assert config.spool_dir is not None
        from ._store import Spool  # sqlite3 is imported only by publishers that spool

        self.write_ahead = config.spool_mode == "write-ahead"
        self.store: Spool = Spool(
            config.spool_dir,
            max_bytes=config.spool_max_bytes,
            fsync=config.spool_fsync,
            check=RowCheck(config.subject, cloudevents=config.cloudevents),
        )
        self._condition = condition
        self._delivery_timeout = config.delivery_timeout
        self._lock = threading.Lock()
        #: Events resolved as spooled, replayed events acknowledged, replays past the duplicate
        #: window, replays the broker refused for good (their rows deleted, logged).
        self.kept = 0
        self.replayed = 0
        self.late = 0
        self.dropped = 0
        #: Rows may be waiting to be replayed (cleared when a claim finds fewer than it asked).
        self.replay_pending = False
        self._to_delete: list[int] = []
        self._to_delete_bytes = 0
        self._next_delete = 0.0
        self._emptied = threading.Condition()
        self.adopt()

    # ----------------------------------------------------------------- caller threads
    def accept(self, item: Item) -> None:
        """write-ahead: put ``item`` on disk (returns once committed); `SpoolFull` if it does not fit."""
        item.spool_id = self.store.append(item.subject, item.headers, item.payload, item.event_id, time.time())

    def accept_many(self, items: Sequence[Item]) -> None:
        """write-ahead, `publish_many`: put ``items`` on disk in one transaction; `SpoolFull`
        (nothing left written) if they do not all fit."""
        ids = self.store.append_many([_row(item) for item in items], parked=False, batches=_batches(items))
        if len(ids) < len(items):
            if ids:
                self.store.delete(ids, sum(item.size for item in items[: len(ids)]))
            raise SpoolFull(
                f"the spool {self.store.path} has no room for these {len(items)} events ({self.store.max_bytes} bytes)"
            )
        for item, spool_id in zip(items, ids, strict=True):
            item.spool_id = spool_id

    def refused(self, items: Sequence[Item], queued: int) -> bool:
        """`publish_many` queued only the first ``queued`` of ``items``. Overflow: put the rest on
        disk, resolved as spooled (True; `SpoolFull` with the ``futures`` accepted if the disk has
        no room for all). Write-ahead: remove the rest's rows (False: the caller raises `QueueFull`)."""
        rest = items[queued:]
        if self.write_ahead:
            self.store.delete([item.spool_id for item in rest], sum(item.size for item in rest))
            for item in rest:
                item.spool_id = 0
            return False
        if items[0].group is not None:  # an atomic batch, queued whole or not at all: on disk whole
            self._overflow_batch(items)
            return True
        for index, item in enumerate(rest, queued):
            try:
                self.overflow(item)
            except SpoolFull as exc:
                exc.futures = [item.future for item in items[:index]]
                raise
        return True

    def unaccept(self, item: Item) -> None:
        """write-ahead: publish() refused ``item`` after all (the queue stayed full): remove its row."""
        self.store.delete((item.spool_id,), item.size)
        item.spool_id = 0

    def overflow(self, item: Item) -> None:
        """overflow: the queue has no room: put ``item`` on disk and resolve its future as spooled."""
        ids = self.store.append_many([_row(item)], parked=True)
        if not ids:
            raise SpoolFull(f"the spool {self.store.path} is full ({self.store.max_bytes} bytes)")
        self.replay_pending = True
        with self._lock:
            self.kept += 1
        item.future.set_result(SPOOLED)

    def _overflow_batch(self, items: Sequence[Item]) -> None:
        """overflow: an atomic batch the queue has no room for goes to disk whole (resolved as
        spooled), or `SpoolFull` with no futures (none of it accepted)."""
        if not self.store.append_many([_row(item) for item in items], parked=True, batches=_batches(items)):
            raise SpoolFull(
                f"the spool {self.store.path} has no room for this atomic batch of {len(items)} events "
                f"({self.store.max_bytes} bytes)"
            )
        self.replay_pending = True
        with self._lock:
            self.kept += len(items)
        for item in items:
            item.future.set_result(SPOOLED)

    # ----------------------------------------------------------------- publisher thread (and close())
    @staticmethod
    def keeps(item: Item, exc: BaseException) -> bool:
        """Whether an event failing with ``exc`` goes to the spool instead (replays always go back)."""
        return isinstance(exc, _TRANSIENT)

    def keep(self, pairs: Sequence[Pair]) -> tuple[list[Pair], int]:
        """Keep on disk the events of ``pairs`` whose error is transient (an atomic batch's all
        together, or none) and resolve their futures as spooled; returns the pairs to fail as
        before (permanent errors, or no room on disk) and how many futures it resolved."""
        kept: list[Item] = []
        rest: list[Pair] = []
        for item, exc in pairs:
            if self.keeps(item, exc):
                kept.append(item)
            elif item.replay:
                self._drop(item, exc)
            else:
                if item.spool_id:
                    self._forget(item)
                rest.append((item, exc))
        on_disk = [item for item in kept if item.spool_id]
        new = _together([item for item in kept if not item.spool_id])
        try:
            if on_disk:
                self.store.park([item.spool_id for item in on_disk])
            written = (
                self.store.append_many([_row(item) for item in new], parked=True, batches=_batches(new)) if new else []
            )
        except SpoolError as exc:
            log.error("could not keep %d events in the spool: %s", len(kept), exc)
            return rest + [(item, error) for item, error in pairs if item in kept and not item.replay], 0
        for item, spool_id in zip(new, written, strict=False):
            item.spool_id = spool_id
        if len(written) < len(new):
            log.error("the spool %s is full: %d events could not be kept", self.store.path, len(new) - len(written))
        unkept = {id(item) for item in new[len(written) :]}
        rest += [(item, exc) for item, exc in pairs if id(item) in unkept]
        if kept:
            self.replay_pending = True
        resolved = 0
        for item in kept:
            if id(item) in unkept or item.replay:
                continue
            if not item.future.resolved():
                item.future.set_result(SPOOLED)
                resolved += 1
        with self._lock:
            self.kept += resolved
        return rest, resolved

    def acked(self, items: Sequence[Item]) -> int:
        """Events acknowledged: their rows go (at the next `flush`); returns how many were replays."""
        replays = 0
        delete = self._to_delete
        nbytes = 0
        for item in items:
            if item.spool_id:
                delete.append(item.spool_id)
                nbytes += item.size
                if item.replay:
                    replays += 1
        self._to_delete_bytes += nbytes
        if replays:
            with self._lock:
                self.replayed += replays
        return replays

    def flush(self, force: bool = True) -> bool:
        """Delete the rows of events acknowledged since the last flush (one transaction); unless
        ``force``, only once `DELETE_BATCH` rows or `DELETE_DELAY` seconds have gathered (a delete
        per ack run would double the spool's cost). Returns whether rows are left to delete."""
        if not force and len(self._to_delete) < DELETE_BATCH and time.monotonic() < self._next_delete:
            return bool(self._to_delete)
        self._next_delete = time.monotonic() + DELETE_DELAY
        if self._to_delete:
            ids, nbytes, self._to_delete, self._to_delete_bytes = self._to_delete, self._to_delete_bytes, [], 0
            try:
                self.store.delete(ids, nbytes)
            except SpoolError:  # left on disk: replayed later, stored once (same Nats-Msg-Id)
                log.exception("could not delete %d acknowledged events from the spool", len(ids))
            if not self.store.count:
                with self._emptied:
                    self._emptied.notify_all()
        return False

    @property
    def pending(self) -> int:
        """Events in the spool not acknowledged yet (rows of acknowledged ones are deleted in batches)."""
        return max(0, self.store.count - len(self._to_delete))

    def wait_empty(self, timeout: float | None) -> bool:
        """Wait until the spool holds no event; False if ``timeout`` ran out first."""
        with self._emptied:
            return self._emptied.wait_for(lambda: not self.store.count, timeout)

    def claim(self, limit: int) -> list[Item]:
        """Up to ``limit`` spooled events to send again (oldest first), as items with private futures;
        the events of an atomic batch come whole (past ``limit`` if need be) and go as one again."""
        rows = self.store.claim_parked(limit)
        if len(rows) < limit:
            self.replay_pending = False
        if not rows:
            return []
        deadline, wall = time.monotonic() + self._delivery_timeout, time.time()
        items: list[Item] = []
        for batch, run in itertools.groupby(rows, key=lambda row: row.batch):
            replays = [self._replay(row, deadline) for row in run]
            if batch:  # the rows of one atomic batch (consecutive: `Spool.claim_parked`)
                Group(replays)
            items += replays
        late = sum(1 for row in rows if wall - row.accepted > DUPLICATE_WINDOW)
        if late:
            with self._lock:
                self.late += late
            log.warning(
                "replaying %d spooled events older than JetStream's duplicate window (%.0f s): "
                "any of them that reached the stream before may be stored twice",
                late,
                DUPLICATE_WINDOW,
            )
        log.info("replaying %d spooled events from %s", len(items), self.store.path)
        return items

    def _replay(self, row: Stored, deadline: float) -> Item:
        item = Item(new_future(self._condition), row.subject, row.headers, row.payload, row.event_id)
        item.spool_id = row.id
        item.replay = True
        item.deadline = deadline
        return item

    def adopt(self) -> None:
        """Take over the spool files of processes that died (their events are replayed from ours)."""
        try:
            if self.store.adopt_orphans() or self.store.parked_count():
                self.replay_pending = True
        except SpoolError:
            log.exception("could not adopt spool files in %s", self.store.path.parent)

    def close(self) -> None:
        self.flush()
        self.store.close()

    def discard(self, item: Item) -> None:
        """``item`` failed for good (a refusal): its row goes at the next `flush` (write-ahead)."""
        self._forget(item)
        item.spool_id = 0

    def _forget(self, item: Item) -> None:
        """``item``'s row goes at the next `flush` (acknowledged, or refused for good)."""
        self._to_delete.append(item.spool_id)
        self._to_delete_bytes += item.size

    def _drop(self, item: Item, exc: BaseException) -> None:
        self._forget(item)
        with self._lock:
            self.dropped += 1
        log.error("spooled event %s was refused for good and is dropped from the spool: %s", item.event_id, exc)


def _row(item: Item) -> tuple[bytes, bytes, bytes, str, float]:
    return (item.subject, item.headers, item.payload, item.event_id, time.time())


def _together(items: list[Item]) -> list[Item]:
    """``items`` with the events of each atomic batch together, in order, where its first is
    (they come so from `Outstanding.fail`: this only makes sure the spool gets them so)."""
    if all(item.group is None for item in items):
        return items
    first: dict[int, int] = {}
    keys = [first.setdefault(id(item.group or item), index) for index, item in enumerate(items)]
    return [items[index] for index in sorted(range(len(items)), key=keys.__getitem__)]


def _batches(items: Sequence[Item]) -> list[int] | None:
    """For `Spool.append_many`: the index of the first event of each item's atomic batch in
    ``items`` (-1: on its own); None when none is in one."""
    if all(item.group is None for item in items):
        return None
    first: dict[int, int] = {}
    return [-1 if item.group is None else first.setdefault(id(item.group), index) for index, item in enumerate(items)]
