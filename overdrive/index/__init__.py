"""The replicated file index: which node holds which file.

* :mod:`~overdrive.index.records` -- the record (and its validation), :mod:`~overdrive.index.hlc` the clock;
* :mod:`~overdrive.index.stores` -- one store interface, SQLite / MySQL / Firestore (and memory) backends;
* :mod:`~overdrive.index.replication` -- the sans-IO replication state machine (vectors, LWW, tombstones);
* :mod:`~overdrive.index.protocol` -- the messages and their codec;
* :mod:`~overdrive.index.master` -- a master (the socket shell around the replica), gossip, sync, anti-entropy;
* :mod:`~overdrive.index.node` -- a sharing node (scanner and watch from :mod:`overdrive.files`), failover;
* :mod:`~overdrive.index.client` -- :class:`~overdrive.index.client.IndexClient` for ``ls`` and ``fetch``;
* ``overdrive master``, ``share`` and ``ls`` are in :mod:`overdrive.cli.index`.
"""
