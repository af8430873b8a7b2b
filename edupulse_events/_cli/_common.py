"""What the command line's commands share: the broker settings and how they are reported.

This module owns the ``--url/--subject/--stream`` options common to ``publish``, ``tail`` and
``spool replay``, turning them plus the ``EDUPULSE_EVENT_BROKER_*`` variables into a
`PublisherConfig` (`broker_config`: `PublisherConfig.from_env` does the reading and checking),
keeping credentials out of everything printed (`redact`) and terminal control characters out
of human output (`printable`: event fields, subjects and broker messages are not trusted to be
harmless on a terminal), the progress bar (`progress_bar`: tqdm,
the optional ``cli`` extra, only on a terminal), and the small argument types and helpers the
command modules use (`seconds`, `uuid_argument`, `plural`, `count_lines`), and ``--import``
(`import_codec`): the modules that register the application's event types and, as
``MODULE:NAME``, the `EventRegistry` (or `Codec`) they are registered in, which the command then
encodes, decodes and describes with.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..codec import Codec
    from ..config import PublisherConfig
    from ..events import EventRegistry

__all__ = [
    "UNUSED_SUBJECT",
    "add_broker_arguments",
    "add_import_argument",
    "broker_config",
    "count_lines",
    "import_codec",
    "plural",
    "printable",
    "progress_bar",
    "redact",
    "seconds",
    "uuid_argument",
]

#: The subject template a command that never publishes (``tail``) gives `PublisherConfig`,
#: which requires one, when none is configured.
UNUSED_SUBJECT = "edupulse.unused"


#: What a terminal may act on rather than show: C0 and C1 controls (ESC, CSI, BEL, CR, ...), DEL,
#: the Unicode line and paragraph separators and bidirectional overrides/isolates (text shown
#: reordered), and lone surrogates (which cannot be written as UTF-8).
_CONTROLS = r"\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_CONTROL = re.compile(rf"[\x00-\x1f{_CONTROLS}]")
_CONTROL_KEEPING_NEWLINES = re.compile(rf"[\x00-\x09\x0b-\x1f{_CONTROLS}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` safe to show on a terminal: each control character (see `_CONTROL`) written as
    ``\\xNN`` or ``\\uNNNN``; ``newlines`` keeps ``\\n`` (multi-line output such as ``--pretty``)."""
    return (_CONTROL_KEEPING_NEWLINES if newlines else _CONTROL).sub(_escape, text)


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def uuid_argument(text: str) -> uuid.UUID:
    """An argparse type: a UUID."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def plural(n: int, word: str) -> str:
    """``1 file``, ``2 files``, ``1,234 events``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def broker_config(
    url: str | None,
    subject: str | None,
    *,
    subject_required: bool = True,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> PublisherConfig:
    """The broker settings: ``url`` and ``subject`` (a command's ``--url``/``--subject``) win over
    ``EDUPULSE_EVENT_BROKER_URL``/``_SUBJECT``; the credentials (``_TOKEN``, ``_NKEY_SEED``,
    ``_CREDS``), ``_STREAM`` and the rest come from the environment; ``overrides`` are
    `PublisherConfig` fields. Without a subject template, `UNUSED_SUBJECT` unless
    ``subject_required``. Raises `ConfigError` saying what is missing or invalid."""
    from ..config import ENV_PREFIX, PublisherConfig
    from ..errors import ConfigError

    env = dict(os.environ if environ is None else environ)  # from_env wants URL and SUBJECT in it
    for name, value in (("URL", url), ("SUBJECT", subject)):
        if value:
            env[ENV_PREFIX + name] = value
        elif not env.get(ENV_PREFIX + name, "").strip():
            if name == "SUBJECT" and not subject_required:
                env[ENV_PREFIX + name] = UNUSED_SUBJECT
            else:
                raise ConfigError(f"no broker {name.lower()}: pass --{name.lower()} or set {ENV_PREFIX}{name}")
    return PublisherConfig.from_env(env, **overrides)


def redact(message: str, config: PublisherConfig) -> str:
    """``message`` on one line, with any server URL or secret of ``config`` hidden (errors should
    not hold any: this is the last line of defence before printing)."""
    from ..config import redact_url

    for server in config.servers:
        message = message.replace(server, redact_url(server))
    for secret in (config.auth_token, config.password, config.nkey_seed):
        if secret:
            message = message.replace(secret, "***")
    return " ".join(message.split())


def add_broker_arguments(parser: argparse.ArgumentParser, *, subject: str, stream: str) -> None:
    """``--url``, ``--subject`` and ``--stream``, with what the subject and stream mean to this command."""
    parser.add_argument("--url", help="NATS server URL(s) (default: $EDUPULSE_EVENT_BROKER_URL)")
    parser.add_argument("--subject", help=subject)
    parser.add_argument("--stream", help=stream)


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable): modules that register the application's own event types."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE[:NAME]",
        help="import MODULE first (repeatable): where the application registers its own event types "
        "with @register_event; MODULE:NAME also uses the EventRegistry (or Codec) NAME of MODULE, for "
        "types registered in a registry of their own (the four built-in types are always known)",
    )


def import_codec(names: Sequence[str]) -> tuple[Codec | None, str | None]:
    """Import each ``--import`` module; the codec to use (None: the default one, when no
    ``MODULE:NAME`` names a registry) and None, or None and why not (one line).

    The codec's registry holds the default registry's types (built-in and ``@register_event``
    ones) and those of every registry named, so built-in and custom events read alike."""
    from ..codec import Codec
    from ..events import EventRegistry

    registries: list[EventRegistry] = []
    for name in names:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported, not raised
            return None, f"cannot import {module_name!r}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        if not attribute:
            continue
        found = getattr(module, attribute, None)
        found = found.registry if isinstance(found, Codec) else found
        if not isinstance(found, EventRegistry):
            return None, f"--import {name}: {module_name}.{attribute} is not an EventRegistry or a Codec"
        registries.append(found)
    if not registries:
        return None, None
    try:
        return Codec(_merged(registries)), None
    except ValueError as exc:  # InvalidEvent: one wire name, two classes
        return None, f"--import: {' '.join(str(exc).split())}"


def _merged(registries: Sequence[EventRegistry]) -> EventRegistry:
    """One registry with the default registry's types and those of ``registries``."""
    from ..errors import InvalidEvent
    from ..events import EventRegistry, default_registry

    merged = EventRegistry(include_builtins=False)
    for registry in (default_registry, *registries):
        for entry in registry:
            known = merged.get(entry.name)
            if known is None:
                merged.register(entry.cls, entry.name)
            elif known.cls is not entry.cls:
                raise InvalidEvent(
                    f"event type name {entry.name!r} is {known.cls.__qualname__} in one registry "
                    f"and {entry.cls.__qualname__} in another"
                )
    return merged


def count_lines(path: str) -> int:
    """How many lines a file holds (a last line without a newline counts), in 1 MiB reads."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def progress_bar(total: int | None, *, quiet: bool, unit: str, desc: str, stream: IO[str] | None = None) -> Any | None:
    """A tqdm bar on ``stream`` (default stderr) with rate and ETA (``total`` None: count and
    rate only); None when ``quiet``, when ``stream`` is not a terminal, or without tqdm (the
    ``cli`` extra): the core never needs it."""
    out = sys.stderr if stream is None else stream
    if quiet or out is None or not out.isatty():  # None: started with stderr closed
        return None
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    return tqdm.tqdm(total=total, file=out, unit=unit, desc=desc, dynamic_ncols=True, mininterval=0.2)
