"""The cache index: what is cached, kept in a diskcache (SQLite) at `<cache>/index/`.

Startup must not walk a directory of 10^5 references, and a restarted mount must know at
once what it already has: so every committed file is recorded here (size, sha1, when
fetched, when last used), next to the server catalog and the last server info (stored by
`load_catalog`) that let a mount work offline.  diskcache is safe between threads and
processes; counters and entries change together in one transaction.

Keys: ``file:<obs>/<name>`` -> ``(size, sha1, fetched_at, last_used)`` (a plain tuple, so
stored entries never depend on class names), ``meta:...`` for counters and settings,
``catalog:<obs>`` for the catalog (see crds_fs.client.catalog), ``pins:<obs>`` -> ``{context:
plain dict (context, references, names, pinned_at)}`` for the pinned contexts (see
crds_fs.lifecycle): the names listed there are never evicted.  One key for all pins, so
reading them never lists the index.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import diskcache

from ..errors import ConfigError

_FILE = "file:"
_PINS = "pins:"


class Entry(NamedTuple):
    """One cached, verified file."""

    size: int
    sha1: str
    fetched_at: float
    last_used: float
    #: "inode:mtime_ns" of the file when it was verified ("" in entries of older versions):
    #: an open that finds another stamp re-hashes the file before serving it
    stamp: str = ""


class CacheIndex:
    """Typed access to the diskcache index for one observatory's files.

    Lookups of single names go straight to SQLite (a few microseconds, and they see what
    other processes committed).  Whole-set questions (`names()`, eviction) use an in-memory
    mirror that is rebuilt only when another process changed the index (a generation
    counter tells), since listing every key of a big index costs about half a second.
    """

    def __init__(self, db: diskcache.Cache, observatory: str) -> None:
        self.db = db
        self.directory = Path(db.directory)
        self.observatory = observatory
        self._prefix = f"{_FILE}{observatory}/"
        self._gen_key = f"meta:generation:{observatory}"
        self._count_key = f"meta:count:{observatory}"
        self._bytes_key = f"meta:bytes:{observatory}"
        self._pins_key = f"{_PINS}{observatory}"
        self._pin_gen_key = f"meta:pin-generation:{observatory}"
        self._hits_key = f"meta:hits:{observatory}"
        self._misses_key = f"meta:misses:{observatory}"
        self._lock = threading.Lock()
        self._mirror: dict[str, Entry] | None = None
        self._mirror_gen = -1
        self._pinned: frozenset[str] = frozenset()
        self._pinned_gen = -1

    def close(self) -> None:
        self.db.close()

    # --- single files ---------------------------------------------------------------------

    def get(self, name: str) -> Entry | None:
        value = self.db.get(self._prefix + name)
        return Entry(*value) if value is not None else None

    def add(self, name: str, size: int, sha1: str, *, now: float | None = None,
            stamp: str = "") -> Entry:
        """Record a committed file; counters change only if it was not recorded yet."""
        now = time.time() if now is None else now
        entry = Entry(int(size), sha1, now, now, stamp)
        with self._lock, self.db.transact():
            old = self.db.get(self._prefix + name)
            self.db.set(self._prefix + name, tuple(entry))
            if old is None:
                self.db.incr(self._count_key, 1)
                self.db.incr(self._bytes_key, entry.size)
            else:
                self.db.incr(self._bytes_key, entry.size - int(old[0]))
            self._bump(name, entry)
        return entry

    def remove(self, name: str) -> Entry | None:
        """Forget a file (evicted, or found missing/corrupt on disk)."""
        with self._lock, self.db.transact():
            old = self.db.pop(self._prefix + name, default=None)
            if old is None:
                return None
            self.db.incr(self._count_key, -1)
            self.db.incr(self._bytes_key, -int(old[0]))
            self._bump(name, None)
        return Entry(*old)

    def touch(self, name: str, when: float | None = None) -> None:
        """Update last_used (the LRU clock); a no-op for names not recorded."""
        when = time.time() if when is None else when
        with self._lock, self.db.transact():
            old = self.db.get(self._prefix + name)
            if old is not None:
                entry = Entry(*old)._replace(last_used=when)
                self.db.set(self._prefix + name, tuple(entry))
                if self._mirror is not None and name in self._mirror:
                    self._mirror[name] = entry

    def set_stamp(self, name: str, stamp: str) -> None:
        """Record the file stamp of a (re-)verified file; a no-op for names not recorded."""
        with self._lock, self.db.transact():
            old = self.db.get(self._prefix + name)
            if old is not None:
                entry = Entry(*old)._replace(stamp=stamp)
                self.db.set(self._prefix + name, tuple(entry))
                if self._mirror is not None and name in self._mirror:
                    self._mirror[name] = entry

    def _bump(self, name: str, entry: Entry | None) -> None:
        """Advance the generation; keep the mirror if nobody else changed the index."""
        generation = self.db.incr(self._gen_key, 1)
        if self._mirror is not None and generation == self._mirror_gen + 1:
            if entry is None:
                self._mirror.pop(name, None)
            else:
                self._mirror[name] = entry
            self._mirror_gen = generation
        else:
            self._mirror = None

    # --- whole set ------------------------------------------------------------------------

    def entries(self) -> dict[str, Entry]:
        """Every recorded file of this observatory (a copy)."""
        with self._lock:
            generation = self.db.get(self._gen_key, 0)
            if self._mirror is None or generation != self._mirror_gen:
                self._mirror = self._load()
                self._mirror_gen = generation
            return dict(self._mirror)

    def names(self) -> set[str]:
        return set(self.entries())

    def _load(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        cut = len(self._prefix)
        for key in self.db.iterkeys():
            if isinstance(key, str) and key.startswith(self._prefix):
                value = self.db.get(key)
                if value is not None:
                    found[key[cut:]] = Entry(*value)
        return found

    # --- pins (contexts kept from eviction; written by crds_fs.cache.lifecycle) --------------

    def set_pin(self, context: str, record: dict[str, Any]) -> None:
        """Store (or replace) the pin of *context*; every process sees it at its next trim."""
        with self._lock, self.db.transact():
            pins = self._stored_pins()
            pins[context] = dict(record)
            self.db.set(self._pins_key, pins)
            self.db.incr(self._pin_gen_key, 1)

    def remove_pin(self, context: str) -> bool:
        """Drop the pin of *context*; False when it was not pinned."""
        with self._lock, self.db.transact():
            pins = self._stored_pins()
            if pins.pop(context, None) is None:
                return False
            self.db.set(self._pins_key, pins)
            self.db.incr(self._pin_gen_key, 1)
        return True

    def pins(self) -> dict[str, dict[str, Any]]:
        """{context: pin record} of this observatory."""
        return self._stored_pins()

    def _stored_pins(self) -> dict[str, dict[str, Any]]:
        value = self.db.get(self._pins_key)
        if not isinstance(value, dict):
            return {}
        return {str(k): v for k, v in value.items() if isinstance(v, dict)}

    def pinned_names(self) -> frozenset[str]:
        """Every file name some pin protects; one SQLite read while no pin changed (eviction
        calls this on every trim, in every process sharing the cache)."""
        generation = self.db.get(self._pin_gen_key, 0)
        with self._lock:
            if generation == self._pinned_gen:
                return self._pinned
        names: set[str] = set()
        for record in self.pins().values():
            names.update(str(n) for n in record.get("names", ()))
        with self._lock:
            self._pinned, self._pinned_gen = frozenset(names), generation
        return self._pinned

    # --- hit/miss counters (persisted in batches by FileCache) -----------------------------

    def add_lookups(self, hits: int, misses: int) -> None:
        """Add to the persisted hit/miss counters (one transaction)."""
        if not hits and not misses:
            return
        with self.db.transact():
            self.db.incr(self._hits_key, hits)
            self.db.incr(self._misses_key, misses)

    def lookups(self) -> tuple[int, int]:
        """(hits, misses) persisted so far, every process using this cache together."""
        return int(self.db.get(self._hits_key, 0)), int(self.db.get(self._misses_key, 0))

    def totals(self) -> tuple[int, int]:
        """(number of files, bytes) recorded, from the counters (no listing)."""
        return int(self.db.get(self._count_key, 0)), int(self.db.get(self._bytes_key, 0))


def open_db(directory: Path) -> diskcache.Cache:
    """The diskcache at *directory*, created if absent.

    Its own eviction is off: our entries are tiny, and dropping one would make a cached
    file invisible (and the catalog, needed offline, must never go).
    """
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return diskcache.Cache(str(directory), eviction_policy="none", timeout=60)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot open the cache index {directory} ({exc}); set CRDS_FS_CACHE to a "
            "writable directory"
        ) from None
