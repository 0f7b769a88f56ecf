"""A catalogue made by scanning a folder, and a stand-alone file server around it.

``overdrive share`` uses the index's own scanner; this simple one serves tests, the benchmark and the demo, and
``python -m overdrive.transfer.folder FOLDER [--bind HOST:PORT]`` runs a file server in its own process (it
prints ``port N`` once serving and stops on SIGTERM/SIGINT, or when its stdin closes with ``--stdin-stop``). It reads
``OVERDRIVE_PASSWORD``/``OVERDRIVE_NETWORK`` or serves in the clear with ``--insecure``.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import threading
from pathlib import Path

from overdrive.transfer.catalogue import SharedFile, hash_file


def describe(folder: Path, name: str) -> SharedFile:
    """The catalogue entry for ``folder/name`` as it is now."""
    path = folder / name
    st = path.stat()
    return SharedFile(name=name, size=st.st_size, content_hash=hash_file(path), mtime_ns=st.st_mtime_ns)


class FolderCatalogue:
    """Every regular file under a folder (symlinks not followed), hashed once at scan time."""

    def __init__(self, folder: Path, entries: dict[str, SharedFile] | None = None) -> None:
        self.folder = Path(folder)
        self._entries: dict[str, SharedFile] = dict(entries or {})
        self._lock = threading.Lock()

    @classmethod
    def scan(cls, folder: Path) -> FolderCatalogue:
        catalogue = cls(folder)
        for root, _dirs, files in os.walk(folder):
            for fname in files:
                path = Path(root, fname)
                if stat.S_ISREG(path.lstat().st_mode) and not fname.endswith((".part", ".part.state")):
                    catalogue.add(path.relative_to(folder).as_posix())
        return catalogue

    def add(self, name: str, entry: SharedFile | None = None) -> SharedFile:
        entry = entry or describe(self.folder, name)
        with self._lock:
            self._entries[name] = entry
        return entry

    def put(self, entry: SharedFile) -> None:
        """Add an entry as given (tests use it to advertise names the folder does not hold)."""
        with self._lock:
            self._entries[entry.name] = entry

    def get(self, name: str) -> SharedFile | None:
        with self._lock:
            return self._entries.get(name)

    def entries(self) -> list[SharedFile]:
        with self._lock:
            return list(self._entries.values())


def main(argv: list[str] | None = None) -> None:
    from overdrive.bus.address import DEFAULT_SHARE_PORT, parse_endpoint
    from overdrive.config import GlobalOptions
    from overdrive.transfer.protocol import DEFAULT_CHUNK
    from overdrive.transfer.server import FileServer
    from overdrive.transfer.serving import ServerConfig

    parser = argparse.ArgumentParser(prog="python -m overdrive.transfer.folder")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--bind", default="127.0.0.1:0")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--stdin-stop", action="store_true", help="also stop when stdin closes")
    args = parser.parse_args(argv)
    opts = GlobalOptions(
        password=os.environ.get("OVERDRIVE_PASSWORD"),
        network=os.environ.get("OVERDRIVE_NETWORK", "overdrive"),
        insecure=args.insecure,
    )
    catalogue = FolderCatalogue.scan(args.folder)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    if args.stdin_stop:
        threading.Thread(target=watch_stdin, daemon=True).start()
    with opts.bus() as bus:
        server = FileServer(
            bus,
            args.folder,
            parse_endpoint(args.bind, DEFAULT_SHARE_PORT),
            catalogue,
            ServerConfig(chunk_size=args.chunk_size),
        )
        endpoint = server.start()
        print(f"port {endpoint.port}", flush=True)
        try:
            done.wait()
        finally:
            server.stop()
        s = server.stats
        print(f"stats bytes_sent={s.bytes_sent} chunks_sent={s.chunks_sent} malformed={s.malformed}", flush=True)


if __name__ == "__main__":
    main()
