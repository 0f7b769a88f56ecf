"""A TCP relay on loopback that records every byte it forwards: the eavesdropper in the encryption tests."""

from __future__ import annotations

import selectors
import socket
import threading


class RecordingRelay:
    """Accept one connection on an ephemeral port, forward it to ``target``, keep a copy of both directions."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.captured = bytearray()
        self._stop_r, self._stop_w = socket.socketpair()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="recording-relay", daemon=True)
        self._thread.start()

    def seen(self) -> bytes:
        with self._lock:
            return bytes(self.captured)

    def close(self) -> None:
        self._stop_w.send(b"x")
        self._thread.join(5)
        for s in (self._listener, self._stop_r, self._stop_w):
            s.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        pairs: dict[socket.socket, socket.socket] = {}
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "accept":
                        client, _ = self._listener.accept()
                        upstream = socket.create_connection(self._target)
                        pairs[client], pairs[upstream] = upstream, client
                        sel.register(client, selectors.EVENT_READ, "data")
                        sel.register(upstream, selectors.EVENT_READ, "data")
                        continue
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if not data:
                        sel.unregister(src)
                        continue
                    with self._lock:
                        self.captured += data
                    pairs[src].sendall(data)
        finally:
            for s in pairs:
                s.close()
            sel.close()
