"""ZAP policy: admit CURVE clients only, and name each connection by the node id of its public key.

A client reaches ZAP only after completing a CURVE handshake against the network's server key, which requires
the password; so the policy here admits every CURVE client and refuses every other mechanism. The User-Id it
returns is the node id derived from the client's public key, which servers read from each received frame.
"""

from __future__ import annotations

import logging

import zmq
from zmq.auth import CURVE_ALLOW_ANY
from zmq.auth.thread import ThreadAuthenticator

from overdrive.bus.security import node_id_from_public

log = logging.getLogger(__name__)

ZAP_DOMAIN = "overdrive"


class CurveOnlyAuthenticator(ThreadAuthenticator):
    """pyzmq's threaded ZAP handler with overdrive's policy."""

    def __init__(self, context: zmq.Context) -> None:  # type: ignore[type-arg]
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self.refused = 0

    def start(self) -> None:
        super().start()
        self.configure_curve(domain="*", location=CURVE_ALLOW_ANY)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6 and msg[5] != b"CURVE":
            self.refused += 1
            log.warning("refused a %s client: overdrive admits CURVE only", msg[5].decode(errors="replace"))
            self._send_zap_reply(msg[1], b"400", b"CURVE required")
            return
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return node_id_from_public(client_public_key)
