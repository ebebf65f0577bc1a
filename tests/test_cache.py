"""Cache layer against a real `crds-fs serve` behind the fault proxy: downloads, the CRDS
layout, persistence across reopen, offline use, crash recovery, LRU eviction.

Fault injection, single flight and multi-process tests are in tests/test_fetcher.py (which
reuses the fixtures defined here).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crds_fs.cache import FileCache, NameLock
from crds_fs.cache.store import LOCK_FILE
from crds_fs.config import Settings
from crds_fs.errors import OfflineError, UnknownFileError
from tests.faultproxy import FaultProxy
from tests.helpers import TINY_REFERENCES, ServerProcess, free_port, make_tiny_root

#: Extra references of the test root, beyond make_tiny_root's small ones.
BIG = "big00005j_bia.fits"  # 3 MB
MID = "mid00006j_drk.fits"  # 1 MB
SMALL_REFS = sorted(TINY_REFERENCES)
MAPPING = "hst_acs_biasfile_0001.rmap"


def make_cache_root(root: Path) -> dict[str, bytes]:
    """A CRDS cache layout to serve: tiny root + a 3 MB and a 1 MB reference.

    Returns {name: content} of every reference, for byte-exact assertions.
    """
    make_tiny_root(root)
    rng = random.Random(1234)
    extra = {BIG: rng.randbytes(3_000_000), MID: rng.randbytes(1_000_000)}
    for name, data in extra.items():
        (root / "references" / "hst" / name).write_bytes(data)
    return {**TINY_REFERENCES, **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict]]:
    """One `crds-fs serve` for the module (starting one costs about a second)."""
    base = tmp_path_factory.mktemp("served")
    contents = make_cache_root(base / "root")
    server = ServerProcess(base / "root", "--index", str(base / "server-index"), "-q",
                           log_dir=base)
    server.start()
    yield server, contents
    server.stop()


@pytest.fixture(scope="module")
def _module_proxy(served: tuple[ServerProcess, dict]) -> Iterator[FaultProxy]:
    with FaultProxy(served[0].url) as proxy:
        yield proxy


@pytest.fixture
def proxy(_module_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The module's proxy, with no fault and zero counts at the start of each test."""
    _module_proxy.set_fault(None)
    _module_proxy.reset_counts()
    yield _module_proxy
    _module_proxy.set_fault(None)


@pytest.fixture
def contents(served: tuple[ServerProcess, dict]) -> dict[str, bytes]:
    return served[1]


def cache_settings(url: str, cache_dir: Path, **overrides: object) -> Settings:
    """Short timeouts and one retry: every failure is reached in a few seconds."""
    values: dict = {"server_url": url, "cache_dir": cache_dir, "connect_timeout": 2.0,
                    "read_timeout": 1.0, "retries": 1, "backoff": 0.05}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(proxy: FaultProxy, tmp_path: Path) -> Settings:
    return cache_settings(proxy.url, tmp_path / "cache")


@pytest.fixture
def cache(settings: Settings) -> Iterator[FileCache]:
    opened = FileCache.open(settings)
    yield opened
    opened.close()


def tmp_leftovers(cache_dir: Path) -> list[str]:
    """Anything left in <cache>/tmp but its one lock file (temp files, old lock files)."""
    return sorted(n for n in os.listdir(cache_dir / "tmp") if n != LOCK_FILE)


# --- downloads and layout ----------------------------------------------------------------


def test_open_reads_catalog_and_server_info(cache: FileCache, contents: dict) -> None:
    assert cache.online is True
    assert cache.observatory == "hst"
    assert cache.operational_context() == "hst_0001.pmap"
    assert "download_metadata" not in cache.server_info
    assert set(contents) <= set(cache.catalog.references())
    assert MAPPING in cache.catalog.mappings()
    assert cache.catalog.get(BIG).size == len(contents[BIG])


