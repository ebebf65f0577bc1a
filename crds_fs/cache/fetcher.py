"""The fetcher: download a file once, verify it, commit it atomically, share the result.

Single flight at two levels:

* threads of one process: the first `ensure(name)` creates a `Download` and does the work;
  later callers wait on it and get the same path or the same exception;
* processes sharing a cache dir: the downloading thread holds the name's flock in `tmp/`;
  another process waits for the lock, then finds the file committed (index or final path).

Every wait is bounded.  The transfer itself is bounded by the client's connect/read timeouts
and retry budget (connection errors and 5xx when opening; a body that breaks off is resumed
with a byte range, or restarted; a body whose sha1 is wrong is fetched again, while retries
are left).  A process waiting for another one's download gives up when the temp file stops
growing for longer than the downloader could legitimately stall.

The transfer runs in a background thread of its own (`_Threads` keeps finished ones for
the next download); every caller, the first included, only waits for it.  So a waiter
can leave at any moment without stopping the others: at its deadline (`OpenTimeoutError`,
the download goes on and a later open finds it done or joins it) or when `cancelled()`
says its reader was interrupted (`OpenInterruptedError`; when no waiter is left the
download is cancelled, since nobody wants it any more).  The FUSE glue passes libfuse's
`fuse_interrupted()` as `cancelled`, so a reader killed in open() returns at once instead
of sitting in D state until the server gives up.

Hooks for later issues (not used yet):

* read while downloading: `Download.bytes_written` grows under `Download.cond`;
  `Download.wait_for_bytes(n)` blocks until n bytes are on disk in `Download.part`.  Those
  bytes are NOT verified until the whole file is, so nothing serves them today.
* byte ranges: `Fetcher.open_body(url, start, end)` is the one place that issues ranged GETs
  (resume uses it); a reader that wants the first pages of a huge file can use it as well.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from ..client.catalog import Catalog, FileInfo
from ..client.rpc import CrdsClient, iter_chunks
from ..config import Settings
from ..errors import (
    CacheFullError,
    CrdsFsError,
    DownloadCancelled,
    DownloadError,
    OfflineError,
    OpenInterruptedError,
    OpenTimeoutError,
    ProtocolError,
    ServerUnreachableError,
    UnknownFileError,
    VerificationError,
)
from ..hashing import sha1_file
from . import ranges
from .index import CacheIndex
from .store import FileStore, NameLock, file_stamp

log = logging.getLogger("crds_fs.cache")

#: Bytes per read from the socket: small enough that progress advances smoothly and that a
#: body stalling mid-chunk loses little (requests' iter_content returns only whole chunks,
#: and a read timeout drops the partial one), big enough that the per-chunk Python overhead
#: and the hand-over to the writer thread stay negligible (1 MiB measured no faster).
_CHUNK = 256 * 1024
#: Chunks received but not yet written and hashed (bounds the memory of one download).
_QUEUE_CHUNKS = 16
#: Bodies larger than this are written and hashed by a second thread (see `_Sink`).
_THREAD_MIN_SIZE = 2 * _CHUNK
#: Start the disk writeback of what was written every this many bytes.
_WRITEBACK_EVERY = 8 << 20
#: How often a waiting caller checks whether its reader was interrupted (seconds).
INTERRUPT_POLL = 0.1
#: said when a download failed although later attempts bypassed caches on the way
_BYPASSED = (" (the attempts after the first asked HTTP caches on the way to refetch from the "
             "server: Cache-Control: no-cache)")
#: errno values that mean "the disk is full"
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError / SQLite error of a full disk (ENOSPC, EDQUOT, SQLITE_FULL)."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    return isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()


class Download:
    """One transfer of one file in this process; other threads wait on it."""

    def __init__(self, name: str, info: FileInfo, final: Path, part: Path) -> None:
        self.name = name
        self.size = info.size
        self.sha1 = info.sha1
        self.final = final
        #: temp file the bytes go to (only meaningful while `state == "running"`)
        self.part = part
        self.url = ""
        self.state = "pending"  # pending -> running -> done | failed
        self.bytes_written = 0
        self.path: Path | None = None
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        #: callers waiting for this download (under cond)
        self.waiters = 0
        #: set when the last waiter was interrupted: the leader stops at its next check
        self.cancel_requested = False
        #: True once the bytes were downloaded and committed (not cached, not adopted)
        self.committed = False

    def __repr__(self) -> str:
        return f"Download({self.name!r}, {self.state}, {self.bytes_written}/{self.size})"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def started(self, url: str) -> None:
        with self.cond:
            self.url = url
            self.state = "running"
            self.bytes_written = 0
            self.cond.notify_all()

    def progress(self, written: int) -> None:
        with self.cond:
            self.bytes_written = written
            self.cond.notify_all()

    def finish(self, path: Path | None = None, error: BaseException | None = None) -> None:
        with self.cond:
            self.path = path
            self.error = error
            self.state = "failed" if error is not None else "done"
            self.cond.notify_all()

    def join(self) -> None:
        """Count one more waiter (and take back a cancel nobody acted on yet)."""
        with self.cond:
            self.waiters += 1
            self.cancel_requested = False

    def wait(self, cancelled: Callable[[], bool] | None = None,
             deadline: float | None = None, deadline_s: float = 0.0) -> Path:
        """The committed path once the leader is done, or its exception re-raised.

        Leaves early with OpenInterruptedError when *cancelled()* turns true (polled every
        INTERRUPT_POLL s) or OpenTimeoutError at *deadline* (time.monotonic()).  Without
        either it is bounded by the leader, whose own waits are bounded.  The caller must
        have called `join()`.
        """
        interrupted = True
        with self.cond:
            try:
                while not self.finished:
                    if cancelled is not None and cancelled():
                        raise OpenInterruptedError(
                            f"opening '{self.name}' was interrupted (the reader got a signal) "
                            f"while it was being downloaded ({self.bytes_written} of "
                            f"{self.size} bytes)")
                    timeout = INTERRUPT_POLL if cancelled is not None else None
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            interrupted = False
                            raise OpenTimeoutError(self._timeout_message(deadline_s))
                        timeout = left if timeout is None else min(timeout, left)
                    self.cond.wait(timeout)
                interrupted = False
            finally:
                self.waiters -= 1
                if interrupted and self.waiters <= 0 and not self.finished:
                    self.cancel_requested = True
        if self.error is not None:
            raise self.error
        assert self.path is not None
        return self.path

    def _timeout_message(self, deadline_s: float) -> str:
        where = f"from {self.url}" if self.url else "(waiting for another process or the server)"
        return (f"opening '{self.name}' took longer than the open deadline of {deadline_s:g}s "
                f"(CRDS_FS_OPEN_DEADLINE): {self.bytes_written} of {self.size} bytes so far "
                f"{where}; the download goes on in the background, try again later")

    def wait_for_bytes(self, count: int, timeout: float | None = None) -> int:
        """Hook: block until *count* bytes are in `part` (or the download ended).

        Returns bytes_written.  The bytes are unverified: a caller must not hand them out
        as file content until the policy for that is decided.
        """
        with self.cond:
            self.cond.wait_for(lambda: self.bytes_written >= count or self.finished, timeout)
            return self.bytes_written


class Fetcher:
    """Makes files of one observatory's catalog present in the store, once each."""

    #: seconds added to the worst legitimate stall (scheduling, file_url, fsync)
    stall_margin = 5.0

    def __init__(
        self,
        *,
        client: CrdsClient,
        catalog: Catalog,
        store: FileStore,
        index: CacheIndex,
        settings: Settings,
        online: bool,
        offline_reason: str = "",
        on_commit: Callable[[str, int], None] | None = None,
        reconnect: Callable[[], bool] | None = None,
        make_room: Callable[[str, int], None] | None = None,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.store = store
        self.index = index
        self.settings = settings
        self.online = online
        self.offline_reason = offline_reason
        self.on_commit = on_commit
        #: called when a download is needed while offline; True = the server is back
        self.reconnect = reconnect
        #: called before a download with (name, size); frees space or raises CacheFullError
        self.make_room = make_room
        self._lock = threading.Lock()
        self._inflight: dict[str, Download] = {}
        #: hits / misses: ensure() calls that found the file cached / had to obtain it
        self.counters = {"downloads": 0, "failures": 0, "bytes": 0, "adopted": 0,
                         "hits": 0, "misses": 0}
        self._counter_lock = threading.Lock()
        self._threads = _Threads("crds-fs-fetch")

    # --- public ---------------------------------------------------------------------------

    def info(self, name: str) -> FileInfo:
        """Catalog entry of *name*; UnknownFileError (no network) when there is none."""
        FileStore.check_name(name)
        info = self.catalog.get(name)
        if info is None:
            raise UnknownFileError(
                f"'{name}' is not in the {self.catalog.observatory} catalog of CRDS server "
                f"{self.catalog.server_url or self.settings.server_url}: check the name "
                "(CRDS names are case-sensitive)"
            )
        return info

    def lookup(self, name: str, info: FileInfo) -> Path | None:
        """The final path if the index records a good copy that is still on disk."""
        entry = self.index.get(name)
        if entry is None:
            return None
        final = self.store.final_path(name)
        if entry.size == info.size and (not info.sha1 or entry.sha1 == info.sha1):
            if final.exists():
                return final
            log.warning("%s is recorded in the cache index but missing from %s; fetching it "
                        "again", name, final)
        else:
            log.warning("cached %s (size %d, sha1 %s) differs from the server catalog "
                        "(size %d, sha1 %s); replacing it", name, entry.size, entry.sha1,
                        info.size, info.sha1)
            self.store.remove(name)
        self.index.remove(name)
        return None

    def _refuse_conflict(self, name: str) -> None:
        """VerificationError (EIO) when two servers' catalogs disagree on *name*'s sha1."""
        conflict = getattr(self.client, "conflict", None)
        why = conflict(name) if conflict is not None else None
        if why:
            log.error("refusing to serve %s: %s", name, why)
            raise VerificationError(why)

    def in_flight(self, name: str) -> Download | None:
        """Hook for read-while-downloading: the transfer of *name* running in this process."""
        with self._lock:
            return self._inflight.get(name)

    def in_flight_count(self) -> int:
        with self._lock:
            return len(self._inflight)

    def ensure(self, name: str, *, cancelled: Callable[[], bool] | None = None,
               deadline: float | None = None) -> Path:
        """Path of the verified file *name*, downloading it once if needed.

        Blocks until done, or until *deadline* (a time.monotonic() value:
        OpenTimeoutError) or until *cancelled()* is true (OpenInterruptedError); see the
        module doc for what happens to the download then.
        """
        return self._ensure(name, cancelled, deadline, inline=False)[0]

    def fetch(self, name: str) -> tuple[Path, bool]:
        """`ensure` for a caller that never leaves early (`crds-fs sync`'s workers): a
        download it leads runs in its own thread, saving the hand-over to another one;
        returns (path, True when this call downloaded the file; False when it was cached,
        adopted, or downloaded by another thread or process)."""
        return self._ensure(name, None, None, inline=True)

    def _ensure(self, name: str, cancelled: Callable[[], bool] | None,
                deadline: float | None, *, inline: bool) -> tuple[Path, bool]:
        info = self.info(name)
        self._refuse_conflict(name)
        path = self.lookup(name, info)
        if path is not None:
            self._count("hits", 1)
            return path, False
        self._count("misses", 1)
        deadline_s = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
        for attempt in range(2):
            with self._lock:
                download = self._inflight.get(name)
                leader = download is None
                if download is None:
                    download = Download(name, info, self.store.final_path(name),
                                        self.store.part_path(name))
                    self._inflight[name] = download
                download.join()
            if leader and inline:
                self._lead(download, info)
            elif leader:
                self._threads.run(self._lead, download, info)
            try:
                path = download.wait(cancelled, deadline, deadline_s)
                return path, leader and download.committed
            except DownloadCancelled:
                # we joined a flight whose last reader had just been interrupted
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _lead(self, download: Download, info: FileInfo) -> None:
        """The background thread of one download: obtain the file, then tell the waiters."""
        path: Path | None = None
        error: BaseException | None = None
        try:
            path = self._obtain(download, info)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            error = exc
        with self._lock:
            self._inflight.pop(download.name, None)
            download.finish(path=path, error=error)

    # --- leader ---------------------------------------------------------------------------

    def _obtain(self, download: Download, info: FileInfo) -> Path:
        name = download.name
        adopted = self._adopt(name, info)
        if adopted is not None:
            return adopted
        if not self.online and not (self.reconnect is not None and self.reconnect()):
            raise OfflineError(
                f"'{name}' is not cached in {self.store.root} and {self.offline_reason}"
            )
        lock = self.store.lock(name)
        self._acquire(lock, download)
        try:
            # Another process may have committed it while we waited for the lock.
            path = self.lookup(name, info) or self._adopt(name, info)
            if path is not None:
                return path
            return self._download(download, info)
        finally:
            lock.release()

    def _adopt(self, name: str, info: FileInfo) -> Path | None:
        """Take over a final file the index does not know (crash after the rename).

        Only committed (hence once verified) files reach a final path, but it is checked
        again: a user or another tool may have put something there.
        """
        final = self.store.final_path(name)
        if not final.exists():
            return None
        size, sha1 = sha1_file(final)
        if size == info.size and (not info.sha1 or sha1 == info.sha1):
            self.record(name, size, sha1, final)
            self._count("adopted", 1)
            log.info("adopted %s already present at %s (verified)", name, final)
            return final
        log.warning("%s at %s does not match the server catalog (size %d/%d, sha1 %s/%s); "
                    "removing it and fetching again", name, final, size, info.size, sha1,
                    info.sha1)
        self.store.remove(name)
        return None

    def stall_limit(self) -> float:
        """Longest time a healthy download can make no progress (connect+read, all retries)."""
        s = self.settings
        attempts = s.retries + 1
        return (attempts * (s.connect_timeout + s.read_timeout) + s.backoff * 2 ** attempts
                + self.stall_margin)

    def _acquire(self, lock: NameLock, download: Download) -> None:
        """Take the name's cross-process lock, waiting (bounded) while another process holds it.

        The wait ends when the holder commits or fails (the kernel releases a dead holder's
        lock at once); it is abandoned with DownloadError when the holder's temp file has
        not grown for longer than `stall_limit()`.
        """
        if lock.try_acquire():
            return
        log.info("waiting for another process that is downloading %s", download.name)
        limit = self.stall_limit()
        last_size, last_change, pause = (-1, -1), time.monotonic(), 0.01
        while not lock.try_acquire():
            self._check_cancel(download)
            try:  # blocks too: parallel ranges fill a file that has its full size at once
                st = os.stat(download.part)
                size = (st.st_size, st.st_blocks)
            except FileNotFoundError:
                size = (-1, -1)
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change > limit:
                raise DownloadError(
                    f"another process has been downloading '{download.name}' into "
                    f"{download.part} without progress for {limit:.0f}s; giving up. If no "
                    "crds-fs process is running, remove that file and try again"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _download(self, download: Download, info: FileInfo) -> Path:
        """Stream into the temp file, verify, commit, record; nothing kept on failure."""
        name = download.name
        try:
            url = self.client.file_url(name, self.catalog.observatory)
        except (ServerUnreachableError, ProtocolError) as exc:
            self._count("failures", 1)
            log.error("cannot download %s: no download URL (%s)", name, exc)
            raise DownloadError(f"cannot download '{name}': {exc}") from None
        if self.make_room is not None:
            try:
                self.make_room(name, info.size)
            except CacheFullError as exc:
                self._count("failures", 1)
                log.error("%s", exc)
                raise
            except (OSError, sqlite3.Error) as exc:  # trimming failed: try the download anyway
                log.warning("could not make room for %s in the cache %s: %s", name,
                            self.store.root, exc)
        download.started(url)
        part, fd = self._open_part(name)
        try:
            sha1 = self._transfer(download, fd, url)
            self._refuse_conflict(name)
            if not download.sha1:
                log.debug("%s: the server publishes no sha1; only its size was checked", name)
            committing = time.monotonic()
            final = self.store.commit(part, fd, name)
            download.committed = True
            log.debug("%s: committed (fsync, rename) in %.2fs", name,
                      time.monotonic() - committing)
        except BaseException as exc:
            self.store.discard(part)
            error: BaseException = exc
            if isinstance(exc, requests.RequestException):  # (an OSError too) not ours
                error = DownloadError(f"download of '{name}' from {url} failed: {exc}")
            elif isinstance(exc, OSError):  # writing the temp file or committing it failed
                error = (self._full(name, exc) if is_disk_full(exc) else DownloadError(
                    f"cannot store '{name}' in the cache {self.store.root}: {exc}; nothing "
                    "was kept. Check that disk"))
            if isinstance(error, DownloadCancelled):
                log.info("%s", error)
            else:
                self._count("failures", 1)
                if isinstance(error, CrdsFsError):
                    log.error("%s", error)
            if error is not exc:
                raise error from None
            raise
        finally:
            os.close(fd)
        self._count("downloads", 1)
        log.info("downloaded %s (%d bytes) from %s", name, info.size, url)
        if self.record(name, info.size, sha1, final) and self.on_commit is not None:
            try:
                self.on_commit(name, info.size)
            except (OSError, sqlite3.Error) as exc:
                log.error("keeping the cache %s within its limits after storing %s failed: %s",
                          self.store.root, name, exc)
        return final

    def _open_part(self, name: str) -> tuple[Path, int]:
        try:
            return self.store.open_part(name)
        except OSError as exc:
            if is_disk_full(exc):
                error = self._full(name, exc)
                self._count("failures", 1)
                log.error("%s", error)
                raise error from None
            raise

    def _full(self, name: str, exc: OSError) -> CacheFullError:
        """The error of a download that hit a full disk, saying where and what to do."""
        try:
            free, _total = self.store.disk_space()
            room = f"{free} bytes free"
        except OSError:
            room = "free space unknown"
        return CacheFullError(
            f"cannot store '{name}' in the cache {self.store.root}: the disk is full "
            f"(ENOSPC: {exc.strerror}; {room}); nothing was kept. Free space on that disk, "
            "lower CRDS_FS_CACHE_MAX_SIZE / raise CRDS_FS_CACHE_MIN_FREE so the cache evicts "
            "earlier, or point CRDS_FS_CACHE at a bigger disk")

    def record(self, name: str, size: int, sha1: str, final: Path) -> bool:
        """Enter a verified, committed file in the index; False (logged) when the index
        cannot be written (full disk, ...): the file is still served, and is adopted
        (re-verified and recorded) on its next use."""
        try:
            stamp = file_stamp(os.stat(final))
            self.index.add(name, size, sha1, stamp=stamp)
            return True
        except (OSError, sqlite3.Error) as exc:
            where = self.index.directory
            why = (f"the disk holding the cache index {where} is full (ENOSPC): free space there"
                   if is_disk_full(exc) else f"the cache index {where} cannot be written")
            log.error("%s was downloaded and verified into %s, but %s (%s); the file is "
                      "served anyway and will be re-verified and recorded on its next use",
                      name, final, why, exc)
            return False

    def _check_cancel(self, download: Download) -> None:
        if download.cancel_requested:
            raise DownloadCancelled(
                f"download of '{download.name}' cancelled after {download.bytes_written} of "
                f"{download.size} bytes: every reader waiting for it was interrupted")

    def _transfer(self, download: Download, fd: int, url: str) -> str:
        """Write the body of *url* into *fd*, resuming after breaks; return the sha1 hex.

        Opening is retried by the client (connection errors, timeouts, 5xx).  A body that
        breaks off (reset, truncation, read timeout) is resumed from the bytes already
        written with a Range request, or restarted when the server ignores ranges, up to
        `settings.retries` times.  The socket is read in this thread while a `_Sink` writes
        and hashes the previous chunks.  Big files go in parallel ranges (`ranges`) when
        the server serves ranges.
        """
        if ranges.wanted(download.size, self.settings.range_threshold, self.settings.streams):
            digest = ranges.parallel_transfer(self, download, fd, url)
            if digest is not None:
                return digest
            os.ftruncate(fd, 0)
        sink = _Sink(fd, download, self.store, self._count,
                     threaded=download.size > _THREAD_MIN_SIZE)
        try:
            return self._receive(download, sink, url)
        finally:
            sink.close()

    def _receive(self, download: Download, sink: _Sink, url: str) -> str:
        name, size = download.name, download.size
        written, failures = 0, 0
        while True:
            # after a failed attempt, HTTP caches on the way must not answer from their copy
            fresh = failures > 0
            response = self._open(download, url, written, fresh)
            if response is None:  # the server ignores ranges: start over
                sink.restart()
                written = 0
                response = self._open(download, url, 0, fresh)
                assert response is not None
            received = written
            reason, restart = "", False
            try:
                for chunk in iter_chunks(response, _CHUNK):
                    self._check_cancel(download)
                    received += len(chunk)
                    if received > size:
                        reason = f"the body is longer than the catalog size {size}"
                        restart = True
                        break
                    sink.put(chunk)
            except DownloadError as exc:
                if isinstance(exc, DownloadCancelled):
                    raise
                reason = _cause(exc, url)
            finally:
                response.close()
            written = sink.flush()  # everything received is on disk (or its error raised)
            if written == size and not restart:
                digest = sink.hexdigest()
                if not download.sha1 or digest == download.sha1:
                    return digest
                reason = (f"its sha1 {digest} differs from the server catalog's "
                          f"{download.sha1} (the server or something between corrupts data)")
                restart = True
            reason = reason or f"the body ended after {written} of {size} bytes"
            failures += 1
            if failures > self.settings.retries:
                error = VerificationError if restart else DownloadError
                raise error(
                    f"download of '{name}' from {url} failed after {failures} attempt(s): "
                    f"{reason}{_BYPASSED if failures > 1 else ''}; nothing was kept. "
                    "Try again later"
                )
            delay = self.settings.backoff * 2 ** (failures - 1)
            if restart:
                log.warning("download of %s from %s: %s; downloading it again in %.2fs "
                            "(attempt %d of %d), bypassing HTTP caches on the way "
                            "(Cache-Control: no-cache)", name, url, reason, delay,
                            failures + 1, self.settings.retries + 1)
                sink.restart()
                written = 0
            else:
                log.warning("download of %s from %s broke off at %d of %d bytes (%s); "
                            "resuming in %.2fs", name, url, written, size, reason, delay)
            self._sleep(download, delay)

    def _sleep(self, download: Download, delay: float) -> None:
        """Back off before a retry, checking for a cancel every INTERRUPT_POLL seconds."""
        end = time.monotonic() + delay
        while True:
            self._check_cancel(download)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, INTERRUPT_POLL))

    def _open(self, download: Download, url: str, start: int,
              fresh: bool = False) -> requests.Response | None:
        """Open the body from byte *start*; None when a resume was refused (no range support).

        *fresh*: ask caches on the way to refetch from the origin (Cache-Control: no-cache).
        """
        self._check_cancel(download)
        try:
            return self.open_body(url, start, fresh=fresh)
        except (ServerUnreachableError, DownloadError) as exc:
            if start == 0 or isinstance(exc, ServerUnreachableError):
                raise DownloadError(
                    f"download of '{download.name}' from {url} {_failed(_cause(exc, url))}"
                ) from None
            log.info("resuming %s at byte %d was refused (%s); restarting", download.name,
                     start, exc)
            return None

    def open_body(self, url: str, start: int = 0, end: int | None = None, *,
                  fresh: bool = False) -> requests.Response:
        """The single place that opens download bodies (whole, or bytes [start, end)).

        Hook for range reads of huge files; raises the client's errors unchanged.
        *fresh* sends Cache-Control: no-cache (a site cache served bad bytes before).
        """
        extra = {"no_cache": True} if fresh else {}
        if start == 0 and end is None:
            return self.client.open_stream(url, **extra)
        return self.client.open_stream(url, start=start, end=end, **extra)

    def _count(self, key: str, amount: int = 1) -> None:
        with self._counter_lock:
            self.counters[key] += amount

    def snapshot(self) -> dict[str, Any]:
        """Counters for stats() (downloads, failures, bytes, adopted, hits, misses, in
        flight)."""
        with self._counter_lock:
            data: dict[str, Any] = dict(self.counters)
        data["in_flight"] = self.in_flight_count()
        return data


