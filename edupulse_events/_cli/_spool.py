"""The ``spool`` command group of the command line: ``spool inspect|replay|purge DIR``.

This module owns those three commands (their arguments, output and exit codes); `__main__`
only registers them with `add_spool_commands`. The spool files themselves are `_spool._files`'
(what each holds, whose it is, deleting orphans) and delivering them is `NatsPublisher`'s:
``replay`` is a publisher on the directory that adopts the orphaned files and drains its spool.

Special files: ``inspect`` and ``purge`` never open a spool name that is not a regular file (a
FIFO, a symlink: listed with the reason, left alone), so they end on any directory; both warn
when a publisher would refuse the directory (`_spool._files.check_directory`), and ``replay``,
being a publisher, refuses it (exit 2).

Exit codes: 0 done; 1 replay left events undelivered or the broker failed; 2 bad usage (DIR
is not a directory or not one to trust, the broker settings are missing or invalid).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import broker_config, plural, printable, redact, seconds

if TYPE_CHECKING:
    from .._spool._files import SpoolFileInfo
    from ..config import PublisherConfig

__all__ = ["add_spool_commands", "age", "owner_pid"]

_NAME = re.compile(r"^spool-(\d+)-[0-9a-f]+\.db$")


def add_spool_commands(commands: Any) -> None:
    """Register ``spool inspect|replay|purge`` on ``commands`` (the ``add_subparsers()`` result)."""
    spool = commands.add_parser(
        "spool",
        help="inspect, replay or purge a durable spool directory",
        description="Work on a spool directory (PublisherConfig.spool_dir) from outside the application.",
    )
    sub = spool.add_subparsers(dest="spool_command", required=True, metavar="{inspect,replay,purge}")
    inspect = sub.add_parser(
        "inspect",
        help="list the spool files, their owners and what they hold",
        description="One line per spool file: owner pid (or 'gone'), events, parked, bytes, age of the oldest and "
        "newest event. A live owner's file is in use: its counts are readable once the owner is gone.",
    )
    inspect.add_argument("dir", metavar="DIR", help="the spool directory")
    inspect.add_argument("--json", action="store_true", help="print a JSON list instead")
    inspect.set_defaults(handler=_inspect)
    replay = sub.add_parser(
        "replay",
        help="deliver the events of orphaned spool files to the broker",
        description="Adopt every orphaned spool file in DIR (their owners are gone) and deliver its events, each "
        "with its stored subject and Nats-Msg-Id. The broker comes from --url/--subject/--stream or the "
        "EDUPULSE_EVENT_BROKER_* variables (credentials: _TOKEN, _NKEY_SEED, _CREDS or in the URL; never "
        "printed). Exit 0 if everything was delivered, 1 otherwise.",
    )
    replay.add_argument("dir", metavar="DIR", help="the spool directory")
    replay.add_argument("--url", help="NATS server URL(s) (default: $EDUPULSE_EVENT_BROKER_URL)")
    replay.add_argument(
        "--subject",
        help="subject template for this publisher (default: $EDUPULSE_EVENT_BROKER_SUBJECT); the stream, if any, "
        "must capture it; replayed events keep their stored subject, and a file with a row whose subject "
        "does not fit this template (or with headers the library does not write) is moved aside, not replayed",
    )
    replay.add_argument("--stream", help="JetStream stream to check (default: $EDUPULSE_EVENT_BROKER_STREAM)")
    replay.add_argument("--timeout", type=seconds, default=60.0, help="seconds to wait for delivery (default 60)")
    replay.set_defaults(handler=_replay)
    purge = sub.add_parser(
        "purge",
        help="delete orphaned spool files (never a live owner's)",
        description="Delete the spool files whose owner is gone, with their events (undelivered: they are lost). "
        "Asks first unless --yes. A live owner's file is never deleted.",
    )
    purge.add_argument("dir", metavar="DIR", help="the spool directory")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.set_defaults(handler=_purge)


def owner_pid(path: Path) -> int | None:
    """The pid in a ``spool-<pid>-<hex>.db`` name (the process that created the file)."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def age(accepted: float | None, now: float) -> str:
    """How long ago ``accepted`` (a time.time()) was, as ``45s``, ``3m12s``, ``2h05m`` or ``3d04h``."""
    if accepted is None:
        return "-"
    s = max(0, int(now - accepted))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _directory(args: argparse.Namespace) -> Path | None:
    """DIR, or None after saying on stderr why it is not a directory."""
    path = Path(args.dir).expanduser()
    if not path.is_dir():
        print(f"edupulse-events spool {args.spool_command}: {str(path)!r} is not a directory", file=sys.stderr)
        return None
    return path