def test_ensure_downloads_verifies_and_commits(
    cache: FileCache, proxy: FaultProxy, contents: dict, settings: Settings
) -> None:
    assert not cache.is_cached(BIG)
    assert cache.cached_path(BIG) is None
    path = cache.ensure(BIG)
    root = Path(settings.cache_dir)
    assert path == root / "references" / "hst" / BIG == cache.local_path(BIG)
    assert path.read_bytes() == contents[BIG]
    assert path.stat().st_mode & 0o777 == 0o444
    assert cache.is_cached(BIG) and cache.cached_path(BIG) == path
    assert proxy.count("GET", BIG) == 1
    # A second ensure is served from the cache: no request at all.
    assert cache.ensure(BIG) == path
    assert proxy.count("GET", BIG) == 1
    assert tmp_leftovers(root) == []
    stats = cache.stats()
    assert stats["cached_files"] == 1 and stats["cached_bytes"] == len(contents[BIG])
    assert stats["downloads_done"] == 1 and stats["bytes_downloaded"] == len(contents[BIG])
    assert stats["online"] is True and stats["context"] == "hst_0001.pmap"


def test_layout_per_kind(cache: FileCache, settings: Settings) -> None:
    root = Path(settings.cache_dir)
    mapping = cache.ensure(MAPPING)
    assert mapping == root / "mappings" / "hst" / MAPPING
    info = cache.catalog.get(MAPPING)
    assert hashlib.sha1(mapping.read_bytes()).hexdigest() == info.sha1
    assert cache.local_path("server_config") == root / "config" / "hst" / "server_config"
    assert cache.cached_names() == {MAPPING}


def test_unknown_name_makes_no_request(cache: FileCache, proxy: FaultProxy) -> None:
    proxy.reset_counts()
    for name in ("nosuch_file.fits", "hst_9999.pmap", "../etc/passwd", ".hidden"):
        with pytest.raises(UnknownFileError) as info:
            cache.ensure(name)
        assert info.value.errno == 2
    assert "nosuch_file.fits" in str(pytest.raises(UnknownFileError, cache.ensure,
                                                   "nosuch_file.fits").value)
    assert proxy.count("GET") == 0 and proxy.count("POST") == 0


def test_reader_reads_and_pins(cache: FileCache, contents: dict) -> None:
    with cache.open_reader(MID) as reader:
        assert reader.read(10, 0) == contents[MID][:10]
        assert reader.read(100, 500_000) == contents[MID][500_000:500_100]
        assert reader.read(10, len(contents[MID])) == b""
        buffer = bytearray(64)
        assert reader.readinto(memoryview(buffer), 1000) == 64
        assert bytes(buffer) == contents[MID][1000:1064]
        assert os.fstat(reader.fileno()).st_size == len(contents[MID])
        assert cache.stats()["open_readers"] == 1
    assert cache.stats()["open_readers"] == 0
    with pytest.raises(ValueError):
        reader.fileno()


def test_record_use_updates_last_used(cache: FileCache) -> None:
    cache.ensure(SMALL_REFS[0])
    first = cache.index.get(SMALL_REFS[0]).last_used
    cache._last_use.clear()  # forget the rate limit, as a minute later would
    cache.record_use(SMALL_REFS[0])
    assert cache.index.get(SMALL_REFS[0]).last_used >= first
    cache.record_use("not_cached_at_all.fits")  # harmless no-op
    assert cache.index.get("not_cached_at_all.fits") is None


# --- persistence, offline ----------------------------------------------------------------


