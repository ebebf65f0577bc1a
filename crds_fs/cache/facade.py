"""FileCache: the one object the namespace layer (and the Python API) talks to.

It ties together the index (what is cached), the store (where files live, atomic commits),
the fetcher (downloads, single flight) and the catalog (what exists on the server, with
size and sha1).  Opening never walks the cache directories and, offline, never touches the
network: everything needed comes from the index.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client.catalog import Catalog, load_catalog, store_catalog
from ..client.rpc import CrdsClient
from ..config import Settings, parse_min_free
from ..errors import (
    CacheFullError,
    ConfigError,
    CrdsFsError,
    DownloadError,
    OfflineError,
    ProtocolError,
    ServerUnreachableError,
)
from ..hashing import sha1_file
from .fetcher import Fetcher
from .index import CacheIndex, open_db
from .store import FileStore, file_stamp

log = logging.getLogger("crds_fs.cache")

#: last_used is written at most this often per file (it is an LRU hint, not an audit log).
USE_RECORD_INTERVAL = 60.0
#: Hysteresis: once over its limit (or under its free-space floor) the cache evicts down to
#: this fraction of the limit (or up to floor / this fraction free), so that it does not
#: evict one file per insert.
LOW_WATER = 0.9
#: A cache that found the server unreachable at open probes it again at most this often.
RECONNECT_INTERVAL = 30.0
#: Hit/miss counters reach the index at most this often (and at close): `crds-fs cache
#: status` reads them there, and one SQLite write per open would cost more than the open.
LOOKUP_FLUSH_INTERVAL = 10.0


class Reader:
    """An open, complete, verified cached file; reads are positional (thread-safe).

    Keeping a Reader open pins the file: eviction skips it, in this process (a pin count)
    and in every other process sharing the cache (a shared flock on the descriptor, which
    `FileStore.remove_unused` respects).  Made by `FileCache.open_reader`.
    """

    def __init__(self, cache: FileCache, name: str, path: Path, fd: int) -> None:
        self.name = name
        self.path = path
        self._cache = cache
        self._fd: int | None = fd
        self.size = os.fstat(fd).st_size

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"reader of {self.name} is closed")
        return self._fd

    def read(self, size: int, offset: int) -> bytes:
        """Up to *size* bytes at *offset* (b"" at or past the end)."""
        return os.pread(self.fileno(), size, offset)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Fill *buffer* from *offset* without an extra copy; returns the bytes read."""
        return os.preadv(self.fileno(), [buffer], offset)

    def close(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self._cache._unpin(self.name)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileCache:
    """Lazily fetching, verifying local copy of one observatory's CRDS files."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        client: CrdsClient,
        index: CacheIndex,
        store: FileStore,
        online: bool,
        offline_reason: str,
        max_bytes: int | None,
        may_reconnect: bool = False,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.observatory = catalog.observatory
        self.online = online
        self.client = client
        self.index = index
        self.store = store
        self.max_bytes = max_bytes or None
        self.fetcher = Fetcher(
            client=client, catalog=catalog, store=store, index=index, settings=settings,
            online=online, offline_reason=offline_reason, on_commit=self._after_commit,
            reconnect=self._reconnect if may_reconnect and not online else None,
            make_room=self.make_room,
        )
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self._last_use: dict[str, float] = {}
        self._evictions = 0
        self._flush_lock = threading.Lock()
        self._lookups_flushed = (0, 0)
        self._lookups_flush_at = time.monotonic() + LOOKUP_FLUSH_INTERVAL
        self._closed = False
        self._over_warned = 0.0
        #: seconds between probes of an unreachable server (tests set 0)
        self.reconnect_interval = RECONNECT_INTERVAL
        self._last_probe = time.monotonic()

    # --- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        observatory: str | None = None,
        offline: bool = False,
        max_bytes: int | None = None,
        trim: bool = True,
    ) -> FileCache:
        """Open (creating if needed) the cache at `settings.cache_dir` and load the catalog.

        Online, the catalog comes from the server and replaces the stored copy; when the
        server cannot be reached (or *offline*), the copy stored in the index is used and
        `online` is False.  The observatory is *observatory*, else the settings' (explicit
        or guessed from the server URL), else the server's, else the last one used here.
        *max_bytes* (default `settings.cache_max_bytes`, 0/None = no limit) bounds the
        references kept; least recently used ones are evicted.  *trim* False skips the
        trim at opening (tools that only look, such as `crds-fs cache status`).
        """
        root = Path(settings.cache_dir)
        db = open_db(root / "index")
        client = CrdsClient.from_settings(settings)
        try:
            catalog, online, reason = _load(settings, client, db, observatory, offline)
            db.set("meta:observatory", catalog.observatory)
            store = FileStore(root, catalog.observatory)
            stale = store.clear_stale()
            if stale:
                log.info("removed %d temp file(s) of interrupted downloads in %s",
                         stale, store.tmp_dir)
            index = CacheIndex(db, catalog.observatory)
            if online:
                store.write_config(catalog.server_info)
        except BaseException:
            client.close()
            db.close()
            raise
        limit = max_bytes if max_bytes is not None else settings.cache_max_bytes
        cache = cls(settings=settings, catalog=catalog, client=client, index=index,
                    store=store, online=online, offline_reason=reason, max_bytes=limit,
                    may_reconnect=not offline)
        try:  # a cache left over its limit (or the disk filled up meanwhile) is trimmed now
            if trim:
                cache.trim()
        except (OSError, sqlite3.Error) as exc:
            log.error("could not trim the cache %s to its limits at startup: %s", root, exc)
        return cache

    def close(self) -> None:
        """Release the HTTP pool and the index (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.flush_lookups()
        self.store.sync_dirs()
        self.client.close()
        self.index.close()

    def __enter__(self) -> FileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"FileCache({str(self.store.root)!r}, {self.observatory}, {state})"

    # --- server facts ---------------------------------------------------------------------

    @property
    def server_info(self) -> dict[str, Any]:
        """Server info of the catalog (without download_metadata); stored copy offline."""
        return self.catalog.server_info

    def operational_context(self) -> str:
        """The server's operational context (as last seen, when offline)."""
        context = self.server_info.get("operational_context")
        if not context:
            raise ProtocolError(
                f"the server info of {self.catalog.server_url or self.settings.server_url} "
                "names no operational_context; set CRDS_CONTEXT"
            )
        return str(context)

    def replace_catalog(self, catalog: Catalog, *, stored: Catalog | None = None) -> None:
        """Swap in a newer catalog (the mount's refresher); readers never wait for it.

        Plain attribute assignments: a call sees the old or the new catalog, never a mix.
        *stored* (default *catalog*) is what the index keeps for the next start (the
        server's own list, without the retained names); config/<obs>/ is rewritten.
        """
        if catalog.observatory != self.observatory:
            raise ConfigError(f"cannot replace the {self.observatory} catalog with one of "
                              f"{catalog.observatory}")
        self.catalog = catalog
        self.fetcher.catalog = catalog
        try:
            store_catalog(self.index.db, stored or catalog)
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not store the refreshed catalog in the cache index %s: %s "
                        "(the next start downloads it again)", self.index.directory, exc)
        self.store.write_config(catalog.server_info)

    # --- files ----------------------------------------------------------------------------

    def local_path(self, name: str) -> Path:
        """Where *name* lives (or will live): `<cache>/mappings|references|config/<obs>/<name>`."""
        return self.store.final_path(name)

    def is_cached(self, name: str) -> bool:
        """True when the index records a good copy of *name* and the file on disk is still
        the one verified (size and stamp, one stat; no hashing, no network).  A file
        changed on disk since counts as not cached: its next open re-verifies it."""
        entry = self.index.get(name)
        if entry is None:
            return False
        info = self.catalog.get(name)
        if info is None or entry.size != info.size or (info.sha1 and entry.sha1 != info.sha1):
            return False
        try:
            st = os.stat(self.local_path(name))
        except OSError:
            return False
        return st.st_size == info.size and (not entry.stamp or entry.stamp == file_stamp(st))

    def cached_path(self, name: str) -> Path | None:
        """The final path of *name* if the index says it is cached, else None."""
        return self.local_path(name) if self.is_cached(name) else None

    def ensure(self, name: str, *, cancelled: Callable[[], bool] | None = None,
               deadline: float | None = None) -> Path:
        """Path of the verified file *name*, downloaded once if needed (blocks).

        Raises UnknownFileError (not in the catalog; no network used), OfflineError (not
        cached and no server), DownloadError / VerificationError (naming file, URL, reason),
        CacheFullError (disk full), and with *deadline* (time.monotonic()) / *cancelled*
        OpenTimeoutError / OpenInterruptedError (the download goes on for other waiters).
        """
        return self._checked(name, lambda: (self.fetcher.ensure(
            name, cancelled=cancelled, deadline=deadline), False))[0]

    def fetch(self, name: str) -> tuple[Path, bool]:
        """`ensure` for `crds-fs sync`: downloads in the calling thread, and says whether
        this call downloaded the file (see `Fetcher.fetch`); the same errors."""
        return self._checked(name, lambda: self.fetcher.fetch(name))

    def _checked(self, name: str, obtain: Callable[[], tuple[Path, bool]]
                 ) -> tuple[Path, bool]:
        fetched = False
        for _attempt in range(3):
            path, this_time = obtain()
            fetched = fetched or this_time
            if self._on_disk_good(name, path):
                self.record_use(name)
                if time.monotonic() >= self._lookups_flush_at:
                    self.flush_lookups()
                return path, fetched
        raise DownloadError(f"'{name}' kept changing in the cache {self.store.root} while it "
                            "was being fetched (another program writes there?)")

    def _on_disk_good(self, name: str, path: Path) -> bool:
        """One stat (and a hash only when the file is not the one verified): a path handed
        out is never a truncated or rewritten copy; a bad one is removed for a refetch."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._forget(name)
            return False
        return self._still_good(name, path, st)

    def open_reader(self, name: str, *, cancelled: Callable[[], bool] | None = None,
                    deadline: float | None = None) -> Reader:
        """Ensure *name*, check the file on disk, open it for reads; pinned until closed.

        The check is a stat on every open (size, and the stamp recorded when it was
        verified); a file whose stamp changed is hashed again, and a file of the wrong size
        or sha1 is removed from the cache and fetched again.
        """
        self._pin(name)
        try:
            for _attempt in range(3):
                path = self.ensure(name, cancelled=cancelled, deadline=deadline)
                fd = self._open_checked(name, path)
                if fd is not None:
                    return Reader(self, name, path, fd)
            raise DownloadError(f"'{name}' kept changing in the cache {self.store.root} while "
                                "it was being opened (another program writes there?)")
        except BaseException:
            self._unpin(name)
            raise

    def _open_checked(self, name: str, path: Path) -> int | None:
        """A locked descriptor of the verified file at *path*, or None when it has to be
        fetched again (gone, replaced, or failing its check: then it is removed)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._forget(name)
            return None
        try:
            self.store.lock_shared(fd)
            st = os.fstat(fd)
            try:
                same = os.stat(path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if same and self._still_good(name, path, st):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def _still_good(self, name: str, path: Path, st: os.stat_result) -> bool:
        """Size always; sha1 when the file is not the one recorded as verified."""
        info = self.fetcher.info(name)
        if st.st_size != info.size:
            log.warning("cached %s at %s has %d bytes but the catalog says %d (truncated or "
                        "replaced): removing it and fetching it again", name, path,
                        st.st_size, info.size)
            self._discard(name)
            return False
        entry = self.index.get(name)
        stamp = file_stamp(st)
        if entry is not None and entry.stamp == stamp:
            return True
        size, sha1 = sha1_file(path)
        if size == info.size and (not info.sha1 or sha1 == info.sha1):
            try:
                if entry is None:
                    self.index.add(name, size, sha1, stamp=stamp)
                else:
                    self.index.set_stamp(name, stamp)
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not record the re-verified %s in the cache index %s: %s",
                            name, self.index.directory, exc)
            return True
        log.warning("cached %s at %s is corrupt (sha1 %s, the catalog says %s; it changed on "
                    "disk after it was verified): removing it and fetching it again", name, path,
                    sha1, info.sha1)
        self._discard(name)
        return False

    def verify(self, name: str, *, cancelled: Callable[[], bool] | None = None,
               deadline: float | None = None) -> str:
        """Re-hash the cached *name* against the catalog (on demand: it reads the file).

        Returns "ok <sha1>", "not cached", or, for a bad copy (removed, then fetched
        again), "repaired <sha1>" / "removed: <why the refetch failed>".
        """
        info = self.fetcher.info(name)
        path = self.local_path(name)
        if self.index.get(name) is None and not path.exists():
            return "not cached"
        try:
            size, sha1 = sha1_file(path)
        except FileNotFoundError:
            self._forget(name)
            return "not cached"
        if size == info.size and (not info.sha1 or sha1 == info.sha1):
            try:
                stamp = file_stamp(os.stat(path))
                if self.index.get(name) is None:
                    self.index.add(name, size, sha1, stamp=stamp)
                else:
                    self.index.set_stamp(name, stamp)
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not record the verified %s in %s: %s", name,
                            self.index.directory, exc)
            return f"ok {sha1}"
        log.warning("verification of cached %s at %s failed (%d bytes, sha1 %s; the catalog "
                    "says %d bytes, sha1 %s): removing it and fetching it again", name, path,
                    size, sha1, info.size, info.sha1)
        self._discard(name)
        try:
            fresh = self.ensure(name, cancelled=cancelled, deadline=deadline)
        except CrdsFsError as exc:
            return f"removed: {exc}"
        return f"repaired {sha1_file(fresh)[1]}"

    def _discard(self, name: str) -> None:
        """Remove a bad copy from disk and index (it is fetched again on its next use)."""
        self.store.remove(name)
        self._forget(name)

    def forget(self, name: str) -> None:
        """Drop *name* from the index (its file was removed by a maintenance tool); the next
        use of it, here or in a mount sharing the cache, fetches it again."""
        self._forget(name)

    def _forget(self, name: str) -> None:
        try:
            self.index.remove(name)
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not remove %s from the cache index %s: %s", name,
                        self.index.directory, exc)

    def record_use(self, name: str) -> None:
        """Note that *name* was used (LRU clock); writes the index at most once a minute.

        A failure to write (disk full) is logged, never raised: it only ages the LRU hint.
        """
        now = time.time()
        with self._lock:
            last = self._last_use.get(name, 0.0)
            if now - last < USE_RECORD_INTERVAL:
                return
            self._last_use[name] = now
        try:
            self.index.touch(name, now)
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not record the use of %s in the cache index %s: %s", name,
                        self.index.directory, exc)

    def flush_lookups(self) -> None:
        """Add this process's hits and misses since the last flush to the index's counters.

        Called at most every LOOKUP_FLUSH_INTERVAL seconds by `ensure` and at close; a
        failure (disk full) is logged and the counts are tried again at the next flush.
        """
        with self._flush_lock:
            self._lookups_flush_at = time.monotonic() + LOOKUP_FLUSH_INTERVAL
            counts = self.fetcher.snapshot()
            hits, misses = int(counts["hits"]), int(counts["misses"])
            done_hits, done_misses = self._lookups_flushed
            try:
                self.index.add_lookups(hits - done_hits, misses - done_misses)
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not record hit/miss counters in the cache index %s: %s",
                            self.index.directory, exc)
                return
            self._lookups_flushed = (hits, misses)

    def lookups(self) -> tuple[int, int]:
        """(hits, misses) of every process that used this cache, this one's unflushed
        counts included."""
        with self._flush_lock:
            counts = self.fetcher.snapshot()
            done_hits, done_misses = self._lookups_flushed
            hits, misses = self.index.lookups()
        return (hits + int(counts["hits"]) - done_hits,
                misses + int(counts["misses"]) - done_misses)

    def cached_names(self) -> set[str]:
        """Names the index records as cached (this observatory)."""
        return self.index.names()

    def stats(self) -> dict[str, Any]:
        """JSON-able state for `.crds-fs/stats` and logs.

        Also flushes the hit/miss counters, so `crds-fs cache status` (which reads the
        stats of the mounts using the cache first) sees an idle mount's latest counts.
        """
        self.flush_lookups()
        count, size = self.index.totals()
        fetched = self.fetcher.snapshot()
        with self._lock:
            pinned = sum(1 for n in self._pins.values() if n > 0)
        try:
            free, disk = self.store.disk_space()
        except OSError:
            free = disk = 0
        return {
            "cache_dir": str(self.store.root),
            "observatory": self.observatory,
            "server": self.catalog.server_url or self.settings.server_url,
            "online": self.online,
            "context": self.server_info.get("operational_context"),
            "catalog_files": len(self.catalog),
            "catalog_fetched_at": self.catalog.fetched_at,
            "cached_files": count,
            "cached_bytes": size,
            "max_bytes": self.max_bytes or 0,
            "min_free_bytes": self.min_free_bytes(disk),
            "disk_free_bytes": free,
            "downloads_done": fetched["downloads"],
            "downloads_failed": fetched["failures"],
            "bytes_downloaded": fetched["bytes"],
            "adopted": fetched["adopted"],
            "in_flight": fetched["in_flight"],
            "open_readers": pinned,
            "evictions": self._evictions,
            "hits": fetched["hits"],
            "misses": fetched["misses"],
            "pinned_files": len(self.index.pinned_names()),
        }

    # --- reconnecting ---------------------------------------------------------------------

    def _reconnect(self) -> bool:
        """Probe a server that was unreachable at open (rate-limited); True when it is back.

        The probe makes one attempt (no retries), so a still-dead server costs one connect
        timeout at most every `reconnect_interval` seconds.  The catalog stays the stored
        one: CRDS files never change, only new ones appear, and those wait for a restart.
        """
        with self._lock:
            now = time.monotonic()
            if self.online:
                return True
            if now - self._last_probe < self.reconnect_interval:
                return False
            self._last_probe = now
        probe = CrdsClient(list(self.settings.server_list),  # every server: any may be back
                           connect_timeout=self.settings.connect_timeout,
                           read_timeout=self.settings.read_timeout, retries=0,
                           observatory=self.observatory, proxy=self.settings.proxy)
        try:
            info = probe.get_server_info()
        except CrdsFsError as exc:
            log.info("CRDS server %s is still unreachable: %s", self.settings.server_url, exc)
            return False
        finally:
            probe.close()
        if info.get("observatory") != self.observatory:
            log.warning("CRDS server %s is back but serves %r, not %r; staying offline",
                        self.settings.server_url, info.get("observatory"), self.observatory)
            return False
        self.client.observatory = self.observatory
        try:
            self.client.get_server_info()  # memoised: the download URLs come from it
        except CrdsFsError:
            return False
        log.warning("CRDS server %s is reachable again; downloading on demand resumes",
                    self.settings.server_url)
        with self._lock:
            self.online = True
            self.fetcher.online = True
        return True

    # --- pins and eviction ----------------------------------------------------------------

    def _pin(self, name: str) -> None:
        with self._lock:
            self._pins[name] = self._pins.get(name, 0) + 1

    def _unpin(self, name: str) -> None:
        with self._lock:
            left = self._pins.get(name, 0) - 1
            if left > 0:
                self._pins[name] = left
                return
            self._pins.pop(name, None)
        if self.max_bytes and not self._closed:
            # a file that was kept over the limit only because it was open goes now
            try:
                if self.index.totals()[1] > self.max_bytes:
                    self.trim()
            except (OSError, sqlite3.Error) as exc:
                log.error("could not trim the cache %s after closing %s: %s",
                          self.store.root, name, exc)

    def pinned(self) -> set[str]:
        """Names open through a Reader of this process."""
        with self._lock:
            return {n for n, c in self._pins.items() if c > 0}

    def min_free_bytes(self, disk_bytes: int | None = None) -> int:
        """The free-space floor of the cache's disk, in bytes (CRDS_FS_CACHE_MIN_FREE)."""
        if disk_bytes is None:
            disk_bytes = self.store.disk_space()[1]
        return parse_min_free(self.settings.cache_min_free, disk_bytes)

    def _after_commit(self, name: str, size: int) -> None:
        with self._lock:
            self._last_use[name] = time.time()
        self.trim(keep=name)

    def make_room(self, name: str, size: int) -> None:
        """Before a download of *size* bytes: evict so the disk keeps its free-space floor
        afterwards; CacheFullError when even that is not enough (floor 0: no check)."""
        free, disk = self.store.disk_space()
        floor = self.min_free_bytes(disk)
        if not floor or free - size >= floor:
            return
        self.trim(need=size)
        free, disk = self.store.disk_space()
        if free - size >= floor:
            return
        raise CacheFullError(
            f"cannot store '{name}' ({size} bytes) in the cache {self.store.root}: its disk "
            f"has {free} bytes free and the cache keeps at least {floor} bytes free "
            f"(CRDS_FS_CACHE_MIN_FREE={self.settings.cache_min_free}); every file that could "
            "be evicted was (open files are kept). Free space on that disk, lower "
            "CRDS_FS_CACHE_MIN_FREE, or point CRDS_FS_CACHE at a bigger disk")

    def trim(self, *, need: int = 0, keep: str | None = None) -> int:
        """Evict least recently used references until the cache is within its limits.

        Two limits, each with hysteresis (LOW_WATER): the size limit (`max_bytes`: once
        crossed, evict down to 90% of it) and the free-space floor of the cache's disk
        (below it, or below it once *need* more bytes are written: evict until the floor
        plus 10% and *need* are free).  Never evicted: mappings and config files (small,
        needed for every lookup, offline too), files open through a Reader here or in
        another process (pin / flock), files of pinned contexts (`crds-fs cache pin`,
        recorded in the index, so every process sharing the cache honours them), *keep*
        (just committed).  A file larger than the
        whole limit is kept only while it is open: it does not count against the limit
        while protected, and it is the first to go once closed.  Returns files removed.
        """
        with self._evict_lock:
            return self._trim(need, keep)

    def _trim(self, need: int, keep: str | None) -> int:
        free, disk = self.store.disk_space()
        floor = self.min_free_bytes(disk)
        limit = self.max_bytes or 0
        if not floor or free - need >= floor:
            if not limit:  # the common case: no size limit, room on disk; no index query
                return 0
            _count, total = self.index.totals()
            if total <= limit:
                return 0
        else:
            _count, total = self.index.totals()
        protected = self.pinned() | self.index.pinned_names()
        if keep:
            protected.add(keep)
        entries = self.index.entries()
        oversize_open = sum(e.size for n, e in entries.items()
                            if n in protected and limit and e.size > limit)
        counted = total - oversize_open
        to_remove = 0
        if limit and counted > limit:
            to_remove = counted - int(limit * LOW_WATER)
        if floor and free - need < floor:
            to_remove = max(to_remove, int(floor / LOW_WATER) + need - free)
        if to_remove <= 0:
            return 0
        # files that can never fit go first, then least recently used
        candidates = sorted(
            ((not (limit and entry.size > limit), entry.last_used, name, entry.size)
             for name, entry in entries.items()
             if name not in protected and self.catalog.kind(name) == "reference"),
        )
        removed = freed = 0
        for _fits, _used, name, size in candidates:
            if freed >= to_remove:
                break
            outcome = self.store.remove_unused(name)
            if outcome is False:
                continue  # open in another process
            self._forget(name)
            freed += size
            removed += 1
            log.info("evicted %s (%d bytes) from the cache %s (limit %s, free-space floor %d "
                     "bytes)", name, size, self.store.root, limit or "none", floor)
        self._evictions += removed
        if freed < to_remove:
            now = time.monotonic()
            if now - self._over_warned > 60:
                self._over_warned = now
                log.warning("the cache %s could free only %d of the %d bytes its limits ask "
                            "for (limit %s bytes, free-space floor %d bytes): every remaining "
                            "reference is open or pinned (`crds-fs cache status` lists pins), "
                            "and mappings are never evicted",
                            self.store.root, freed, to_remove, limit or "none", floor)
        return removed

    def evict(self, keep: str | None = None) -> int:
        """Trim to the limits now (the name older callers use)."""
        return self.trim(keep=keep)


