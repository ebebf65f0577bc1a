"""Fetcher under faults, single flight across threads and processes, crash recovery.

A real `crds-fs serve` sits behind the FaultProxy (fixtures from tests/test_cache.py).
Settings use 1 s read timeouts and one retry, so every failure arrives in a few seconds.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from crds_fs.cache import FileCache, NameLock
from crds_fs.cache.store import LOCK_FILE
from crds_fs.config import Settings
from crds_fs.errors import DownloadError, OfflineError, VerificationError
from tests import test_cache as common
from tests.faultproxy import FaultProxy
from tests.test_cache import BIG, MAPPING, MID, SMALL_REFS, cache_settings, tmp_leftovers

# The module-scoped server + proxy fixtures of test_cache, shared (one definition).
served = common.served
_module_proxy = common._module_proxy
proxy = common.proxy
contents = common.contents
settings = common.settings


def assert_nothing_kept(cache: FileCache, name: str) -> None:
    """No file at the final path, nothing in tmp/, nothing in the index."""
    assert not cache.local_path(name).exists()
    assert tmp_leftovers(cache.store.root) == []
    assert not cache.is_cached(name)


# --- each failure: right exception, clear log, nothing kept, later success ---------------

FAULTS = [
    # (fault, set_fault kwargs, expected exception, text expected in the message)
    ("refuse", {}, DownloadError, "connection"),
    ("500", {}, DownloadError, "HTTP 500"),
    ("503", {}, DownloadError, "HTTP 503"),
    ("404", {}, DownloadError, "HTTP 404"),
    ("slow", {"delay": 3.0}, DownloadError, "timed out"),
    ("slow_body", {"delay": 3.0}, DownloadError, "broke off"),
    ("reset", {}, DownloadError, "broke off"),
    ("truncate", {}, DownloadError, "broke off"),
    ("corrupt", {}, VerificationError, "sha1"),
]


@pytest.mark.parametrize(("kind", "kwargs", "error", "text"), FAULTS,
                         ids=[f[0] for f in FAULTS])
def test_fault_fails_cleanly_then_recovers(
    settings: Settings, proxy: FaultProxy, contents: dict, caplog: pytest.LogCaptureFixture,
    kind: str, kwargs: dict, error: type[Exception], text: str,
) -> None:
    with FileCache.open(settings) as cache:
        proxy.set_fault(kind, path_contains=MID, **kwargs)
        with caplog.at_level(logging.ERROR, logger="crds_fs.cache"), \
                pytest.raises(error) as info:
            cache.ensure(MID)
        message = str(info.value)
        assert MID in message and text in message
        assert f"{proxy.url}/unchecked_get/references/hst/{MID}" in message
        logged = [r.getMessage() for r in caplog.records if r.name == "crds_fs.cache"]
        assert any(MID in line and proxy.url in line and text in line for line in logged)
        assert_nothing_kept(cache, MID)
        assert cache.stats()["downloads_failed"] == 1
        # Fault gone: the same cache object downloads it.
        proxy.set_fault(None)
        assert cache.ensure(MID).read_bytes() == contents[MID]
        assert tmp_leftovers(cache.store.root) == []


def test_sha1_mismatch_is_retried_while_retries_are_left(
    settings: Settings, proxy: FaultProxy, contents: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 12: bytes corrupted once on the way are fetched again, not an error."""
    with FileCache.open(settings) as cache, \
            caplog.at_level(logging.WARNING, logger="crds_fs.cache"):
        proxy.set_fault("corrupt", path_contains=MID, times=1)
        assert cache.ensure(MID).read_bytes() == contents[MID]
        assert cache.is_cached(MID)
    assert proxy.count("GET", MID) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("sha1" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)


