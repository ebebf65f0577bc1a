"""Verified random access: read a big uncached file chunk by chunk, each chunk verified.

When the server publishes chunk manifests (`get_chunk_manifest`, a crds-fs serve extension,
docs/protocol.md), a read of an uncached big file (at least `Settings.range_threshold`,
64 MiB by default, like parallel ranges) fetches only the fixed-size chunks it touches
with ranged GETs, checks each chunk's sha256 against the manifest before a byte of it is
served, and keeps verified chunks in a sparse file `<cache>/partial/<obs>/<name>` with its
chunk map `<name>.map` (JSON: the manifest and which chunks are present).  A FITS header
read of a 4 GB reference thus costs one 8 MiB chunk instead of the whole file.

Rules, so that nothing unverified is ever served and nothing half-done counts as cached:

* the manifest is used only when its size and sha1 are the catalog's (else whole-file);
* a chunk is written to the sparse file only after its sha256 matched, and only then
  marked present in the map (the map is replaced atomically); a chunk marked present by
  an earlier run (or before a crash) is hashed again before this process serves it (once);
* once every chunk is present the whole file's sha1 is checked, and only then is the file
  committed like a download (fsync, read-only, rename to its final path, index entry): from
  then on it is a normal cached file.  A sha1 mismatch discards the partial file;
* a server without manifests (the STScI servers) keeps the download-then-serve path.

A partial file is used by one process at a time (an exclusive flock on its data file; a
second process falls back to the whole-file download).  Sequential readers get up to
`Settings.streams` chunks fetched ahead in parallel; `--complete-partial` fetches every
missing chunk in the background.  Partial files count against the disk's free-space floor
(each chunk calls make_room) but are not in the index, so not against the size limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client.rpc import iter_chunks
from ..errors import (
    CacheFullError,
    CrdsFsError,
    DownloadError,
    OpenInterruptedError,
    ProtocolError,
    ServerUnreachableError,
    ServiceError,
    VerificationError,
)
from ..hashing import DEFAULT_CHUNK_SIZE, chunk_count, sha1_file
from .store import FILE_MODE, _fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    from .facade import FileCache

log = logging.getLogger("crds_fs.cache")

PARTIAL_DIR = "partial"
MAP_SUFFIX = ".map"
#: bounds of a manifest a client accepts (a hostile server cannot make it allocate much)
MIN_CHUNK = 64 << 10
MAX_CHUNK = 256 << 20
MAX_CHUNKS = 1 << 17
#: a chunk a reader waits for is fetched in up to 2 x streams parts of at least this size
MIN_PART = 1 << 20
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Manifest:
    """Chunk size and sha256 of every chunk of one file, as the server published them."""

    name: str
    size: int
    sha1: str
    chunk_size: int
    chunks: tuple[str, ...]

    @property
    def total(self) -> int:
        return len(self.chunks)

    def span(self, index: int) -> tuple[int, int]:
        """[start, end) of chunk *index*."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    @classmethod
    def parse(cls, name: str, data: Any, size: int, sha1: str, where: str) -> Manifest:
        """Validate an answer of get_chunk_manifest against the catalog's size and sha1."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: the chunk manifest of {name} is not an object")
        chunk_size, chunks = data.get("chunk_size"), data.get("chunks")
        if data.get("size") != size or (sha1 and data.get("sha1sum") != sha1):
            raise ProtocolError(
                f"{where}: the chunk manifest of {name} describes another file (size "
                f"{data.get('size')!r}, sha1 {data.get('sha1sum')!r}; the catalog says {size}, "
                f"{sha1})")
        if not isinstance(chunk_size, int) or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise ProtocolError(f"{where}: chunk size {chunk_size!r} of {name} is out of "
                                f"bounds ({MIN_CHUNK}..{MAX_CHUNK})")
        expected = chunk_count(size, chunk_size)
        if (not isinstance(chunks, list) or len(chunks) != expected or expected > MAX_CHUNKS
                or not all(isinstance(c, str) and len(c) == 64 and set(c) <= _HEX
                           for c in chunks)):
            raise ProtocolError(f"{where}: the chunk manifest of {name} does not list "
                                f"{expected} sha256 digests")
        return cls(name, size, sha1, chunk_size, tuple(chunks))


class ChunkStore:
    """The partial files of one FileCache and the manifests of its server."""

    def __init__(self, cache: FileCache) -> None:
        self.cache = cache
        self.dir = Path(cache.store.root) / PARTIAL_DIR / cache.observatory
        self._lock = threading.Lock()
        self._open: dict[str, PartialFile] = {}
        #: None: not known yet; False: the server has no manifests (asked once per mount)
        self.offered: bool | None = None
        #: chunk size last seen in a manifest (for user.crds.chunks of cached files)
        self.chunk_size_hint = DEFAULT_CHUNK_SIZE
        self.counters = {"chunks_fetched": 0, "chunk_bytes": 0, "partial_completed": 0}

    # --- paths ----------------------------------------------------------------------------

    def data_path(self, name: str) -> Path:
        self.cache.store.check_name(name)
        return self.dir / name

    def map_path(self, name: str) -> Path:
        return self.dir / (name + MAP_SUFFIX)

    # --- state ----------------------------------------------------------------------------

    def state(self, name: str) -> tuple[int, int] | None:
        """(chunks present, total) of a partial file of *name*, or None when there is none."""
        with self._lock:
            partial = self._open.get(name)
        if partial is not None:
            return partial.counts()
        try:
            data = json.loads(self.map_path(name).read_text())
            return len(data["present"]), len(data["chunks"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def total_chunks(self, size: int) -> int:
        return chunk_count(size, self.chunk_size_hint)

    def discard(self, name: str) -> None:
        """Remove the partial file of *name* (and its map)."""
        for path in (self.map_path(name), self.data_path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # --- opening --------------------------------------------------------------------------

    def open(self, name: str) -> PartialFile | None:
        """A partial file of the uncached *name* to read chunk by chunk, or None when the
        whole-file path applies (no manifests, a small file, offline, used elsewhere)."""
        cache = self.cache
        settings = cache.settings
        if not settings.partial_reads or self.offered is False or not cache.fetcher.online:
            return None
        info = cache.fetcher.info(name)
        if info.size < max(settings.range_threshold, 2 * MIN_CHUNK):
            return None  # not a big file: downloaded whole (one GET), as always
        with self._lock:
            partial = self._open.get(name)
            if partial is not None and not partial.broken and partial.fd >= 0:
                partial.refs += 1
                return partial
        manifest = self._manifest(name, info.size, info.sha1)
        if manifest is None or manifest.total < 2:
            return None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            partial = PartialFile(self, manifest)
        except BlockingIOError:
            log.info("%s is being read in chunks by another process; downloading it whole",
                     name)
            return None
        except OSError as exc:
            log.warning("cannot keep chunks of %s in %s (%s); downloading it whole", name,
                        self.dir, exc)
            return None
        with self._lock:
            other = self._open.get(name)
            if other is not None and not other.broken and other.fd >= 0:
                other.refs += 1  # lost a race: use the first one
                partial.close_now()
                return other
            self._open[name] = partial
        if settings.complete_partial:
            partial.complete_in_background()
        return partial

    def release(self, partial: PartialFile) -> None:
        """Drop one reference; the last one closes the file once its prefetches ended
        (until then a new open of the name revives it: its flock is ours)."""
        with self._lock:
            partial.refs -= 1
            if partial.refs > 0:
                return
        partial.close_when_idle()

    def _manifest(self, name: str, size: int, sha1: str) -> Manifest | None:
        """The manifest of *name*: from its map file, else from the server (None: none)."""
        try:
            data = json.loads(self.map_path(name).read_text())
            manifest = Manifest.parse(name, data, size, sha1, f"chunk map {self.map_path(name)}")
            self.chunk_size_hint = manifest.chunk_size
            return manifest
        except FileNotFoundError:
            pass
        except (OSError, ValueError, CrdsFsError) as exc:
            log.warning("ignoring the chunk map of %s: %s", name, exc)
            self.discard(name)
        where = f"CRDS server {self.cache.client.server_url}"
        try:
            answer = self.cache.client.call("get_chunk_manifest", name)
        except ServiceError as exc:
            if "not on this server" not in str(exc):
                if self.offered is None:
                    log.info("%s publishes no chunk manifests (%s): big files are downloaded "
                             "whole and verified before they are served", where, exc)
                self.offered = False
            return None
        except (ServerUnreachableError, ProtocolError) as exc:
            log.info("no chunk manifest of %s from %s (%s); downloading it whole", name,
                     where, exc)
            return None
        try:
            manifest = Manifest.parse(name, answer, size, sha1, where)
        except ProtocolError as exc:
            log.warning("%s; downloading it whole", exc)
            return None
        self.offered = True
        self.chunk_size_hint = manifest.chunk_size
        return manifest

    def count(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[key] += amount


class PartialFile:
    """One sparse, partly present file; chunk fetches are single-flight per chunk."""

    def __init__(self, store: ChunkStore, manifest: Manifest) -> None:
        self.store = store
        self.cache = store.cache
        self.manifest = manifest
        self.name = manifest.name
        self.size = manifest.size
        self.data = store.data_path(self.name)
        self.map = store.map_path(self.name)
        self.refs = 1
        #: set when the file was committed (then it is a normal cached file) or discarded
        self.complete = False
        self.broken = False
        self._lock = threading.Condition()
        self._flight: set[int] = set()
        self._queued: set[int] = set()  # submitted to the prefetch pool, not yet done
        self._errors: dict[int, BaseException] = {}
        self._checked: set[int] = set()  # present chunks verified by this process
        self._committing = False
        self._pool: ThreadPoolExecutor | None = None
        fd = os.open(self.data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: in use
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)
            self.present = self._load_present()
            if not os.path.exists(self.map):
                self._save_map()
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    # --- map ------------------------------------------------------------------------------

    def _load_present(self) -> set[int]:
        try:
            data = json.loads(self.map.read_text())
            present = {int(i) for i in data["present"]}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("chunk map %s is unreadable (%s): starting %s afresh", self.map, exc,
                        self.name)
            return set()
        return {i for i in present if 0 <= i < self.manifest.total}

    def _save_map(self) -> None:
        """Replace the map atomically (the chunks it lists are rechecked by a later run)."""
        m = self.manifest
        data = {"version": 1, "name": m.name, "size": m.size, "sha1sum": m.sha1,
                "chunk_size": m.chunk_size, "chunks": list(m.chunks),
                "present": sorted(self.present)}
        temp = self.map.with_name(self.map.name + f".{os.getpid()}.{threading.get_ident()}")
        temp.write_text(json.dumps(data))
        os.replace(temp, self.map)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            total = self.manifest.total
            return (total if self.complete else len(self.present)), total

    # --- reading --------------------------------------------------------------------------

    def readinto(self, buffer: memoryview, offset: int,
                 cancelled: Callable[[], bool] | None = None) -> int:
        """Fill *buffer* from *offset* with verified bytes (fetching the chunks it needs)."""
        if offset >= self.size:
            return 0
        count = min(len(buffer), self.size - offset)
        if not self.complete:
            cs = self.manifest.chunk_size
            first, last = offset // cs, (offset + count - 1) // cs
            for index in range(first, last + 1):
                self.ensure(index, cancelled, foreground=True)
            self._read_ahead(first, last)
        if self.fd < 0:
            raise DownloadError(f"the partial file of '{self.name}' was closed")
        return os.preadv(self.fd, [buffer[:count]], offset)

    def ensure(self, index: int, cancelled: Callable[[], bool] | None = None, *,
               foreground: bool = False) -> None:
        """Make chunk *index* present and verified here; raises (nothing kept) if it fails.

        *foreground*: a reader waits for it, so it is fetched in 2 x `streams` parallel parts
        (a header read over a WAN then costs one round trip plus chunk/streams of transfer).
        """
        with self._lock:
            while True:
                if self.complete or (index in self.present and index in self._checked):
                    return
                if self.broken:
                    raise VerificationError(f"'{self.name}' failed its whole-file check; "
                                            "try again (it is fetched anew)")
                if index not in self._flight:
                    self._flight.add(index)
                    self._errors.pop(index, None)
                    break
                if cancelled is not None and cancelled():
                    raise OpenInterruptedError(f"read of '{self.name}' was interrupted")
                self._lock.wait(0.1)
                if index not in self._flight and index in self._errors:
                    raise self._errors[index]
        error: BaseException | None = None
        try:
            if index in self.present:
                self._recheck(index)
            else:
                self._fetch(index, cancelled, foreground)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                self._flight.discard(index)
                if error is not None:
                    self._errors[index] = error
                self._lock.notify_all()
        self._maybe_complete()

    def _recheck(self, index: int) -> None:
        """A chunk marked present by an earlier run: hash it again before serving it."""
        start, end = self.manifest.span(index)
        data = os.pread(self.fd, end - start, start)
        if hashlib.sha256(data).hexdigest() == self.manifest.chunks[index]:
            with self._lock:
                self._checked.add(index)
            return
        log.warning("chunk %d of %s in %s changed on disk since it was verified; fetching "
                    "it again", index, self.name, self.data)
        with self._lock:
            self.present.discard(index)
        self._fetch(index, None, False)

    def _fetch(self, index: int, cancelled: Callable[[], bool] | None,
               foreground: bool) -> None:
        """Ranged GET of one chunk, sha256 check, then pwrite + map update."""
        start, end = self.manifest.span(index)
        fetcher = self.cache.fetcher
        settings = self.cache.settings
        try:
            self.cache.make_room(self.name, end - start)
        except CacheFullError as exc:
            log.error("%s", exc)
            raise
        except OSError as exc:
            log.warning("could not make room for a chunk of %s: %s", self.name, exc)
        url = self.cache.client.file_url(self.name, self.cache.observatory)
        reason = ""
        for attempt in range(settings.retries + 1):
            if attempt:
                time.sleep(min(settings.backoff * 2 ** (attempt - 1), 5.0))
            began = time.monotonic()
            try:
                data = self._get_parts(fetcher, url, start, end, cancelled, foreground)
            except OpenInterruptedError:
                raise
            except (DownloadError, ServerUnreachableError) as exc:
                reason = str(exc)
                continue
            digest = hashlib.sha256(data).hexdigest()
            log.debug("chunk %d of %s: %d bytes in %.3fs (%s)", index, self.name, len(data),
                      time.monotonic() - began, threading.current_thread().name)
            if digest == self.manifest.chunks[index]:
                self._store_chunk(index, data)
                return
            reason = (f"its sha256 {digest} differs from the manifest's "
                      f"{self.manifest.chunks[index]} (the server or something between "
                      "corrupts data)")
            log.warning("chunk %d (bytes %d-%d) of %s from %s: %s", index, start, end - 1,
                        self.name, url, reason)
        fetcher._count("failures", 1)
        error = VerificationError if "sha256" in reason else DownloadError
        message = (f"chunk {index} (bytes {start}-{end - 1}) of '{self.name}' from {url} "
                   f"failed after {settings.retries + 1} attempt(s): {reason}; nothing was "
                   "kept, reads of it fail with EIO. Try again later")
        log.error("%s", message)
        raise error(message)

    def _get_parts(self, fetcher: Any, url: str, start: int, end: int,
                   cancelled: Callable[[], bool] | None, foreground: bool) -> bytes:
        """Bytes [start, end): one ranged GET, or up to 2 x `streams` at once for a waiting
        reader (its latency is what counts: a header read is one chunk)."""
        parts = max(1, min(2 * self.cache.settings.streams, (end - start) // MIN_PART))
        if not foreground or parts < 2:
            return self._get(fetcher, url, start, end, cancelled)
        step = -(-(end - start) // parts)
        spans = [(a, min(a + step, end)) for a in range(start, end, step)]
        results: list[bytes | BaseException] = [b""] * len(spans)

        def one(i: int) -> None:
            try:
                results[i] = self._get(fetcher, url, *spans[i], cancelled)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,), daemon=True,
                                    name=f"crds-fs-part{i} {self.name}")
                   for i in range(1, len(spans))]
        for thread in threads:
            thread.start()
        one(0)
        for thread in threads:
            thread.join()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return b"".join(results)  # type: ignore[arg-type]

    def _get(self, fetcher: Any, url: str, start: int, end: int,
             cancelled: Callable[[], bool] | None) -> bytes:
        response = fetcher.open_body(url, start, end)
        parts: list[bytes] = []
        got = 0
        try:
            for piece in iter_chunks(response, 256 * 1024):
                if cancelled is not None and cancelled():
                    raise OpenInterruptedError(f"read of '{self.name}' was interrupted")
                got += len(piece)
                if got > end - start:
                    raise DownloadError(f"download of {url}: more bytes than the range asked")
                parts.append(piece)
        finally:
            response.close()
        fetcher._count("bytes", got)
        self.store.count("chunk_bytes", got)
        if got != end - start:
            raise DownloadError(f"download of {url}: the range ended after {got} of "
                                f"{end - start} bytes")
        return b"".join(parts)

    def _store_chunk(self, index: int, data: bytes) -> None:
        start, _end = self.manifest.span(index)
        view = memoryview(data)
        offset = start
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written
        # no fdatasync per chunk: a chunk the map marks present is hashed again before a
        # later mount serves it (`_recheck`), and the commit fsyncs the whole file
        with self._lock:
            self.present.add(index)
            self._checked.add(index)
            self._save_map()
        self.store.count("chunks_fetched")

    # --- prefetch and completion -----------------------------------------------------------

    def _read_ahead(self, first: int, last: int) -> None:
        """Sequential reader: fetch the next `streams` chunks in parallel, ahead of it.

        A reader is taken as sequential when the two chunks before the one it reads are
        present: reads within one chunk (a FITS header), or one readahead window of the
        kernel crossing into the next chunk, never fetch more than they touch.  (The
        order of reads is no guide: the kernel sends readahead from several threads.)
        """
        streams = self.cache.settings.streams
        if streams < 2 or last < 2:
            return
        with self._lock:
            if not {last - 1, last - 2} <= self.present:
                return
        # twice as many queued as there are workers, so none of them idles between chunks
        for index in range(last + 1, min(last + 1 + 2 * streams, self.manifest.total)):
            self._prefetch(index)

    def _prefetch(self, index: int) -> None:
        with self._lock:
            if (self.complete or self.broken or index in self.present
                    or index in self._flight or index in self._queued or self.fd < 0):
                return
            self._queued.add(index)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.cache.settings.streams),
                                                thread_name_prefix=f"crds-fs-chunks {self.name}")
            pool = self._pool
        try:
            pool.submit(self._quiet_ensure, index)
        except RuntimeError:  # pool shut down meanwhile
            with self._lock:
                self._queued.discard(index)

    def _quiet_ensure(self, index: int) -> None:
        try:
            self.ensure(index)
        except CrdsFsError as exc:
            log.debug("prefetch of chunk %d of %s failed: %s", index, self.name, exc)
        except OSError as exc:
            log.warning("prefetch of chunk %d of %s failed: %s", index, self.name, exc)
        finally:
            with self._lock:
                self._queued.discard(index)

    def complete_in_background(self) -> None:
        """--complete-partial: fetch every missing chunk (streams at once), then commit."""
        with self.store._lock:
            self.refs += 1

        def run() -> None:
            try:
                missing = [i for i in range(self.manifest.total) if i not in self.present]
                streams = max(1, self.cache.settings.streams)
                with ThreadPoolExecutor(streams, thread_name_prefix="crds-fs-complete") as pool:
                    for _ in pool.map(self.ensure, missing):
                        pass
                log.info("completed %s in the background (%d chunks fetched)", self.name,
                         len(missing))
            except (CrdsFsError, OSError) as exc:
                log.warning("background completion of %s stopped: %s", self.name, exc)
            finally:
                self.store.release(self)

        threading.Thread(target=run, daemon=True, name=f"crds-fs-complete {self.name}").start()

    def _maybe_complete(self) -> None:
        with self._lock:
            if (self.complete or self.broken or self._committing
                    or len(self.present) < self.manifest.total):
                return
            self._committing = True
            self.refs_for_commit()

        def run() -> None:
            try:
                self._commit()
            except (OSError, CrdsFsError) as exc:
                log.error("could not commit %s assembled from chunks: %s", self.name, exc)
            finally:
                with self._lock:
                    self._committing = False
                    self._lock.notify_all()
                self.store.release(self)

        # the whole-file sha1 takes a while for a big file: not in the reader's FUSE call
        threading.Thread(target=run, daemon=True, name=f"crds-fs-commit {self.name}").start()

    def refs_for_commit(self) -> None:
        """The commit thread holds a reference, so the data file stays open until it ends."""
        with self.store._lock:
            self.refs += 1

    def _commit(self) -> None:
        """All chunks present: check the whole file's sha1, then make it a cached file."""
        cache, name = self.cache, self.name
        size, sha1 = sha1_file(self.data)
        if size != self.size or (self.manifest.sha1 and sha1 != self.manifest.sha1):
            log.error("'%s' assembled from verified chunks has sha1 %s, but the catalog says "
                      "%s (the server's manifest disagrees with its catalog); discarding it",
                      name, sha1, self.manifest.sha1)
            with self._lock:
                self.broken = True
            self.store.discard(name)
            return
        lock = cache.store.lock(name)
        if not lock.try_acquire():
            log.info("%s is complete and verified, but another download of it is committing; "
                     "leaving that one the cache's copy", name)
            return
        try:
            final = cache.store.final_path(name)
            os.fsync(self.fd)
            os.fchmod(self.fd, FILE_MODE)
            os.replace(self.data, final)
            _fsync_dir(final.parent)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.map)
            # readers of the committed file elsewhere take a shared flock: downgrade ours
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            with self._lock:
                self.complete = True
                self._lock.notify_all()
        finally:
            lock.release()
        self.store.count("partial_completed")
        log.info("%s: every chunk present, sha1 verified; it is now a cached file (%s)", name,
                 final)
        if cache.fetcher.record(name, size, sha1, final) and cache.fetcher.on_commit:
            try:
                cache.fetcher.on_commit(name, size)
            except OSError as exc:
                log.error("keeping the cache %s within its limits after storing %s failed: %s",
                          cache.store.root, name, exc)

    def close_when_idle(self) -> None:
        """Close the data file once no prefetch uses it any more, unless it was opened
        again meanwhile.  Never blocks the caller: running prefetches end within the
        client's timeouts, then a thread closes it."""
        with self._lock:
            pool = self._pool

        def close() -> None:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                with self._lock:
                    if self._pool is pool:  # a revived file makes itself a new one
                        self._pool = None
            with self.store._lock:
                if self.refs > 0:  # revived by a new open
                    return
                if self.store._open.get(self.name) is self:
                    del self.store._open[self.name]
            self.close_now()

        if pool is None:
            close()
        else:
            threading.Thread(target=close, daemon=True, name=f"crds-fs-close {self.name}").start()

    def close_now(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, -1
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if fd >= 0:
            os.close(fd)


_STORES: weakref.WeakKeyDictionary[Any, ChunkStore] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def chunk_store(cache: FileCache) -> ChunkStore:
    """The ChunkStore of *cache* (one per FileCache, made on first use)."""
    with _STORES_LOCK:
        store = _STORES.get(cache)
        if store is None:
            store = _STORES[cache] = ChunkStore(cache)
        return store


__all__ = ["ChunkStore", "Manifest", "PartialFile", "chunk_store"]
