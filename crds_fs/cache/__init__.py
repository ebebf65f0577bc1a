"""Cache layer: diskcache index + CRDS-layout file store + verifying, single-flight fetcher.

`FileCache` is the facade the namespace layer and the Python API use; the modules below it
are importable for tests and tools:

* `index`: what is cached (diskcache at `<cache>/index/`), plus the stored catalog;
* `store`: paths in the CRDS layout, temp files, per-name locks, atomic commit;
* `fetcher`: download once (threads and processes), verify size+sha1, commit, resume.
"""

from __future__ import annotations

from ..hashing import sha1_file
from .facade import FileCache, Reader
from .fetcher import Download, Fetcher
from .index import CacheIndex, Entry, open_db
from .store import FileStore, NameLock

__all__ = [
    "CacheIndex",
    "Download",
    "Entry",
    "Fetcher",
    "FileCache",
    "FileStore",
    "NameLock",
    "Reader",
    "open_db",
    "sha1_file",
]
