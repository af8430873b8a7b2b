"""The ``schema`` command group of the command line: ``schema jsonschema|asyncapi``.

This module owns those two commands (their arguments, output and exit codes); `__main__`
only registers them with `add_schema_commands`. The documents themselves are
:mod:`edupulse_events.schema`'s.

Exit codes: 0 printed (or written to ``--output``); 1 the output file could not be written;
2 bad usage (a subject or CloudEvents source the publisher would refuse, a module given to
``--import`` that does not import, or whose ``MODULE:NAME`` is not a registry). The documents
describe the default registry's event types, plus those of the registries ``--import
MODULE:NAME`` names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ._common import add_import_argument, import_codec

if TYPE_CHECKING:
    from ..events import EventRegistry

__all__ = ["add_schema_commands"]

_SUBJECT_VARIABLE = "EDUPULSE_EVENT_BROKER_SUBJECT"


def add_schema_commands(commands: Any) -> None:
    """Register ``schema jsonschema|asyncapi`` on ``commands`` (the ``add_subparsers()`` result)."""
    schema = commands.add_parser(
        "schema",
        help="print the wire's JSON Schema or an AsyncAPI document",
        description="Describe the wire for other languages and tools, generated from the event registry: the "
        "built-in events plus any registered by the modules given to --import.",
    )
    sub = schema.add_subparsers(dest="schema_command", required=True, metavar="{jsonschema,asyncapi}")
    jsonschema = sub.add_parser(
        "jsonschema",
        help="the JSON Schema (draft 2020-12) of the envelope with every event type",
        description="Print one JSON Schema (draft 2020-12) for the JSON envelope with every registered event "
        "type, as the codec reads it.",
    )
    _common(jsonschema)
    jsonschema.set_defaults(handler=_jsonschema)
    asyncapi = sub.add_parser(
        "asyncapi",
        help="an AsyncAPI 3.0 document: subject, headers and messages",
        description="Print an AsyncAPI 3.0.0 document for a publisher: the subject (template) as a channel, the "
        "send operation (with JetStream, its acknowledgement), one message per event type with its headers.",
    )
    asyncapi.add_argument(
        "--subject",
        help=f"subject template using {{tenant}} and {{type}} (default: ${_SUBJECT_VARIABLE}, else "
        "edupulse.{tenant}.{type})",
    )
    asyncapi.add_argument("--core", action="store_true", help="core NATS instead of JetStream (no acknowledgement)")
    asyncapi.add_argument("--host", default="localhost:4222", help="the server's host[:port] (default localhost:4222)")
    asyncapi.add_argument("--cloudevents", action="store_true", help="the publisher sends the CloudEvents headers too")
    asyncapi.add_argument(
        "--cloudevents-source",
        metavar="URI",
        help="with --cloudevents: its cloudevents_source (default urn:edupulse:events)",
    )
    _common(asyncapi)
    asyncapi.set_defaults(handler=_asyncapi)


def _common(parser: argparse.ArgumentParser) -> None:
    add_import_argument(parser)
    parser.add_argument(
        "--indent", type=_indent, default=2, metavar="N", help="indent by N spaces (default 2; 0: one line)"
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")


def _indent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 16:
        raise argparse.ArgumentTypeError(f"expected a number of spaces in 0..16, got {text!r}")
    return value


def _fail(args: argparse.Namespace, message: str) -> None:
    print(f"edupulse-events schema {args.schema_command}: {' '.join(message.split())}", file=sys.stderr)


def _imported(args: argparse.Namespace) -> tuple[bool, EventRegistry | None]:
    """Import the ``--import`` modules: whether they imported (else after saying why on stderr), and
    the registry to describe (None: the default one)."""
    codec, problem = import_codec(args.imports)
    if problem is not None:
        _fail(args, problem)
    return problem is None, None if codec is None else codec.registry


def _emit(args: argparse.Namespace, document: dict[str, Any]) -> int:
    if args.indent:
        text = json.dumps(document, indent=args.indent, ensure_ascii=False)
    else:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    if args.output is None:
        sys.stdout.write(text + "\n")
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    except OSError as exc:
        _fail(args, f"cannot write {args.output!r}: {exc.strerror or exc}")
        return 1
    return 0


def _jsonschema(args: argparse.Namespace) -> int:
    from ..schema import json_schema

    imported, registry = _imported(args)
    if not imported:
        return 2
    return _emit(args, json_schema(registry))


def _asyncapi(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..schema import DEFAULT_SUBJECT, asyncapi

    imported, registry = _imported(args)
    if not imported:
        return 2
    subject = args.subject or os.environ.get(_SUBJECT_VARIABLE, "").strip() or DEFAULT_SUBJECT
    options: dict[str, Any] = {"jetstream": not args.core, "host": args.host, "cloudevents": args.cloudevents}
    if args.cloudevents_source is not None:
        options["cloudevents_source"] = args.cloudevents_source
    try:
        document = asyncapi(subject, registry=registry, **options)
    except ConfigError as exc:
        _fail(args, str(exc))
        return 2
    return _emit(args, document)
