"""Mapping header checksum, computed exactly as crds does (pure, no I/O).

The header ``sha1sum`` is the SHA-1 of the mapping text with every line that contains the
substring ``sha1sum`` removed.  It differs from the catalog sha1 of the whole file.
"""

from __future__ import annotations

import hashlib
import re

_SHA1_LINE = re.compile(r"^[ \t]*'sha1sum'\s*:\s*'[0-9a-fA-F]*'\s*,?[ \t]*$", re.M)


#: Line boundaries of ``str.splitlines`` other than ``\n`` within ASCII (the others, NEL, LS
#: and PS, are not ASCII).  ASCII texts without them (every real mapping) take the fast path.
_ASCII_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")


def mapping_checksum(text: str) -> str:
    """SHA-1 hex of *text* without the lines that mention ``sha1sum``."""
    if text.isascii() and not any(brk in text for brk in _ASCII_BREAKS):
        return _checksum_newlines(text)
    kept = [line for line in text.splitlines(keepends=True) if "sha1sum" not in line]
    return hashlib.sha1("".join(kept).encode("utf-8")).hexdigest()


def _checksum_newlines(text: str) -> str:
    """As mapping_checksum for text whose only line break is ``\n``: hash the spans between
    the (usually one) ``sha1sum`` lines instead of splitting the whole text into lines."""
    digest = hashlib.sha1()
    start = 0
    found = text.find("sha1sum")
    while found >= 0:
        line_start = text.rfind("\n", start, found) + 1  # 0 when the line is the first
        line_end = text.find("\n", found)
        line_end = len(text) if line_end < 0 else line_end + 1
        digest.update(text[start:line_start].encode("utf-8"))
        start = line_end
        found = text.find("sha1sum", start)
    digest.update(text[start:].encode("utf-8"))
    return digest.hexdigest()


def set_mapping_checksum(text: str) -> str:
    """Return *text* with its header ``'sha1sum'`` entry set to the correct value.

    Used by the demo-data generator (and tests) to write mappings that crds accepts.
    The text must already contain a ``'sha1sum' : '...'`` line inside the header dict.
    """
    digest = mapping_checksum(text)
    new, count = _SHA1_LINE.subn(f"    'sha1sum' : '{digest}',", text, count=1)
    if count != 1:
        raise ValueError("mapping text has no 'sha1sum' header line to set")
    return new
