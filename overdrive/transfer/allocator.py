"""Keep glibc from mapping and unmapping a fresh region for every chunk-sized buffer.

Chunks (1 MiB and up) are above glibc's default mmap threshold, so each ``pread`` result and each ZeroMQ message
would otherwise be a new ``mmap`` whose pages the kernel faults in and zeroes, then ``munmap``-ed again: that
page-fault churn is about a sixth of a holder's CPU time, and avoiding it takes about a quarter off the CPU per GiB
moved at both ends (docs/benchmarks.md, transfer section). :func:`tune` raises the mmap threshold to glibc's maximum
(32 MiB) and the heap trim threshold so freed chunk buffers are reused. It changes the whole process, which is why
only the transfer entry points (fetching, the file server) call it; it is a no-op where glibc is not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20


@functools.cache
def tune() -> bool:
    """Apply the thresholds once per process; True when glibc accepted them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the transfer buffer thresholds")
    return ok
