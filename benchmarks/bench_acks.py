"""Reading acks on the fast path: nanoseconds per JetStream ack taken from the raw bytes by `AckReader`.

Usage: python benchmarks/bench_acks.py [--acks 4096] [--rounds 25] [--json PATH]

A run of ``--acks`` common acks (``MSG <inbox>.<seq> <sid> <len>`` and a ``{"stream":..,"seq":..}``
body), as one socket read delivers them, read by `AckReader` with the matchers the library uses
(`ack_matchers`: compiled once per process, the subject read up to its last dot) against the
baseline of the same reader with matchers that carry the connection's inbox literally (0.4.0 and
0.5.0, which compiled them at every connection: ~0.3 ms, ~0.7 ms in a newly forked worker).
Alternating rounds in the same run; median (min-max) per ack and the ratio.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from typing import Any

from _common import machine, write_json

from edupulse_events._nats._acks import AckReader, ack_matchers

INBOX = b"_INBOX.4fQzWc1pXbE8yHkLm2NoPq."  # nats-py's new_inbox() shape
SID = 1


class Parser:
    """What `AckReader` needs of nats-py's parser (nothing reaches it here: every byte is an ack)."""

    state = 0
    buf = bytearray()

    async def parse(self, data: bytes = b"") -> None:
        raise AssertionError("an ack was left to nats-py's parser")

    def reset(self) -> None:
        pass


def acks(n: int) -> bytes:
    bodies = [b'{"stream":"EDUPULSE","seq":%d}' % (1000 + i) for i in range(1, n + 1)]
    return b"".join(b"MSG %s%d %d %d\r\n%s\r\n" % (INBOX, i, SID, len(b), b) for i, b in enumerate(bodies, 1))


def reader(literal_inbox: bool) -> tuple[AckReader, list[Any]]:
    got: list[Any] = []
    ack_reader = AckReader(Parser(), SID, got.extend)
    if literal_inbox:  # the previous matchers, with the connection's inbox in the pattern
        head = b"MSG " + re.escape(INBOX) + rb"(\d+) " + str(SID).encode() + rb" (\d+)\r\n"
        ack_reader._common = re.compile(head + rb'(\{"stream":"([A-Za-z0-9_-]+)","seq":(\d+)\})\r\n').match  # noqa: SLF001
        ack_reader._line = re.compile(head).match  # noqa: SLF001
    else:
        assert (ack_reader._common, ack_reader._line) == ack_matchers(SID)  # noqa: SLF001
    return ack_reader, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--acks", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    data = acks(args.acks)
    names = {"the library (ack_matchers)": False, "baseline: the inbox in the pattern": True}
    readers = {name: reader(literal) for name, literal in names.items()}
    for name, (ack_reader, got) in readers.items():  # both read every ack, with its sequence
        assert ack_reader._read_acks(data) == len(data), name  # noqa: SLF001
        assert [ack[0] for ack in got] == list(range(1, args.acks + 1)), name
    per_ack: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in random.sample(list(names), len(names)):
            ack_reader, got = readers[name]
            got.clear()
            start = time.perf_counter()
            for _ in range(5):
                ack_reader._read_acks(data)  # noqa: SLF001
            per_ack[name].append((time.perf_counter() - start) / 5 / args.acks * 1e9)
    print(f"{machine()}; {args.acks} acks a read, {args.rounds} rounds")
    figures = {}
    for name, values in per_ack.items():
        figures[name] = statistics.median(values)
        print(f"{name:36} {figures[name]:6.0f} ns per ack ({min(values):.0f}-{max(values):.0f})")
    ratios = [a / b for a, b in zip(*per_ack.values(), strict=True)]
    print(f"ratio, per round: {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})")
    write_json(args.json, {"machine": machine(), "ns_per_ack": figures, "ratio": statistics.median(ratios)})


if __name__ == "__main__":
    main()
