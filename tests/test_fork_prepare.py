"""What a pre-fork server's workers inherit: a process that forks while a publisher is open (or a
uWSGI master at ``check()``) builds first what each worker's first publish would build again —
the default codec's encoders, the fast path's checks and ack matchers — and nothing otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from codec_support import GOLDEN, golden

from edupulse_events import Codec, EventRegistry, decode
from edupulse_events._nats._acks import ack_matchers
from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = len(EventRegistry())  # the built-in event types, all a fresh interpreter registers

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# In a fresh interpreter: what is built already (``warm()`` returns how many encoders were missing;
# the ack matchers are cached per subscription id), in the parent after a fork and in its child.
REPORT = """
import json, os, sys
from edupulse_events import codec
from edupulse_events._nats._acks import ack_matchers
from edupulse_events._nats._paths import fast_path_refusal

def built():  # the ack matchers only where the fast path is taken (not on nats-py before 2.10)
    fast = fast_path_refusal() is None
    return {"missing_encoders": codec.warm(), "ack_matchers": ack_matchers.cache_info().currsize, "fast": fast}

def fork_and_report(**extra):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, json.dumps(built()).encode())
        os._exit(0)
    os.close(write)
    child = json.loads(os.read(read, 4096))
    os.waitpid(pid, 0)
    print(json.dumps({"child": child, **extra}))
"""


def run(script: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", REPORT + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_fork_with_a_publisher_open_builds_what_the_children_need() -> None:
    """With a publisher open (never started), the child of a fork finds every encoder and the ack matchers built."""
    report = run(
        """
        from edupulse_events import NatsPublisher, PublisherConfig
        pub = NatsPublisher(PublisherConfig(servers="nats://127.0.0.1:1", subject="s"))  # lazy: never connects
        fork_and_report()
        """
    )
    child = report["child"]
    assert (child["missing_encoders"], child["ack_matchers"]) == (0, int(child["fast"]))


def test_a_fork_without_a_publisher_builds_nothing() -> None:
    """A process that merely imports the library (or closed its publisher) forks without building anything."""
    report = run(
        """
        from edupulse_events import NatsPublisher, PublisherConfig
        NatsPublisher(PublisherConfig(servers="nats://127.0.0.1:1", subject="s")).close()
        fork_and_report()
        """
    )
    child = report["child"]
    assert (child["missing_encoders"], child["ack_matchers"]) == (BUILTINS, 0)


@pytest.mark.parametrize(("worker_id", "prepared"), [(0, True), (1, False)], ids=["master", "lazy-apps-worker"])
def test_check_in_a_uwsgi_master_prepares_its_workers(nats_server: NatsServer, worker_id: int, prepared: bool) -> None:
    """uWSGI forks without at-fork hooks: check() prepares in its master (worker_id 0), not in a worker."""
    report = run(
        """
        import sys, types
        sys.modules["uwsgi"] = types.SimpleNamespace(worker_id=lambda: int(sys.argv[2]), has_threads=True)
        from edupulse_events import NatsPublisher, PublisherConfig
        NatsPublisher(PublisherConfig(servers=sys.argv[1], subject="s", jetstream=False)).check()
        print(json.dumps(built()))
        """,
        nats_server.url,
        str(worker_id),
    )
    expected = (0, int(report["fast"])) if prepared else (BUILTINS, 0)
    assert (report["missing_encoders"], report["ack_matchers"]) == expected


def test_warm_builds_each_missing_encoder_once_and_changes_no_bytes() -> None:
    """Codec.warm() builds the encoders not built yet (returning how many); the golden files still round-trip."""
    registry = EventRegistry()
    codec = Codec(registry)
    assert codec.warm() == BUILTINS
    assert codec.warm() == 0
    goldens = [golden(m["name"]).encode() for m in GOLDEN if m["roundtrip"] == "identical-bytes"]
    assert len({type(decode(data).data) for data in goldens}) == BUILTINS  # every built-in type is in them
    assert [codec.encode(codec.decode(data)) for data in goldens] == goldens


def test_ack_matchers_take_only_the_subscriptions_own_acks() -> None:
    """The ack matchers read the sequence after the subject's last dot, and only on their subscription id."""
    common, line = ack_matchers(1)
    body = b'{"stream":"S","seq":7}'
    ack = b"MSG _INBOX.AbC9.42 1 %d\r\n%s\r\n" % (len(body), body)
    match = common(ack)
    assert match is not None
    assert (match[1], match[4], match[5]) == (b"42", b"S", b"7")
    assert line(ack) is not None
    for other in (
        ack.replace(b" 1 ", b" 2 "),  # another subscription
        ack.replace(b" 1 ", b" 12 "),  # one whose id starts alike
        ack.replace(b" 1 ", b" 1 _INBOX.x.1 "),  # a message with a reply subject
        ack.replace(b".42 ", b".4x2 "),  # a subject not ending in a sequence
    ):
        assert common(other) is None
        assert line(other) is None