def _load(
    settings: Settings, client: CrdsClient, db: Any, observatory: str | None, offline: bool
) -> tuple[Catalog, bool, str]:
    """(catalog, online, why offline) following FileCache.open's rules."""
    obs = observatory or settings.effective_observatory
    where = f"CRDS server {settings.server_url}"
    if offline:
        obs = obs or db.get("meta:observatory")
        if not obs:
            raise ConfigError(f"offline and no observatory known for the cache "
                              f"{settings.cache_dir}: set CRDS_OBSERVATORY")
        return (load_catalog(client, db, obs, offline=True), False,
                "crds-fs runs offline (the server is not contacted); reconnect to fetch it")
    try:
        if not obs:
            obs = client.get_server_info().get("observatory")
            if not obs:
                raise ProtocolError(f"{where} names no observatory in its server info; "
                                    "set CRDS_OBSERVATORY")
        catalog = load_catalog(client, db, obs)
    except ServerUnreachableError as exc:
        obs = obs or db.get("meta:observatory")
        if not obs:
            raise OfflineError(f"{exc} No catalog is stored in {settings.cache_dir} either "
                               "(and no observatory is known)") from None
        try:
            catalog = load_catalog(client, db, obs, offline=True)
        except OfflineError as inner:
            raise OfflineError(f"{exc} {inner}") from None
    if catalog.source == "server":
        return catalog, True, ""
    log.warning("%s is unreachable; working offline from the catalog stored in %s "
                "(fetched %s): only cached files can be read", where, db.directory,
                time.ctime(catalog.fetched_at))
    return catalog, False, (f"{where} is unreachable (it is probed again at most every "
                            f"{RECONNECT_INTERVAL:.0f}s); check the server or the network")
