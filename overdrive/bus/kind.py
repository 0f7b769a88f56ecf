"""What kind of overdrive service is at an address, said by the service itself.

A master (the index) and a share (file transfer) both listen on a CURVE ROUTER, so a client of the one connects to
the other without any handshake trouble; only a reply can tell them apart. Each protocol's codec carries
:class:`WrongService`: a service that receives a well-formed overdrive message of another protocol (its codec raises
:class:`~overdrive.errors.ForeignMessageError`) answers it with one ``WrongService`` naming its kind, and a client
that gets one stops waiting and says what it found (:func:`wrong_kind`). One reply per such message, through the
socket's usual bounds (its send queue per peer), so a peer cannot make a service send more than it is sent.

A stream (PUB) and a ROUTER service are told apart earlier, by the socket types' handshake
(:mod:`overdrive.bus.monitor`), which uses the same words.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from overdrive.bus.codec import Message

MASTER = "master"
SHARE = "share"
STREAM = "stream"

Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern="^[a-z][a-z -]*$")]
"""A service kind on the wire: ``master``, ``share``, ``stream`` today; later ones decode too (letters only, so
printing one is safe)."""

_HINTS = {
    MASTER: "use it with 'overdrive ls --master {peer}' or 'overdrive fetch NAME --master {peer}'",
    SHARE: "fetch from it with 'overdrive fetch NAME --from {peer}'",
    STREAM: "watch it with 'overdrive view {peer}'",
    "master or share": "give 'overdrive view' the address that 'overdrive stream' printed in its ready line",
}


class WrongService(Message, tag="wrong-service", frozen=True):
    """A service's answer to a message of another overdrive protocol: "I am a ``kind``"."""

    kind: Kind


def wrong_kind(peer: str, found: str, wanted: str) -> str:
    """The one line a client says when ``peer`` is a ``found`` where it wanted a ``wanted``."""
    if found == wanted:  # a service of the right kind that did not understand us: another overdrive version
        return f"{peer} is an overdrive {found} that does not understand this request (another overdrive version?)"
    hint = _HINTS.get(found)
    return f"{peer} is an overdrive {found}, not a {wanted}" + (f" ({hint.format(peer=peer)})" if hint else "")
