"""Parallel ranged downloads of big files: N byte ranges at once, each resumable.

Over a wide-area link one TCP stream is capped by its window and the round trip (a 3.4 GB
JWST dark took users hours with crds' single stream); N streams get N times that until the
link itself is full.  A file of at least `Settings.range_threshold` bytes is split into
ranges ("pieces", `plan()`: about 8 per stream, 4..32 MiB each) that `Settings.streams`
threads take in order from a shared queue; each piece is one ranged GET (keep-alive
connections, so one round trip each), written with pwrite at its offset into the
download's temp file.  A piece whose body breaks off (reset, truncation, read timeout) is
resumed from the last byte received, up to `Settings.retries` times per piece.

Nothing changes about verification: the whole file's sha1 is checked before the fetcher
commits it; a mismatch downloads the whole file again (while retries are left).  The sha1
is computed in order while the pieces arrive: a hasher thread follows the completed prefix
of the file (pieces finish roughly in order, since they are handed out in order), so when
the last byte arrives only the last few pieces are left to hash.  Hashing after assembly
was measured first: 3.6 s for 1 GiB on the (loaded) benchmark machine, 14% of the whole
transfer; in order, what is left after the last byte is a fraction of a second
(docs/scale-benchmark.md).

A server that ignores Range (answers the first ranged GET with 200) or refuses it gets the
ordinary single stream (`parallel_transfer` returns None and the fetcher falls back).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..client.rpc import iter_chunks
from ..errors import DownloadCancelled, DownloadError, ServerUnreachableError, VerificationError

if TYPE_CHECKING:  # pragma: no cover
    import requests

    from .fetcher import Download, Fetcher

log = logging.getLogger("crds_fs.cache")

#: Bytes per socket read of one range (as the single-stream path).
_CHUNK = 256 * 1024
#: Start the disk writeback of a range every this many bytes (see FileStore.start_writeback).
_WRITEBACK_EVERY = 8 << 20
#: Ranges are never smaller than this: below it more streams only add round trips.
MIN_RANGE = 4 << 20
#: ... nor larger than this (what is left to hash after the last byte is ~streams of them)
MAX_RANGE = 32 << 20
#: pieces per stream aimed at (more: a shorter hashing tail; fewer: fewer round trips)
PIECES_PER_STREAM = 8
#: bytes per read of the in-order hasher
_HASH_READ = 1 << 20


def wanted(size: int, threshold: int, streams: int) -> bool:
    """True when a file of *size* bytes is downloaded in parallel ranges."""
    return streams > 1 and size >= max(threshold, 2 * MIN_RANGE)


def split(size: int, streams: int) -> list[tuple[int, int]]:
    """[start, end) of *streams* (at most) nearly equal ranges covering *size* bytes."""
    count = max(1, min(streams, size // MIN_RANGE))
    step = -(-size // count)
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def plan(size: int, streams: int) -> list[tuple[int, int]]:
    """The pieces of a parallel download: about PIECES_PER_STREAM per stream, each
    MIN_RANGE..MAX_RANGE bytes (the last one shorter), in file order."""
    piece = -(-size // max(1, streams * PIECES_PER_STREAM))
    piece = min(MAX_RANGE, max(MIN_RANGE, piece))
    return [(start, min(start + piece, size)) for start in range(0, size, piece)]


class _Progress:
    """Bytes received by all ranges together, reported to the Download's waiters."""

    def __init__(self, download: Download) -> None:
        self.download = download
        self.total = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.total += count
            total = self.total
        self.download.progress(total)


def parallel_transfer(fetcher: Fetcher, download: Download, fd: int, url: str) -> str | None:
    """Download *url* into *fd* in parallel ranges; the sha1 hex of the result.

    Returns None (nothing written) when the server does not do ranges: the caller uses the
    single stream.  Raises DownloadError / VerificationError after the retries, like the
    single stream, and DownloadCancelled when every reader went away.
    """
    settings = fetcher.settings
    ranges = plan(download.size, settings.streams)
    failures = 0
    while True:
        first = _open_first(fetcher, download, url, ranges[0])
        if first is None:
            return None
        os.ftruncate(fd, download.size)  # sparse: every range writes at its own offset
        progress = _Progress(download)
        started = time.monotonic()
        hasher = _InOrderHasher(download.part, ranges)
        try:
            _run_ranges(fetcher, download, fd, url, ranges, first, progress, hasher,
                        min(settings.streams, len(ranges)))
            received = time.monotonic()
            size, digest = hasher.result()
        finally:
            hasher.stop()
        log.info("%s: %d bytes in %d ranges over %d streams in %.2fs, sha1 done %.2fs after "
                 "the last byte", download.name, size, len(ranges),
                 min(settings.streams, len(ranges)), received - started,
                 time.monotonic() - received)
        if size == download.size and (not download.sha1 or digest == download.sha1):
            return digest
        failures += 1
        reason = (f"its sha1 {digest} differs from the server catalog's {download.sha1} "
                  "(the server or something between corrupts data)")
        if failures > settings.retries:
            raise VerificationError(
                f"download of '{download.name}' from {url} failed after {failures} "
                f"attempt(s): {reason}; nothing was kept. Try again later")
        log.warning("download of %s from %s: %s; downloading it again (attempt %d of %d)",
                    download.name, url, reason, failures + 1, settings.retries + 1)
        os.ftruncate(fd, 0)
        download.progress(0)


