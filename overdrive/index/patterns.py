"""fnmatch glob patterns from the wire, compiled at most once each and cached within a fixed bound.

``fnmatch.fnmatchcase`` keeps up to 32,768 compiled patterns: 20,000 lookups with different 4 KiB patterns grew a
master by over a gigabyte. Here the cache holds :data:`PATTERN_CACHE` patterns (least recently used go first), and a
pattern is at most ``MAX_PATTERN`` characters (the Lookup field's bound). Compiling goes through :func:`re.compile`,
whose own cache is bounded too (``re._MAXCACHE``, 512 entries: some 25 MB of the largest patterns).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable

PATTERN_CACHE = 64
"""Compiled glob patterns kept (about 50 KB each when 4 KiB long); others are compiled again when asked."""

Matcher = Callable[[str], object]


@functools.lru_cache(maxsize=PATTERN_CACHE)
def matcher(pattern: str) -> Matcher:
    """A function telling whether a name matches the case-sensitive fnmatch ``pattern`` (truthy if it does)."""
    return re.compile(fnmatch.translate(pattern)).match


def glob_match(name: str, pattern: str) -> bool:
    """``fnmatch.fnmatchcase(name, pattern)`` without its unbounded cache."""
    return matcher(pattern)(name) is not None