def test_reopen_downloads_nothing_twice(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    names = [BIG, MID, MAPPING, *SMALL_REFS]
    with FileCache.open(settings) as first:
        for name in names:
            first.ensure(name)
    assert proxy.count("GET") == len(names)
    proxy.reset_counts()
    with FileCache.open(settings) as second:
        assert second.cached_names() == set(names)
        assert all(second.is_cached(n) for n in names)
        for name in names:
            path = second.ensure(name)
            if name in contents:
                assert path.read_bytes() == contents[name]
        assert second.stats()["cached_files"] == len(names)
    assert proxy.count("GET") == 0


def test_offline_open_uses_index(
    settings: Settings, proxy: FaultProxy, contents: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with FileCache.open(settings) as online:
        online.ensure(MID)
        online.ensure(MAPPING)
    # Explicitly offline: no request at all.
    proxy.reset_counts()
    with FileCache.open(settings, offline=True) as offline:
        assert offline.online is False
        assert offline.observatory == "hst"
        assert offline.operational_context() == "hst_0001.pmap"
        assert offline.ensure(MID).read_bytes() == contents[MID]
        with pytest.raises(OfflineError, match="offline"):
            offline.ensure(BIG)
    assert proxy.count("GET") == 0 and proxy.count("POST") == 0
    # Server unreachable: same, with a warning saying so.
    dead = cache_settings(f"http://127.0.0.1:{free_port()}", settings.cache_dir)
    with caplog.at_level(logging.WARNING, logger="crds_fs.cache"):
        with FileCache.open(dead) as unreachable:
            assert unreachable.online is False
            assert unreachable.stats()["online"] is False
            assert len(unreachable.catalog) > 0
            assert unreachable.ensure(MAPPING).exists()
            with pytest.raises(OfflineError, match="unreachable") as info:
                unreachable.ensure(BIG)
            assert BIG in str(info.value)
            assert not unreachable.local_path(BIG).exists()
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_unreachable_without_index_fails_clearly(tmp_path: Path) -> None:
    dead = cache_settings(f"http://127.0.0.1:{free_port()}", tmp_path / "empty")
    with pytest.raises(OfflineError, match="127.0.0.1"):
        FileCache.open(dead)
    with pytest.raises(OfflineError, match="catalog"):
        FileCache.open(dead, observatory="hst", offline=True)


# --- crash recovery ----------------------------------------------------------------------


def test_adopts_file_committed_but_not_indexed(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    with FileCache.open(settings) as cache:
        path = cache.ensure(MID)
        # As if killed between os.replace and the index update.
        cache.index.remove(MID)
    proxy.reset_counts()
    with FileCache.open(settings) as cache:
        assert not cache.is_cached(MID)
        assert cache.ensure(MID) == path
        assert cache.is_cached(MID)
        assert cache.stats()["adopted"] == 1
    assert proxy.count("GET") == 0


def test_replaces_bad_file_at_final_path(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    with FileCache.open(settings) as cache:
        final = cache.local_path(MID)
        final.write_bytes(b"not the real file")
        path = cache.ensure(MID)
        assert path.read_bytes() == contents[MID]
    assert proxy.count("GET", MID) == 1


def test_missing_file_recorded_in_index_is_fetched_again(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    with FileCache.open(settings) as cache:
        path = cache.ensure(SMALL_REFS[1])
        path.unlink()
        assert cache.ensure(SMALL_REFS[1]).read_bytes() == contents[SMALL_REFS[1]]
        assert cache.stats()["cached_files"] == 1
    assert proxy.count("GET", SMALL_REFS[1]) == 2


def test_open_clears_stale_temps_but_not_live_ones(settings: Settings) -> None:
    with FileCache.open(settings):
        pass
    tmp = Path(settings.cache_dir) / "tmp"
    (tmp / "dead00001j_bia.fits.part").write_bytes(b"half a file")
    (tmp / "dead00002j_bia.fits.lock").write_bytes(b"")  # an older version's lock file
    old_live = tmp / "live00004j_bia.fits.lock"  # ... held by an older version: kept
    old_live.write_bytes(b"")
    old_fd = os.open(old_live, os.O_RDONLY)
    fcntl.flock(old_fd, fcntl.LOCK_EX)
    live = NameLock(tmp / LOCK_FILE, "live00003j_bia.fits")
    assert live.try_acquire()  # a download in progress elsewhere
    (tmp / "live00003j_bia.fits.part").write_bytes(b"in progress")
    try:
        with FileCache.open(settings):
            pass
        assert tmp_leftovers(Path(settings.cache_dir)) == [
            "live00003j_bia.fits.part", "live00004j_bia.fits.lock"]
    finally:
        live.release()
        os.close(old_fd)
    with FileCache.open(settings):
        pass
    assert tmp_leftovers(Path(settings.cache_dir)) == []


# --- eviction ----------------------------------------------------------------------------


def test_lru_eviction_keeps_pinned_and_mappings(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    limit = len(contents[BIG]) + len(contents[MID]) // 2
    with FileCache.open(settings, max_bytes=limit) as cache:
        cache.ensure(MAPPING)
        cache.ensure(SMALL_REFS[0])
        reader = cache.open_reader(SMALL_REFS[2])  # pinned while open
        cache.ensure(MID)
        cache.ensure(BIG)  # over the limit: least recently used unpinned references go
        names = cache.cached_names()
        assert BIG in names and MAPPING in names and SMALL_REFS[2] in names
        assert MID not in names and SMALL_REFS[0] not in names
        assert not cache.local_path(MID).exists()
        assert cache.stats()["cached_bytes"] <= limit
        assert cache.stats()["evictions"] == 2
        assert reader.read(5, 0) == contents[SMALL_REFS[2]][:5]
        reader.close()
        # An evicted file comes back on demand.
        assert cache.ensure(MID).read_bytes() == contents[MID]
    assert proxy.count("GET", MID) == 2


def test_reconnects_when_the_server_comes_back(
    served: tuple[ServerProcess, dict], tmp_path: Path, contents: dict
) -> None:
    with FaultProxy(served[0].url) as first:
        settings = cache_settings(first.url, tmp_path / "cache")
        port = first.port
        with FileCache.open(settings):
            pass  # stores the catalog
    # The "server" (our proxy) is down now: the cache opens offline.
    with FileCache.open(settings) as cache:
        assert cache.online is False
        with pytest.raises(OfflineError, match="unreachable"):
            cache.ensure(MID)  # the open just failed: no probe before the interval
        cache.reconnect_interval = 0.0
        with pytest.raises(OfflineError, match="unreachable"):
            cache.ensure(MID)  # probes, still down
        with FaultProxy(served[0].url, port=port):
            assert cache.ensure(MID).read_bytes() == contents[MID]
            assert cache.online is True and cache.stats()["online"] is True


def test_cache_dir_is_a_crds_cache(cache: FileCache, settings: Settings) -> None:
    import ast

    config = Path(settings.cache_dir) / "config" / "hst"
    info = ast.literal_eval((config / "server_config").read_text())
    assert info["operational_context"] == "hst_0001.pmap"
    assert info["bad_files_list"] == ["bbb00002j_bia.fits"]
    assert "download_metadata" not in info
    assert (config / "ref_cache_subdir_mode").read_text().strip() == "flat"
    assert tmp_leftovers(Path(settings.cache_dir)) == []


def test_name_locks_exclude_each_other_not_other_names(tmp_path: Path) -> None:
    """One lock file for every name: a name's lock excludes a second holder (another
    descriptor, as another thread or process would use), never another name, and is
    free again once released; no file per name is created."""
    lock_file = tmp_path / LOCK_FILE
    first = NameLock(lock_file, "aaa00001j_bia.fits")
    assert first.try_acquire()
    assert not NameLock(lock_file, "aaa00001j_bia.fits").try_acquire()
    other = NameLock(lock_file, "aaa00002j_bia.fits")
    assert other.try_acquire()
    first.release()
    again = NameLock(lock_file, "aaa00001j_bia.fits")
    assert again.try_acquire()
    again.release()
    other.release()
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE]
    # A lock held by another process excludes this one until that process is gone.
    script = ("import sys, time; from pathlib import Path; from crds_fs.cache import NameLock;"
              f"lock = NameLock(Path({str(lock_file)!r}), 'aaa00001j_bia.fits');"
              "assert lock.try_acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not NameLock(lock_file, "aaa00001j_bia.fits").try_acquire()
    finally:
        holder.kill()
        holder.wait(10)
    assert NameLock(lock_file, "aaa00001j_bia.fits").try_acquire()
