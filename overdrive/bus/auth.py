"""ZAP policy: admit CURVE clients only, within each socket's connection limits, and name each connection by the node
id of its public key.

A client reaches ZAP only after completing a CURVE handshake against the network's server key, which requires
the password; so the policy here admits every CURVE client its socket's :class:`~overdrive.bus.admission.Admission`
allows and refuses every other mechanism. The User-Id it returns is the node id derived from the client's public
key, which servers read from each received frame.
"""

from __future__ import annotations

import itertools
import logging
import time

import zmq
from zmq.auth import CURVE_ALLOW_ANY
from zmq.auth.thread import ThreadAuthenticator

from overdrive.bus.admission import BUSY_STATUS, Admission, AdmissionMonitor
from overdrive.bus.security import node_id_from_public

log = logging.getLogger(__name__)

ZAP_DOMAIN = "overdrive"


class CurveOnlyAuthenticator(ThreadAuthenticator):
    """pyzmq's threaded ZAP handler with overdrive's policy."""

    def __init__(self, context: zmq.Context) -> None:  # type: ignore[type-arg]
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self.refused = 0
        self._admissions: dict[str, Admission] = {}
        self.monitor: AdmissionMonitor | None = None
        self._domains = itertools.count(1)
        self._quiet_until = 0.0

    def start(self) -> None:
        super().start()
        self.configure_curve(domain="*", location=CURVE_ALLOW_ANY)

    def domain_for(self, admission: Admission) -> str:
        """A ZAP domain of its own for one listening socket, so its connections are counted apart."""
        domain = f"{ZAP_DOMAIN}:{next(self._domains)}"
        self._admissions[domain] = admission
        return domain

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6 and msg[5] != b"CURVE":
            self.refused += 1
            log.warning("refused a %s client: overdrive admits CURVE only", msg[5].decode(errors="replace"))
            self._send_zap_reply(msg[1], b"400", b"CURVE required")
            return
        if len(msg) >= 6:
            admission = self._admissions.get(msg[2].decode(errors="replace"))
            address = msg[3].decode(errors="replace")
            if admission is not None and self.monitor is not None:
                self.monitor.sync()
            if admission is not None and not admission.admit(address):
                now = time.monotonic()
                if now >= self._quiet_until:  # a refused client retries ten times a second: say it once a while
                    self._quiet_until = now + 10.0
                    log.warning("refusing connections from %s: too many (%d so far)", address, admission.refused)
                self._send_zap_reply(msg[1], BUSY_STATUS, b"too many connections")
                return
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return node_id_from_public(client_public_key)
