"""A stand-alone file server for a folder, without the index: for tests, the benchmark and the demo.

``python -m overdrive.transfer.folder FOLDER [--bind HOST:PORT]`` serves the files the production scanner
(:class:`~overdrive.files.scanner.FolderScanner`) finds there, in its own process (it
prints the ready line of :mod:`overdrive.bus.ready`, ``overdrive: holder ready on tcp://HOST:PORT (...)``, once
serving and stops on SIGTERM/SIGINT, or when its stdin closes with ``--stdin-stop``). It reads
``OVERDRIVE_PASSWORD``/``OVERDRIVE_NETWORK`` or serves in the clear with ``--insecure``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

from overdrive import interrupts
from overdrive.bus.ready import Ready
from overdrive.files.scanner import FolderScanner


def main(argv: list[str] | None = None) -> None:
    from overdrive.bus.address import DEFAULT_SHARE_PORT, parse_endpoint
    from overdrive.config import GlobalOptions
    from overdrive.transfer.protocol import DEFAULT_CHUNK
    from overdrive.transfer.server import FileServer
    from overdrive.transfer.server_config import ServerConfig

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
    with tempfile.TemporaryDirectory(prefix="overdrive-hashes-") as scratch:  # no hash cache left behind
        catalogue = FolderScanner(args.folder, cache_file=Path(scratch) / "hashes.msgpack")
        catalogue.scan()
    stdin_closed = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stdin_closed.set()

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
        try:
            with interrupts.deferred() as check:
                Ready("holder", endpoint, (f"{len(catalogue)} file(s)",)).announce()
                while not stdin_closed.wait(0.2):
                    check()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        s = server.stats
        print(f"stats bytes_sent={s.bytes_sent} chunks_sent={s.chunks_sent} malformed={s.malformed}", flush=True)


if __name__ == "__main__":
    main()
