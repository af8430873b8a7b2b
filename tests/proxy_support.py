"""A TCP proxy on 127.0.0.1 between a NATS client and its server that loses an atomic batch's commit
ack on its way back to the client: when armed, it drops the connection there, or turns it into a
black hole (nothing goes through either way until one end closes it). For the tests of what a lost
ack does."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["CuttingProxy"]

#: What only an atomic batch's commit ack carries among what a server sends a publisher.
BATCH_ACK = b'"batch":'


def _close(*socks: socket.socket) -> None:
    """Shut down (which wakes a thread blocked in recv or accept) and close each socket."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class CuttingProxy:
    """Forwards every connection made to `port` to ``upstream`` (host, port), both ways, each
    direction on its own thread. `arm()` makes it lose, once, the server's next answer to an atomic
    batch's commit (`BATCH_ACK`) before the client sees it: by dropping that connection, or with
    ``hold=True`` by dropping everything on it from then on, both ways, until one end closes it (a
    dead link). `cut` is set when it did. `close()` ends every connection and thread (as ``with`` does)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: bool | None = None  # None: not armed; else whether to hold
        self._closed = False
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        #: Set when an armed proxy lost a commit's ack.
        self.cut = threading.Event()
        #: Connections accepted so far (a reconnect is one more).
        self.connections = 0
        self._start(self._accept, "proxy-accept")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def arm(self, *, hold: bool = False) -> None:
        """Lose the next commit ack the server sends (once): drop its connection, or (``hold``) black-hole it."""
        with self._lock:
            self._armed = hold

    def _start(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:  # the server is down: so is this connection
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._closed:
                    _close(client, server)
                    return
                self.connections += 1
                self._socks += [client, server]
                dead: list[bool] = []  # non-empty once this connection is a black hole
                self._start(self._pump, "proxy-up", client, server, False, dead)
                self._start(self._pump, "proxy-down", server, client, True, dead)

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool, dead: list[bool]) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if dead:
                    continue
                if from_server and self._armed is not None:
                    seen = tail + data
                    if BATCH_ACK in seen:
                        hold = self._trigger()
                        if hold is True:
                            dead.append(True)
                            continue
                        if hold is False:
                            break
                    tail = seen[-len(BATCH_ACK) :]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _trigger(self) -> bool | None:
        """Disarm; whether to hold (None: it was not armed any more)."""
        with self._lock:
            hold, self._armed = self._armed, None
        if hold is not None:
            self.cut.set()
        return hold

    def close(self) -> None:
        """End every connection and the listener; wait for the threads."""
        with self._lock:
            self._closed = True
            socks = list(self._socks)
        _close(self._listener, *socks)
        for thread in self._threads:
            thread.join(5)
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"proxy threads still running: {stuck}"

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