def _open_first(fetcher: Fetcher, download: Download, url: str,
                first: tuple[int, int]) -> requests.Response | None:
    """The response of the first range, or None when the server does not honour ranges."""
    fetcher._check_cancel(download)
    try:
        return fetcher.open_body(url, first[0], first[1])
    except ServerUnreachableError as exc:
        raise DownloadError(f"download of '{download.name}' from {url} failed: {exc}") from None
    except DownloadError as exc:  # 200 instead of 206, 416, ...: the single stream decides
        log.info("%s: the server does not serve byte ranges (%s); downloading it in one "
                 "stream", download.name, exc)
        return None


class _InOrderHasher:
    """sha1 of the file, computed in order as the completed prefix of the pieces grows.

    Reads back what the range threads wrote (from the page cache) in its own thread;
    hashlib releases the GIL, so it overlaps with the transfer.
    """

    def __init__(self, path: Any, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.size = ranges[-1][1] if ranges else 0
        self.done = [False] * len(ranges)
        self.cond = threading.Condition()
        self._stopped = False
        self._digest = hashlib.sha1(usedforsecurity=False)
        self._hashed = 0
        self._error: BaseException | None = None
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, daemon=True, name="crds-fs-sha1")
        self._thread.start()

    def finished(self, index: int) -> None:
        with self.cond:
            self.done[index] = True
            self.cond.notify_all()

    def _prefix(self) -> int:
        end = 0
        for (_, stop), done in zip(self.ranges, self.done, strict=True):
            if not done:
                break
            end = stop
        return end

    def _run(self) -> None:
        try:
            while self._hashed < self.size:
                with self.cond:
                    while not self._stopped and self._prefix() <= self._hashed:
                        self.cond.wait()
                    if self._stopped:
                        return
                    target = self._prefix()
                while self._hashed < target:
                    data = os.pread(self._fd, min(_HASH_READ, target - self._hashed),
                                    self._hashed)
                    if not data:
                        raise OSError(errno.EIO, "the temp file is shorter than written")
                    self._digest.update(data)
                    self._hashed += len(data)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc
        finally:
            with self.cond:
                self.cond.notify_all()

    def result(self) -> tuple[int, str]:
        """(bytes hashed, sha1 hex) once every piece is done and hashed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hashed, self._digest.hexdigest()

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify_all()
        self._thread.join()
        os.close(self._fd)


def _run_ranges(fetcher: Fetcher, download: Download, fd: int, url: str,
                ranges: list[tuple[int, int]], first: requests.Response,
                progress: _Progress, hasher: _InOrderHasher, streams: int) -> None:
    """*streams* threads take the pieces in order; re-raise the first failure after all
    stopped.  The first piece's response is already open (the range probe)."""
    stop = threading.Event()
    errors: list[BaseException] = []
    queue_lock = threading.Lock()
    todo = iter(list(enumerate(ranges))[1:])

    def work(response: requests.Response | None) -> None:
        try:
            while not stop.is_set():
                if response is not None:  # the probe's response belongs to piece 0
                    index, span = 0, ranges[0]
                else:
                    with queue_lock:
                        index, span = next(todo, (-1, (0, 0)))
                if index < 0:
                    return
                _fetch_range(fetcher, download, fd, url, span, response, progress, stop)
                response = None
                if stop.is_set():
                    return
                hasher.finished(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the leader
            errors.append(exc)
            stop.set()
        finally:
            if response is not None:
                response.close()

    threads = [threading.Thread(target=work, args=(first if i == 0 else None,),
                                daemon=True, name=f"crds-fs-range{i} {download.name}")
               for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        cancelled = [e for e in errors if isinstance(e, DownloadCancelled)]
        raise (cancelled or errors)[0]


def _fetch_range(fetcher: Fetcher, download: Download, fd: int, url: str,
                 span: tuple[int, int], response: requests.Response | None,
                 progress: _Progress, stop: threading.Event) -> None:
    """Bytes [start, end) into *fd*, resuming from the last byte received after a break."""
    start, end = span
    pos, failures, synced = start, 0, start
    settings = fetcher.settings
    while pos < end:
        if stop.is_set():
            return
        fetcher._check_cancel(download)
        reason = ""
        try:
            if response is None:
                response = fetcher.open_body(url, pos, end)
            for chunk in iter_chunks(response, _CHUNK):
                if stop.is_set():
                    return
                fetcher._check_cancel(download)
                if pos + len(chunk) > end:
                    raise DownloadError(f"download of '{download.name}' from {url}: the "
                                        f"range {start}-{end - 1} sent more bytes than asked")
                _pwrite_all(fd, chunk, pos)
                pos += len(chunk)
                fetcher._count("bytes", len(chunk))
                progress.add(len(chunk))
                if pos - synced >= _WRITEBACK_EVERY:
                    fetcher.store.start_writeback(fd, synced, pos - synced)
                    synced = pos
        except DownloadCancelled:
            raise
        except (DownloadError, ServerUnreachableError) as exc:
            reason = str(exc)
        finally:
            if response is not None:
                response.close()
            response = None
        if pos >= end:
            return
        failures += 1
        reason = reason or f"the body ended at byte {pos}"
        if failures > settings.retries:
            raise DownloadError(
                f"download of '{download.name}' from {url} failed: bytes {start}-{end - 1} "
                f"broke off {failures} time(s), last at byte {pos} ({reason}); nothing was "
                "kept. Try again later")
        delay = settings.backoff * 2 ** (failures - 1)
        log.warning("download of %s from %s: range %d-%d broke off at byte %d (%s); resuming "
                    "in %.2fs", download.name, url, start, end - 1, pos, reason, delay)
        fetcher._sleep(download, delay)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - pwrite reports errors by raising
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view, offset = view[written:], offset + written
