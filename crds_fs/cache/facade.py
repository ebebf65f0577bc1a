"""FileCache: the one object the namespace layer (and the Python API) talks to.

It ties together the index (what is cached), the store (where files live, atomic commits),
the fetcher (downloads, single flight) and the catalog (what exists on the server, with
size and sha1).  Opening never walks the cache directories and, offline, never touches the
network: everything needed comes from the index.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..client.catalog import Catalog, load_catalog
from ..client.rpc import CrdsClient
from ..config import Settings
from ..errors import (
    ConfigError,
    CrdsFsError,
    OfflineError,
    ProtocolError,
    ServerUnreachableError,
)
from .fetcher import Fetcher
from .index import CacheIndex, open_db
from .store import FileStore

log = logging.getLogger("crds_fs.cache")

#: last_used is written at most this often per file (it is an LRU hint, not an audit log).
USE_RECORD_INTERVAL = 60.0
#: Files used this recently are never evicted (a caller may be about to open them).
EVICT_GRACE = 30.0
#: A cache that found the server unreachable at open probes it again at most this often.
RECONNECT_INTERVAL = 30.0


class Reader:
    """An open, complete, verified cached file; reads are positional (thread-safe).

    Keeping a Reader open pins the file: eviction skips it.  Later this is where reads can
    be served from a download still in progress.
    """

    def __init__(self, cache: FileCache, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._cache = cache
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size

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
        )
        self._lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self._last_use: dict[str, float] = {}
        self._evictions = 0
        self._closed = False
        #: seconds a just-used file is safe from eviction (tests set 0)
        self.evict_grace = EVICT_GRACE
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
    ) -> FileCache:
        """Open (creating if needed) the cache at `settings.cache_dir` and load the catalog.

        Online, the catalog comes from the server and replaces the stored copy; when the
        server cannot be reached (or *offline*), the copy stored in the index is used and
        `online` is False.  The observatory is *observatory*, else the settings' (explicit
        or guessed from the server URL), else the server's, else the last one used here.
        *max_bytes* (default `settings.cache_max_bytes`, 0/None = no limit) bounds the
        references kept; least recently used ones are evicted.
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
        return cls(settings=settings, catalog=catalog, client=client, index=index, store=store,
                   online=online, offline_reason=reason, max_bytes=limit,
                   may_reconnect=not offline)

    def close(self) -> None:
        """Release the HTTP pool and the index (idempotent)."""
        if self._closed:
            return
        self._closed = True
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

    # --- files ----------------------------------------------------------------------------

    def local_path(self, name: str) -> Path:
        """Where *name* lives (or will live): `<cache>/mappings|references|config/<obs>/<name>`."""
        return self.store.final_path(name)

    def is_cached(self, name: str) -> bool:
        """True when the index records a good copy of *name* (no disk scan, no network)."""
        entry = self.index.get(name)
        if entry is None:
            return False
        info = self.catalog.get(name)
        return info is not None and entry.size == info.size and (
            not info.sha1 or entry.sha1 == info.sha1)

    def cached_path(self, name: str) -> Path | None:
        """The final path of *name* if the index says it is cached, else None."""
        return self.local_path(name) if self.is_cached(name) else None

    def ensure(self, name: str) -> Path:
        """Path of the verified file *name*, downloaded once if needed (blocks).

        Raises UnknownFileError (not in the catalog; no network used), OfflineError (not
        cached and no server), DownloadError / VerificationError (naming file, URL, reason).
        """
        path = self.fetcher.ensure(name)
        self.record_use(name)
        return path

    def open_reader(self, name: str) -> Reader:
        """Ensure *name*, then open it for positional reads; pinned until closed."""
        self._pin(name)
        try:
            return Reader(self, name, self.ensure(name))
        except BaseException:
            self._unpin(name)
            raise

    def record_use(self, name: str) -> None:
        """Note that *name* was used (LRU clock); writes the index at most once a minute."""
        now = time.time()
        with self._lock:
            last = self._last_use.get(name, 0.0)
            if now - last < USE_RECORD_INTERVAL:
                return
            self._last_use[name] = now
        self.index.touch(name, now)

    def cached_names(self) -> set[str]:
        """Names the index records as cached (this observatory)."""
        return self.index.names()

    def stats(self) -> dict[str, Any]:
        """JSON-able state for `.crds-fs/stats` and logs."""
        count, size = self.index.totals()
        fetched = self.fetcher.snapshot()
        with self._lock:
            pinned = sum(1 for n in self._pins.values() if n > 0)
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
            "downloads_done": fetched["downloads"],
            "downloads_failed": fetched["failures"],
            "bytes_downloaded": fetched["bytes"],
            "adopted": fetched["adopted"],
            "in_flight": fetched["in_flight"],
            "open_readers": pinned,
            "evictions": self._evictions,
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
        probe = CrdsClient(self.settings.server_url, connect_timeout=self.settings.connect_timeout,
                           read_timeout=self.settings.read_timeout, retries=0,
                           observatory=self.observatory)
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
            else:
                self._pins.pop(name, None)

    def _after_commit(self, name: str, size: int) -> None:
        with self._lock:
            self._last_use[name] = time.time()
        if self.max_bytes:
            self.evict(keep=name)

    def evict(self, keep: str | None = None) -> int:
        """Delete least recently used references until the cache fits max_bytes.

        Never evicted: mappings and config files (small, needed for every lookup), files
        open through a Reader, files used in the last `evict_grace` seconds, *keep*.  Returns
        the number of files removed.
        """
        if not self.max_bytes:
            return 0
        _count, total = self.index.totals()
        if total <= self.max_bytes:
            return 0
        now = time.time()
        with self._lock:
            protected = {n for n, c in self._pins.items() if c > 0}
            protected |= {n for n, t in self._last_use.items() if now - t < self.evict_grace}
        if keep:
            protected.add(keep)
        candidates = sorted(
            ((entry.last_used, name, entry.size) for name, entry in self.index.entries().items()
             if name not in protected and self.catalog.kind(name) == "reference"),
        )
        removed = 0
        for _used, name, size in candidates:
            if total <= self.max_bytes:
                break
            self.store.remove(name)
            if self.index.remove(name) is not None:
                total -= size
            removed += 1
            log.info("evicted %s (%d bytes) to keep the cache under %d bytes", name, size,
                     self.max_bytes)
        if total > self.max_bytes:
            log.warning("cache %s holds %d bytes, over its limit of %d, but every remaining "
                        "file is in use or recent", self.store.root, total, self.max_bytes)
        self._evictions += removed
        return removed


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