class _Threads:
    """Daemon threads that run one call each, kept for the next call while they idle.

    Why not a new thread per download: besides starting the thread, the index (diskcache)
    opens one SQLite connection per thread, with its pragmas, so a sync of thousands of
    small files spent more on that than on the download itself.  Why not a
    ThreadPoolExecutor: its threads are joined at interpreter exit, so a process ending
    (an unmount) would wait for downloads nobody wants any more; and a bounded pool would
    make a download wait for a free thread, unbounded.  A call never waits here: an idle
    thread takes it or a new one starts.  A thread idle for `idle_timeout` seconds ends.

    ``idle`` counts the threads waiting for work minus the calls queued for them, so a
    call queued always has a waiting thread, and a thread whose wait timed out leaves only
    when no queued call counts on it.
    """

    idle_timeout = 30.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._idle = 0
        self._calls: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            queue.SimpleQueue())

    def run(self, call: Callable[..., None], *args: Any) -> None:
        """Run ``call(*args)`` in one of the threads, now."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._calls.put((call, args))
                return
        threading.Thread(target=self._serve, args=(call, args), daemon=True,
                         name=self.name).start()

    def _serve(self, call: Callable[..., None], args: tuple[Any, ...]) -> None:
        while True:
            try:
                call(*args)
            except BaseException:  # noqa: BLE001 - a bug in one call must not end the thread
                log.exception("unexpected error in a %s thread", self.name)
            with self._lock:
                self._idle += 1
            try:
                call, args = self._calls.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # no queued call counts on this thread: leave
                        self._idle -= 1
                        return
                call, args = self._calls.get()  # queued for this thread just now


class _Sink:
    """Writes received chunks to the temp file and hashes them, in a second thread if asked.

    Why a thread: on a fast link, receiving, SHA-1 and writing each cost about as much as
    the others, and done one after the other they add up.  hashlib and os.write release the
    GIL for large buffers, so a writer thread fed by a bounded queue overlaps them with the
    socket reads (256 MiB on loopback: ~0.40 s -> ~0.30 s).  Small files skip the thread
    (`threaded=False`): for them starting one costs more than it saves.

    The sha1 covers exactly the bytes written, in order (one consumer, FIFO queue).  An
    error of the writer (disk full, ...) is kept and re-raised to the receiving thread by
    the next `put()` or `flush()`; chunks after it are dropped, the download fails and
    the temp file is discarded by the caller.
    """

    def __init__(self, fd: int, download: Download, store: FileStore,
                 count: Callable[[str, int], None], *, threaded: bool) -> None:
        self.fd = fd
        self.download = download
        self.store = store
        self.count = count
        self.digest = hashlib.sha1(usedforsecurity=False)
        self.written = 0
        self._synced = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"crds-fs-write {download.name}")
            self._thread.start()

    def put(self, chunk: bytes) -> None:
        """Queue *chunk* (written inline without a thread); raises an earlier write error."""
        self._raise()
        if self._queue is None:
            self._consume(chunk)
        else:
            self._queue.put(chunk)

    def flush(self) -> int:
        """Wait until every queued chunk is written and hashed; bytes written so far."""
        if self._queue is not None:
            self._queue.join()
        self._raise()
        return self.written

    def restart(self) -> None:
        """Drop everything written (the server ignored a resume): empty file, new digest."""
        self.flush()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest = hashlib.sha1(usedforsecurity=False)
        self.written = self._synced = 0
        self.download.progress(0)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        """Stop the thread (after the chunks still queued, which a failure makes moot)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                if self.error is None:
                    self._consume(chunk)
            except BaseException as exc:  # handed to the receiving thread
                self.error = exc
            finally:
                self._queue.task_done()

    def _consume(self, chunk: bytes) -> None:
        _write_all(self.fd, chunk)
        self.digest.update(chunk)
        self.written += len(chunk)
        self.count("bytes", len(chunk))
        self.download.progress(self.written)
        if self.written - self._synced >= _WRITEBACK_EVERY:
            self.store.start_writeback(self.fd, self._synced, self.written - self._synced)
            self._synced = self.written


def _cause(exc: BaseException, url: str) -> str:
    """The client's message without its own "download of URL" prefix (said once, by us)."""
    text = str(exc)
    for prefix in (f"download of {url} failed: ", f"download of {url} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _failed(cause: str) -> str:
    """'failed after 2 attempt(s): ...' stays; anything else becomes 'failed: ...'."""
    return cause if cause.startswith("failed") else f"failed: {cause}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
