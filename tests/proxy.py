"""A fault-injecting TCP proxy on loopback, between a backend and its server.

Faults, each on real sockets:

* ``stall()`` / ``stall(on=b"...")``: stop forwarding in both directions, at
  once or from the first client bytes holding a pattern (those held too).
  Nothing is read while stalled, so bytes wait in the kernel like in front of
  a stopped server; ``resume()`` forwards them, even from a client that gave
  up and closed meanwhile (as a server resuming would run them).
* ``drop_reply_after(b"...")``: forward the next client bytes holding the
  pattern, then swallow the server's reply and cut that connection: the
  command ran, its outcome never reached the client.
* ``cut()``: close every open connection (new ones are accepted).
* ``stop()`` / ``start()``: close everything and refuse connections; listen
  again on the same port (a server gone and back).

Every thread polls with a timeout and ends when its sockets close or the proxy
does: no blocking call waits forever.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

_POLL = 0.05


class _Link:
    """One proxied connection: the client's socket and the upstream one."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.drop_reply = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.lock = threading.Lock()
        self.links: list[_Link] = []
        self.flowing = threading.Event()
        self.flowing.set()
        self.stall_on: bytes | None = None
        self.drop_on: bytes | None = None
        self.dropped = 0  # replies swallowed
        self.closed = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._serve()

    # -- faults ------------------------------------------------------------------

    def stall(self, on: bytes | None = None) -> None:
        if on is None:
            self.flowing.clear()
        else:
            self.stall_on = on

    def resume(self) -> None:
        self.stall_on = None
        self.flowing.set()

    def drop_reply_after(self, pattern: bytes) -> None:
        self.drop_on = pattern

    def cut(self) -> None:
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            link.close()

    def stop(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.cut()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()

    def close(self) -> None:
        self.closed = True
        self.resume()
        self.stop()

    # -- forwarding ----------------------------------------------------------------

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self.closed and listener is self.listener:
            try:
                ready, _, _ = select.select([listener], [], [], _POLL)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self.lock:
                self.links.append(link)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()

    def _wait_flowing(self, link: _Link) -> None:
        while not self.flowing.wait(_POLL):
            if self.closed:
                return

    def _read(self, source: socket.socket, link: _Link) -> bytes | None:
        """The next bytes from ``source``; None when it is closed."""
        while not link.closed and not self.closed:
            self._wait_flowing(link)
            try:
                ready, _, _ = select.select([source], [], [], _POLL)
                if not ready:
                    continue
                if not self.flowing.is_set():
                    continue  # a stall began while waiting: read nothing
                data = source.recv(65536)
            except (OSError, ValueError):
                return None
            return data or None
        return None

    def _requests(self, link: _Link) -> None:
        """Client to server."""
        while (data := self._read(link.client, link)) is not None:
            stall_on = self.stall_on
            if stall_on is not None and stall_on in data:
                self.stall_on = None
                self.flowing.clear()
                self._wait_flowing(link)
            drop_on = self.drop_on
            if drop_on is not None and drop_on in data:
                self.drop_on = None
                link.drop_reply = True
            try:
                link.upstream.sendall(data)
            except OSError:
                break
        self._half_close(link.upstream)

    def _replies(self, link: _Link) -> None:
        """Server to client."""
        while (data := self._read(link.upstream, link)) is not None:
            if link.drop_reply:
                self.dropped += 1
                link.close()
                return
            try:
                link.client.sendall(data)
            except OSError:
                break
        link.close()

    @staticmethod
    def _half_close(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
