"""Parallel ranged downloads of big files: N byte ranges at once, each resumable.

Over a wide-area link one TCP stream is capped by its window and the round trip (a 3.4 GB
JWST dark took users hours with crds' single stream); N streams get N times that until the
link itself is full.  A file of at least `Settings.range_threshold` bytes is split into
`Settings.streams` equal ranges, each fetched by its own thread with a ranged GET and written
with pwrite at its offset into the download's temp file.  A range whose body breaks off
(reset, truncation, read timeout) is resumed from the last byte received, up to
`Settings.retries` times per range.

Nothing changes about verification: the temp file is hashed (sha1) once every range is
complete, before the fetcher commits it; a mismatch downloads the whole file again (while
retries are left).  Hashing after assembly was chosen over hashing in order while ranges
arrive: on the benchmark machine the sha1 of 1 GiB (in the page cache) takes ~1.5 s, small
next to the 10+ s of the transfer it follows, and it keeps one code path for every layout of
finished ranges (docs/scale-benchmark.md has the numbers).

A server that ignores Range (answers the first ranged GET with 200) or refuses it gets the
ordinary single stream (`parallel_transfer` returns None and the fetcher falls back).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from ..client.rpc import iter_chunks
from ..errors import DownloadCancelled, DownloadError, ServerUnreachableError, VerificationError
from ..hashing import sha1_file

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


def wanted(size: int, threshold: int, streams: int) -> bool:
    """True when a file of *size* bytes is downloaded in parallel ranges."""
    return streams > 1 and size >= max(threshold, 2 * MIN_RANGE)


def split(size: int, streams: int) -> list[tuple[int, int]]:
    """[start, end) of *streams* (at most) nearly equal ranges covering *size* bytes."""
    count = max(1, min(streams, size // MIN_RANGE))
    step = -(-size // count)
    return [(start, min(start + step, size)) for start in range(0, size, step)]


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
    ranges = split(download.size, settings.streams)
    failures = 0
    while True:
        first = _open_first(fetcher, download, url, ranges[0])
        if first is None:
            return None
        os.ftruncate(fd, download.size)  # sparse: every range writes at its own offset
        progress = _Progress(download)
        started = time.monotonic()
        _run_ranges(fetcher, download, fd, url, ranges, first, progress)
        received = time.monotonic() - started
        hash_start = time.monotonic()
        size, digest = sha1_file(download.part)
        log.info("%s: %d bytes in %d ranges in %.2fs, sha1 checked in %.2fs", download.name,
                 size, len(ranges), received, time.monotonic() - hash_start)
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


def _run_ranges(fetcher: Fetcher, download: Download, fd: int, url: str,
                ranges: list[tuple[int, int]], first: requests.Response,
                progress: _Progress) -> None:
    """Fetch every range in its own thread; re-raise the first failure after all stopped."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(index: int, span: tuple[int, int], response: requests.Response | None) -> None:
        try:
            _fetch_range(fetcher, download, fd, url, span, response, progress, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the leader
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(i, span, first if i == 0 else None),
                                daemon=True, name=f"crds-fs-range{i} {download.name}")
               for i, span in enumerate(ranges)]
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
