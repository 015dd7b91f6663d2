"""A TCP proxy for tests of the resident engine's channel: stands between the barrier tasks
and the coordinator, records what crosses it, and can tamper with or replay what a task
sends. ``intercept(monkeypatch)`` makes every coordinator of the fits that follow advertise
its proxy's port instead of its own."""

import socket
import threading
from typing import Callable, List, Optional

from spark_gmm.engine import resident

# (index of the chunk on its connection, chunk) -> the chunks to forward instead
Tamper = Callable[[int, bytes], List[bytes]]


class Proxy:
    def __init__(self, target_port: int, tamper_upstream: Optional[Tamper] = None):
        self.target_port = target_port
        self.tamper_upstream = tamper_upstream
        self.upstream = bytearray()  # all that the tasks sent
        self.downstream = bytearray()  # all that the coordinator sent
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._sockets: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                target = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, target]
            threading.Thread(target=self._pump, args=(client, target, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(target, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool):
        index = 0
        try:
            while True:
                chunk = source.recv(1 << 16)
                if not chunk:
                    break
                with self._lock:
                    (self.upstream if upstream else self.downstream).extend(chunk)
                chunks = [chunk]
                if upstream and self.tamper_upstream is not None:
                    chunks = self.tamper_upstream(index, chunk)
                index += 1
                for piece in chunks:
                    sink.sendall(piece)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


def intercept(
    monkeypatch, tamper_upstream: Optional[Tamper] = None, dead_port: Optional[int] = None
):
    """Makes the coordinators created from now on advertise a proxy (or ``dead_port``, where
    nothing listens); returns the list that collects the coordinators created."""
    created = []

    class Intercepted(resident._Coordinator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.real_port = self.port
            self.proxy = None
            if dead_port is not None:
                self.port = dead_port
            else:
                self.proxy = Proxy(self.real_port, tamper_upstream)
                self.port = self.proxy.port
            created.append(self)

        def close(self):
            super().close()
            if self.proxy is not None:
                self.proxy.close()

    monkeypatch.setattr(resident, "_Coordinator", Intercepted)
    return created


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]
