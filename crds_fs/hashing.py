"""File digests shared by the server (which publishes them) and the cache (which checks them).

One function, so both sides of the protocol hash the same way; it lives beside `errors`
and `config` because neither layer may import the other's internals.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, NamedTuple

#: Default chunk size of the chunk manifests `crds-fs serve` publishes (8 MiB): a FITS
#: header read touches one chunk, and a 4.4 GB reference has ~530 of them (a 35 kB manifest).
DEFAULT_CHUNK_SIZE = 8 << 20
#: Bytes per read of `digest_stream` (a multiple of every sane chunk size's divisor).
_READ = 1 << 20


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


class Digests(NamedTuple):
    """Whole-file size and sha1, plus the sha256 of each fixed-size chunk (the manifest)."""

    size: int
    sha1: str
    chunk_size: int
    #: hex sha256 of bytes [i*chunk_size, (i+1)*chunk_size) for each i (last one shorter)
    chunks: tuple[str, ...]


def digest_stream(handle: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Digests:
    """sha1 of what remains in *handle* and sha256 of each chunk, in one read of the bytes.

    The server publishes both: the sha1 is the CRDS checksum, the chunk sha256s let a client
    verify any chunk on its own (random access).  One pass, so computing the manifest costs
    only the extra sha256 (hashlib releases the GIL; about +60% CPU, no extra I/O).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk_size}")
    whole = _sha1()
    chunks: list[str] = []
    part = hashlib.sha256()
    in_part = size = 0
    buffer = bytearray(min(_READ, chunk_size))
    view = memoryview(buffer)
    while True:
        want = min(len(buffer), chunk_size - in_part)
        got = handle.readinto(view[:want])  # type: ignore[attr-defined]
        if not got:
            break
        data = view[:got]
        whole.update(data)
        part.update(data)
        size += got
        in_part += got
        if in_part == chunk_size:
            chunks.append(part.hexdigest())
            part, in_part = hashlib.sha256(), 0
    if in_part or not chunks:  # the last, shorter chunk (an empty file has one empty chunk)
        chunks.append(part.hexdigest())
    return Digests(size, whole.hexdigest(), chunk_size, tuple(chunks))


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks of a file of *size* bytes (at least one: an empty file has one empty chunk)."""
    return max(1, -(-size // chunk_size))


__all__ = ["DEFAULT_CHUNK_SIZE", "Digests", "chunk_count", "digest_stream", "sha1_file",
           "sha1_stream"]
