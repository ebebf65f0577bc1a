"""File digests shared by the server (which publishes them) and the cache (which checks them).

One function, so both sides of the protocol hash the same way; it lives beside `errors`
and `config` because neither layer may import the other's internals.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO


def _sha1() -> hashlib._Hash:
    # CRDS uses SHA-1 as a content checksum, not for security (FIPS builds allow it so).
    return hashlib.sha1(usedforsecurity=False)


def sha1_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, hex SHA-1) of a whole file, read in large blocks (never whole into memory).

    The size is the number of bytes hashed, not a separate stat, so the pair always
    describes the same bytes even if the file is being rewritten.
    """
    with open(path, "rb") as handle:
        return sha1_stream(handle)


def sha1_stream(handle: BinaryIO) -> tuple[int, str]:
    """(size, hex SHA-1) of what remains in an open binary file (for files opened safely)."""
    start = handle.tell()
    digest = hashlib.file_digest(handle, _sha1)
    return handle.tell() - start, digest.hexdigest()


__all__ = ["sha1_file", "sha1_stream"]
