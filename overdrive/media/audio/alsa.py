"""Keep libasound's own messages off the terminal.

libasound (under PortAudio, under sounddevice) writes every error it recovers from straight to stderr, such as
``ALSA lib pcm.c:8568:(snd_pcm_recover) underrun occurred`` many times a second when a loaded machine plays audio
late, over a viewer's window and status lines. :func:`quiet_alsa` installs an error handler
(``snd_lib_error_set_handler``) that counts them and logs them at debug level instead. It is hand-written with
ctypes because no maintained Python package exposes that libasound call (sounddevice and pyalsaaudio do not).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections import Counter

log = logging.getLogger(__name__)

# void handler(const char *file, int line, const char *function, int err, const char *fmt, ...): the variadic
# arguments are never read, so a fixed-argument callback is safe to call this way.
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)

messages: Counter[str] = Counter()
"""libasound messages silenced so far, by the function that reported them (``snd_pcm_recover``: underruns)."""

_MAX_KINDS = 64  # distinct functions counted; beyond that, counted under "other" (bounded)
_lock = threading.Lock()
_installed: list[object] = []  # the ctypes callback, once installed: kept alive while libasound may call it


def _handle(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    kind = (function or b"?").decode("ascii", "replace")
    with _lock:
        if kind not in messages and len(messages) >= _MAX_KINDS:
            kind = "other"
        messages[kind] += 1
    log.debug("ALSA %s:%d (%s) %s", (file or b"?").decode(errors="replace"), line, kind, (fmt or b"").decode())


def quiet_alsa() -> bool:
    """Route libasound's messages to :data:`messages` and the debug log; False where there is no libasound."""
    if not sys.platform.startswith("linux"):
        return False
    with _lock:
        if _installed:
            return True
        try:
            lib = ctypes.CDLL("libasound.so.2")
        except OSError:
            return False
        handler = _HANDLER(_handle)
        lib.snd_lib_error_set_handler.argtypes = [_HANDLER]
        lib.snd_lib_error_set_handler(handler)
        _installed.append(handler)
    return True
