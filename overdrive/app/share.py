"""A sharing node: a folder's files (or several folders', as one node) served to fetchers and kept current in the
index.

::

    scanner = FolderScanner(folder)
    scanner.scan()                                   # hashing a large folder the first time takes a while
    share = SharingNode(bus, scanner, masters, Endpoint("*", 7772), advertise=None, watch=True)
    share.start()                                    # FileServer + index Node threads; share.address is registered
    ...
    share.stop()

The scanner (:mod:`overdrive.files.scanner`, or a :class:`~overdrive.files.folders.FolderSet` of several) is the
catalogue the file server answers from and what the index node registers; the node watches every folder and
re-registers what changed.
"""

from __future__ import annotations

from overdrive.bus.address import Endpoint
from overdrive.bus.sockets import Bus
from overdrive.files.folders import FolderSet
from overdrive.files.scanner import FolderScanner
from overdrive.index.addresses import advertised
from overdrive.index.node import Node, NodeConfig
from overdrive.transfer.server import FileServer


class SharingNode:
    """Serves ``scanner``'s folders at ``endpoint`` and registers them with the index ``masters``."""

    def __init__(
        self,
        bus: Bus,
        scanner: FolderScanner | FolderSet,
        masters: tuple[Endpoint, ...],
        endpoint: Endpoint,
        *,
        advertise: str | None = None,
        watch: bool = True,
    ) -> None:
        self.bus = bus
        self.scanner = scanner
        self.masters = masters
        self.advertise = advertise
        self.watch = watch
        self.server = FileServer(bus, scanner.roots, endpoint, scanner)
        self.node: Node | None = None
        self.bound: Endpoint | None = None
        """Where the file server listens, once started."""
        self.address = ""
        """``host:port`` registered in the index as where the files are, once started."""

    def start(self) -> None:
        """Start the file server, then the index node that registers its address (stopping both on failure)."""
        self.bound = self.server.start()
        try:
            self.address = advertised(self.bound, self.advertise)
            node = Node(
                self.bus, self.scanner, NodeConfig(masters=self.masters, address=self.address), watch=self.watch
            )
            node.start()
            self.node = node
        except BaseException:
            self.server.stop()
            raise

    def stop(self) -> None:
        """Stop the node (which saves the hash cache), then the file server."""
        try:
            if self.node is not None:
                self.node.stop()
        finally:
            self.server.stop()
