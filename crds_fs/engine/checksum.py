"""Mapping header checksum, computed exactly as crds does (pure, no I/O).

The header ``sha1sum`` is the SHA-1 of the mapping text with every line that contains the
substring ``sha1sum`` removed.  It differs from the catalog sha1 of the whole file.
"""

from __future__ import annotations

import hashlib
import re

_SHA1_LINE = re.compile(r"^[ \t]*'sha1sum'\s*:\s*'[0-9a-fA-F]*'\s*,?[ \t]*$", re.M)


def mapping_checksum(text: str) -> str:
    """SHA-1 hex of *text* without the lines that mention ``sha1sum``."""
    kept = [line for line in text.splitlines(keepends=True) if "sha1sum" not in line]
    return hashlib.sha1("".join(kept).encode("utf-8")).hexdigest()


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