def _files(directory: Path) -> list[SpoolFileInfo]:
    from .._spool._files import spool_files

    return spool_files(directory)


def _owner(info: SpoolFileInfo) -> str:
    if not info.owner_alive:
        return "gone"
    pid = owner_pid(info.path)
    return "?" if pid is None else str(pid)


def _inspect(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if directory is None:
        return 2
    infos, now = _files(directory), time.time()
    if args.json:
        print(json.dumps([_as_json(info, now) for info in infos], indent=2))
        return 0
    names = {info.path: printable(info.path.name) for info in infos}  # file names are anyone's: no escapes
    width = max([len(name) for name in names.values()] + [4])
    print(f"{'FILE':<{width}}  {'OWNER':>7}  {'EVENTS':>8}  {'PARKED':>8}  {'BYTES':>13}  {'OLDEST':>7}  {'NEWEST':>7}")
    for info in infos:
        head = f"{names[info.path]:<{width}}  {_owner(info):>7}  "
        if info.owner_alive:
            print(head + "in use by its live owner (its counts are readable once it is gone)")
        elif info.error is not None:
            print(head + f"unreadable: {printable(info.error)}")
        else:
            print(
                head + f"{info.count:>8,}  {info.parked:>8,}  {info.nbytes:>13,}  "
                f"{age(info.oldest, now):>7}  {age(info.newest, now):>7}"
            )
    orphans = [info for info in infos if not info.owner_alive and info.error is None]
    live = sum(info.owner_alive for info in infos)
    bad = sum(info.error is not None for info in infos)
    print(
        f"total: {sum(info.count or 0 for info in orphans):,} events, {sum(info.nbytes or 0 for info in orphans):,} "
        f"bytes in {plural(len(orphans), 'file')} with no owner; {live} in use; {bad} unreadable"
    )
    aside = _moved_aside(directory)
    if aside:
        print("moved aside as unusable (never replayed or purged; check by hand):")
        _print_reasons(aside)
    _warn_untrusted(args, directory)
    return 0


def _print_reasons(aside: list[tuple[str, str | None]]) -> None:
    for name, why in aside:
        print(f"  {printable(name)}: {printable(why or 'no reason recorded')}")


def _warn_untrusted(args: argparse.Namespace, directory: Path) -> None:
    """Say on stderr if a publisher would refuse ``directory`` (not ours, or others may write in it)."""
    from .._spool._files import check_directory
    from ..errors import ConfigError

    try:
        check_directory(directory)
    except ConfigError as exc:
        print(f"edupulse-events spool {args.spool_command}: warning: {printable(str(exc))}", file=sys.stderr)


def _as_json(info: SpoolFileInfo, now: float) -> dict[str, object]:
    return {
        "file": info.path.name,
        "path": str(info.path),
        "owner_pid": owner_pid(info.path),
        "owner_alive": info.owner_alive,
        "in_use": info.owner_alive,
        "events": info.count,
        "parked": info.parked,
        "bytes": info.nbytes,
        "oldest": info.oldest,
        "newest": info.newest,
        "oldest_age_seconds": None if info.oldest is None else max(0.0, now - info.oldest),
        "newest_age_seconds": None if info.newest is None else max(0.0, now - info.newest),
        "error": info.error,
    }


def _moved_aside(directory: Path) -> list[tuple[str, str | None]]:
    """Spool files an adopter found unusable and renamed ``*.db.corrupt-<UTC time>`` (kept, never replayed),
    each with the reason written beside it."""
    from .._spool._files import moved_aside

    return moved_aside(directory)


def _purge(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if directory is None:
        return 2
    infos = _files(directory)
    orphans = [info for info in infos if not info.owner_alive]
    live = len(infos) - len(orphans)
    kept = f" ({live} in use by a live owner: kept)" if live else ""
    if not orphans:
        print(f"no orphaned spool files in {directory}{kept}; nothing deleted")
        return 0
    events = sum(info.count or 0 for info in orphans)
    print(f"orphaned spool files in {directory}{kept}:")
    for info in orphans:
        what = f"unreadable ({info.error})" if info.error is not None else plural(info.count or 0, "event")
        print(printable(f"  {info.path.name}: {what}"))
    if not args.yes:
        if sys.stdin is None:
            print("edupulse-events spool purge: standard input is closed: pass --yes to delete", file=sys.stderr)
            return 2
        question = f"Delete {plural(events, 'event')} in {plural(len(orphans), 'file')}? [y/N] "
        try:
            answer = input(question)
        except EOFError:
            answer = ""
        if not sys.stdin.isatty():  # the answer was not echoed: end the question's line
            print()
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 0
    from .._spool._files import purge

    deleted = purge(directory, only={info.path for info in orphans})  # what was confirmed, nothing newer
    gone = [info.path.name for info in orphans if not os.path.lexists(info.path)]
    print(printable(f"deleted {plural(deleted, 'event')} in {plural(len(gone), 'file')}: {', '.join(gone) or '-'}"))
    odd = [info for info in orphans if os.path.lexists(info.path) and info.count is None]
    for info in odd:
        print(printable(f"  left alone: {info.path.name}: {info.error}"))
    _warn_untrusted(args, directory)
    return 0


def _config(args: argparse.Namespace, directory: Path) -> PublisherConfig:
    # connecting is part of delivering: a broker that stays unreachable fails within --timeout
    overrides: dict[str, Any] = {"spool_dir": str(directory), "connect_timeout": min(5.0, args.timeout)}
    if args.stream:
        overrides["stream"] = args.stream
    return broker_config(args.url, args.subject, **overrides)


def _replay(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, EventsError
    from ..nats_publisher import NatsPublisher

    directory = _directory(args)
    if directory is None:
        return 2
    try:
        config = _config(args, directory)
    except ConfigError as exc:
        print(f"edupulse-events spool replay: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"replaying orphaned spool files in {directory} to {config.redacted_servers}")
    aside = {name for name, _ in _moved_aside(directory)}
    publisher = NatsPublisher(config)
    drained = refused = False
    try:
        publisher.check()  # an unreachable broker: say so before touching any spool file
        publisher.start()  # opens this process's spool, which adopts the orphaned files
        drained = publisher.drain_spool(args.timeout)
    except ConfigError as exc:  # the directory is not to be trusted (`_spool._files.check_directory`)
        refused = True
        print(f"edupulse-events spool replay: {redact(str(exc), config)}", file=sys.stderr)
    except (EventsError, OSError) as exc:
        print(f"edupulse-events spool replay: {redact(str(exc) or type(exc).__name__, config)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("edupulse-events spool replay: interrupted", file=sys.stderr)
    finally:
        publisher.close(5.0)  # what is left stays on disk, in a file the next publisher adopts
    if refused:
        return 2
    infos = _files(directory)
    left = [info for info in infos if not info.owner_alive]
    remaining = sum(info.count or 0 for info in left)
    bad = sum(info.error is not None for info in left)
    live = len(infos) - len(left)
    print(f"replayed: {plural(publisher.stats().replayed, 'event')} delivered")
    print(
        f"remaining: {plural(remaining, 'event')} in {plural(len(left) - bad, 'file')}"
        + (f"; {bad} unreadable" if bad else "")
        + (f"; {live} in use by a live owner (it delivers its own)" if live else "")
    )
    unusable = [(name, why) for name, why in _moved_aside(directory) if name not in aside]
    if unusable:
        print("moved aside as unusable (not replayed; check by hand):")
        _print_reasons(unusable)
    return 0 if drained and remaining == 0 and not bad and not unusable else 1