def test_persistent_sha1_mismatch_fails_with_one_clear_message(
    settings: Settings, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 12: after the retries, one error line naming file, server and cause."""
    with FileCache.open(settings) as cache, \
            caplog.at_level(logging.WARNING, logger="crds_fs.cache"):
        proxy.set_fault("corrupt", path_contains=MID)
        with pytest.raises(VerificationError) as info:
            cache.ensure(MID)
        assert_nothing_kept(cache, MID)
    assert proxy.count("GET", MID) == settings.retries + 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    for text in (errors[0], str(info.value)):
        assert text.count("download of") == 1 and text.count("failed") == 1, text
        assert MID in text and proxy.url in text and "sha1" in text


def test_unreachable_server_error_says_download_failed_once(
    served: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 12: the client's and the fetcher's wording are not stacked up."""
    with FaultProxy(served[0].url) as private:
        settings = cache_settings(private.url, tmp_path / "cache")
        cache = FileCache.open(settings)
    try:
        with caplog.at_level(logging.ERROR, logger="crds_fs.cache"), \
                pytest.raises(DownloadError) as info:
            cache.ensure(MID)
    finally:
        cache.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    for text in (errors[0], str(info.value)):
        assert text.count("download of") == 1, text
        assert MID in text and settings.server_url in text and "connection" in text


def test_transient_5xx_is_retried_by_the_client(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    with FileCache.open(settings) as cache:
        proxy.set_fault("503", path_contains=MID, times=1)
        assert cache.ensure(MID).read_bytes() == contents[MID]
    assert proxy.count("GET", MID) == 2


@pytest.mark.parametrize("kind", ["truncate", "reset"])
def test_broken_body_is_resumed_with_a_range(
    settings: Settings, proxy: FaultProxy, contents: dict, kind: str
) -> None:
    with FileCache.open(settings) as cache:
        proxy.set_fault(kind, path_contains=BIG, times=1)
        path = cache.ensure(BIG)
        assert hashlib.sha1(path.read_bytes()).hexdigest() == cache.catalog.get(BIG).sha1
        # Resumed, not restarted: about 1.5 file sizes crossed the wire, not 2.
        assert cache.stats()["bytes_downloaded"] < 1.9 * len(contents[BIG])
    assert proxy.count("GET", BIG) == 2


def test_server_gone_after_open(
    served: tuple, tmp_path: Path, contents: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with FaultProxy(served[0].url) as private:
        settings = cache_settings(private.url, tmp_path / "cache")
        cache = FileCache.open(settings)
        cache.ensure(SMALL_REFS[0])
    try:  # the proxy is stopped: connections are refused
        with caplog.at_level(logging.ERROR, logger="crds_fs.cache"), \
                pytest.raises(DownloadError, match="connection failed") as info:
            cache.ensure(MID)
        assert "unreachable" in str(info.value) or "reachable" in str(info.value)
        assert_nothing_kept(cache, MID)
        assert any(MID in r.getMessage() for r in caplog.records)
        # Cached files still work.
        assert cache.ensure(SMALL_REFS[0]).read_bytes() == contents[SMALL_REFS[0]]
    finally:
        cache.close()


def test_waiting_for_a_stuck_process_is_bounded(proxy: FaultProxy, tmp_path: Path) -> None:
    settings = cache_settings(proxy.url, tmp_path / "cache", connect_timeout=0.2,
                              read_timeout=0.2, retries=0, backoff=0.0)
    with FileCache.open(settings) as cache:
        cache.fetcher.stall_margin = 0.5
        # Another "process" holds the lock of MID and its temp file never grows.
        stuck = NameLock(cache.store.tmp_dir / LOCK_FILE, MID)
        assert stuck.try_acquire()
        cache.store.part_path(MID).write_bytes(b"x")
        try:
            with pytest.raises(DownloadError, match="without progress"):
                cache.ensure(MID)
        finally:
            stuck.release()
            cache.store.discard(cache.store.part_path(MID))
    assert proxy.count("GET", MID) == 0


# --- single flight -----------------------------------------------------------------------


def test_32_threads_one_download(settings: Settings, proxy: FaultProxy, contents: dict) -> None:
    proxy.set_fault("slow", path_contains=BIG, times=1, delay=0.5)  # all threads overlap
    barrier = threading.Barrier(32)
    results: list[object] = [None] * 32
    patient = cache_settings(settings.server_url, settings.cache_dir, read_timeout=10.0)
    with FileCache.open(patient) as cache:

        def worker(i: int) -> None:
            barrier.wait()
            try:
                path = cache.ensure(BIG)
                results[i] = hashlib.sha1(path.read_bytes()).hexdigest()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[i] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        expected = hashlib.sha1(contents[BIG]).hexdigest()
        assert results == [expected] * 32
        assert cache.stats()["downloads_done"] == 1
    assert proxy.count("GET", BIG) == 1


def test_threads_share_one_failure(settings: Settings, proxy: FaultProxy) -> None:
    # The body stalls past the read timeout: the one flight takes ~2 s, all threads join it.
    proxy.set_fault("slow_body", path_contains=MID, delay=3.0)
    gate = threading.Barrier(8)
    errors: list[BaseException] = []
    with FileCache.open(settings) as cache:

        def worker() -> None:
            gate.wait()
            try:
                cache.ensure(MID)
            except DownloadError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert cache.stats()["downloads_failed"] == 1
    assert len(errors) == 8
    assert all(e is errors[0] for e in errors)
    assert proxy.count("GET", MID) == 2  # the first attempt and one resume, for 8 callers


def _child_ensure(settings: Settings, name: str, start, queue, threads: int) -> None:
    """Spawned process: open the shared cache, ensure *name* from several threads."""
    results: list[str] = []
    with FileCache.open(settings) as cache:
        start.wait(60)

        def worker() -> None:
            try:
                path = cache.ensure(name)
                results.append(hashlib.sha1(path.read_bytes()).hexdigest())
            except Exception as exc:  # noqa: BLE001 - sent to the parent
                results.append(f"error: {exc}")

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(60)
        queue.put((os.getpid(), results, cache.stats()["downloads_done"]))


def test_processes_and_threads_one_download(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    queue = ctx.Queue()
    # The first GET answers late (within the read timeout): the others must wait for it.
    proxy.set_fault("slow", path_contains=BIG, times=1, delay=1.0)
    patient = cache_settings(settings.server_url, settings.cache_dir, read_timeout=10.0)
    procs = [ctx.Process(target=_child_ensure, args=(patient, BIG, start, queue, 4))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        answers = [queue.get(timeout=90) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    expected = hashlib.sha1(contents[BIG]).hexdigest()
    assert [r for _pid, results, _n in answers for r in results] == [expected] * 16
    assert sum(n for _pid, _results, n in answers) == 1
    assert proxy.count("GET", BIG) == 1
    assert tmp_leftovers(settings.cache_dir) == []


def _child_download_forever(settings: Settings, name: str) -> None:
    with FileCache.open(settings) as cache:
        cache.ensure(name)


def test_sigkill_during_download(settings: Settings, proxy: FaultProxy, contents: dict) -> None:
    with FileCache.open(settings) as cache:
        cache.ensure(MID)
        cache.ensure(MAPPING)
    # The child's body stalls after half the file; its read timeout is long.
    proxy.set_fault("slow_body", path_contains=BIG, delay=20.0)
    patient = cache_settings(settings.server_url, settings.cache_dir, read_timeout=60.0)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_download_forever, args=(patient, BIG))
    child.start()
    part = Path(settings.cache_dir) / "tmp" / f"{BIG}.part"
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size > 0):
            assert time.monotonic() < deadline, "child never started writing"
            assert child.is_alive(), "child ended early"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
    assert part.exists()  # the dead download's leftovers
    proxy.set_fault(None)
    proxy.reset_counts()
    with FileCache.open(settings) as cache:
        assert tmp_leftovers(settings.cache_dir) == []  # cleared at open
        assert not cache.is_cached(BIG) and not cache.local_path(BIG).exists()
        assert cache.cached_names() == {MID, MAPPING}
        assert cache.ensure(MID).read_bytes() == contents[MID]
        assert cache.ensure(BIG).read_bytes() == contents[BIG]
    assert proxy.count("GET", BIG) == 1 and proxy.count("GET", MID) == 0


def test_offline_error_names_file_and_reason(settings: Settings) -> None:
    with FileCache.open(settings):
        pass
    with FileCache.open(settings, offline=True) as cache, \
            pytest.raises(OfflineError) as info:
        cache.ensure(BIG)
    assert BIG in str(info.value) and str(settings.cache_dir) in str(info.value)


def test_in_flight_download_reports_progress(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    """The hook a later read-while-downloading issue builds on: progress of a transfer."""
    proxy.set_fault("slow_body", path_contains=MID, delay=3.0, times=1)  # half, then stall
    errors: list[BaseException] = []
    with FileCache.open(settings) as cache:

        def fetch() -> None:
            try:
                cache.ensure(MID)
            except DownloadError as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=fetch)
        thread.start()
        deadline = time.monotonic() + 10
        while (download := cache.fetcher.in_flight(MID)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Part of the first half arrives, then the body stalls for the 1 s read timeout.
        assert 0 < download.wait_for_bytes(1, timeout=10) < len(contents[MID])
        assert download.url.endswith(f"/references/hst/{MID}")
        assert cache.stats()["in_flight"] == 1
        assert not cache.local_path(MID).exists()  # unverified bytes stay in tmp/
        thread.join(30)
        # The stall hit the read timeout; the resumed range request completed the file.
        assert errors == [] and download.state == "done"
        assert cache.ensure(MID).read_bytes() == contents[MID]
        assert cache.fetcher.in_flight(MID) is None


# --- download threads: reused, never waited for -------------------------------------------


def test_download_threads_are_reused_and_never_make_a_call_wait() -> None:
    from crds_fs.cache.fetcher import _Threads

    threads = _Threads("test-threads")
    threads.idle_timeout = 0.5
    ran: list[int] = []
    done = threading.Event()

    def record() -> None:
        ran.append(threading.get_ident())
        done.set()

    threads.run(record)
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while threads._idle != 1 and time.monotonic() < deadline:  # until it waits for work
        time.sleep(0.01)
    done.clear()
    threads.run(record)
    assert done.wait(5)
    assert ran[0] == ran[1]  # the idle thread took the second call
    # Calls that block: each gets a thread of its own at once, none waits for another.
    release = threading.Event()
    started = threading.Semaphore(0)

    def block() -> None:
        started.release()
        release.wait(10)

    for _ in range(6):
        threads.run(block)
    for _ in range(6):
        assert started.acquire(timeout=5), "a call waited for a busy thread"
    release.set()
    # Idle threads end after idle_timeout.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            t.name == "test-threads" for t in threading.enumerate()):
        time.sleep(0.1)
    assert not any(t.name == "test-threads" for t in threading.enumerate())


def test_commit_renames_are_made_durable_at_close(settings: Settings, proxy: FaultProxy,
                                                  contents: dict) -> None:
    """Directories are fsynced once at close (not per file); the files are there after."""
    with FileCache.open(settings) as cache:
        path = cache.ensure(MID)
        assert path.parent in cache.store._unsynced_dirs
    assert cache.store._unsynced_dirs == set()
    assert path.read_bytes() == contents[MID]
