"""The cache keeps its promises (issue 9 defects 6, 7, 8, 11 at the cache layer): the size
limit (startup, every insert, hysteresis, files larger than the limit, open files pinned
across processes), the free-space floor, a full disk and a full index, re-verification of
cached files, and waits that give up at a deadline or when the reader is interrupted.

A real `crds-fs serve` sits behind the FaultProxy (fixtures from tests/test_cache.py); full
disks are real tmpfs mounts (needs root: skipped otherwise).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crds_fs.cache import FileCache
from crds_fs.config import Settings, parse_min_free, parse_size
from crds_fs.errors import CacheFullError, ConfigError, OpenInterruptedError, OpenTimeoutError
from tests import test_cache as common
from tests.faultproxy import FaultProxy
from tests.test_cache import BIG, MAPPING, MID, SMALL_REFS, cache_settings, tmp_leftovers

served = common.served
_module_proxy = common._module_proxy
proxy = common.proxy
contents = common.contents
settings = common.settings


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Factory: mount a tmpfs of a given size at a directory; unmounted at teardown."""
    mounted: list[Path] = []

    def make(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(path)], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); needs root")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def cached_bytes(cache: FileCache) -> int:
    return cache.stats()["cached_bytes"]


# --- settings ----------------------------------------------------------------------------


def test_size_and_floor_parsing() -> None:
    assert parse_size("150k") == 150 * 1024
    assert parse_size("50G") == 50 << 30
    assert parse_size("2.5MiB") == int(2.5 * (1 << 20))
    assert parse_size("1234") == 1234
    assert parse_min_free("5%", 1000) == 50
    assert parse_min_free("0", 1000) == 0
    assert parse_min_free("1M", 10) == 1 << 20
    for bad in ("lots", "-1G"):
        with pytest.raises(ConfigError, match="size"):
            parse_size(bad, what="size")
    with pytest.raises(ConfigError):
        parse_min_free("150%", 10)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDS_FS_CACHE_MAX_SIZE", "150k")
    monkeypatch.setenv("CRDS_FS_CACHE_MIN_FREE", "2G")
    monkeypatch.setenv("CRDS_FS_OPEN_DEADLINE", "7")
    settings = Settings.from_env()
    assert settings.cache_max_bytes == 150 * 1024
    assert settings.cache_min_free == "2G"
    assert settings.open_deadline == 7.0
    monkeypatch.setenv("CRDS_FS_CACHE_MIN_FREE", "half")
    with pytest.raises(ConfigError, match="CRDS_FS_CACHE_MIN_FREE"):
        Settings.from_env()


# --- defect 6: the size limit --------------------------------------------------------------


def test_cache_over_its_limit_is_trimmed_at_startup(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    names = [MAPPING, *SMALL_REFS, MID, BIG]
    with FileCache.open(settings) as unlimited:
        for name in names:
            unlimited.ensure(name)
        total = cached_bytes(unlimited)
    assert total > len(contents[BIG]) + len(contents[MID])
    limit = len(contents[BIG]) + len(contents[MID]) // 2
    with FileCache.open(settings, max_bytes=limit) as limited:
        # nothing was inserted: the limit holds right after opening, with hysteresis
        assert cached_bytes(limited) <= 0.9 * limit
        kept = limited.cached_names()
        assert MAPPING in kept  # mappings are never evicted
        assert BIG in kept  # the most recently used
        assert MID not in kept and not limited.local_path(MID).exists()
        assert limited.stats()["evictions"] >= 1


def test_limit_holds_after_every_insert_with_hysteresis(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    small = sum(len(contents[n]) for n in SMALL_REFS)
    limit = len(contents[MID]) + 20_000  # MID fits, MID plus every small file does not
    assert small > 20_000 and len(contents[MID]) > 0.9 * limit
    with FileCache.open(settings, max_bytes=limit) as cache:
        for name in SMALL_REFS:
            cache.ensure(name)
            assert cached_bytes(cache) <= limit
        assert cache.stats()["evictions"] == 0
        cache.ensure(MID)
        # evicting just enough to get under the limit would keep the newest small file;
        # hysteresis (down to 90% of the limit) makes room for the next inserts too
        assert cache.cached_names() == {MID}
        assert cache.stats()["evictions"] == len(SMALL_REFS)
        assert all(not cache.local_path(n).exists() for n in SMALL_REFS)


def test_file_larger_than_the_limit_is_kept_only_while_open(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    limit = len(contents[MID]) + 300_000  # BIG (3 MB) can never fit
    with FileCache.open(settings, max_bytes=limit) as cache:
        cache.ensure(MID)
        reader = cache.open_reader(BIG)
        try:
            assert reader.read(100, 1_000_000) == contents[BIG][1_000_000:1_000_100]
            # it does not push the files that fit out of the cache
            assert MID in cache.cached_names()
            assert cache.local_path(BIG).exists()
        finally:
            reader.close()
        # closed: the oversize file goes first, the others stay
        assert BIG not in cache.cached_names() and not cache.local_path(BIG).exists()
        assert MID in cache.cached_names()
        assert cached_bytes(cache) <= limit


def test_open_reader_in_another_process_is_never_evicted(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    """Pins work across processes (flock); a second FileCache stands in for the process."""
    limit = len(contents[MID]) + 5_000
    with FileCache.open(settings) as other:
        reader = other.open_reader(MID)  # the least recently used file from now on
        try:
            with FileCache.open(settings, max_bytes=limit) as cache:
                for name in SMALL_REFS:
                    cache.ensure(name)  # over the limit: MID would be the first victim
                assert cache.stats()["evictions"] >= 1
                assert cache.local_path(MID).exists() and MID in cache.cached_names()
                assert reader.read(10, 0) == contents[MID][:10]
        finally:
            reader.close()
    with FileCache.open(settings, max_bytes=limit) as cache:  # nobody has it open now
        assert MID not in cache.cached_names() and not cache.local_path(MID).exists()


# --- the free-space floor and a full disk (defect 7) ---------------------------------------


def test_free_space_floor_evicts_before_a_download(
    proxy: FaultProxy, tmp_path: Path, contents: dict, tmpfs, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmpfs(tmp_path / "disk", "5m")
    floor = int(1.5 * (1 << 20))
    settings = cache_settings(proxy.url, root / "cache", cache_min_free=str(floor))
    with FileCache.open(settings) as cache:
        cache.ensure(MID)
        cache.ensure(SMALL_REFS[0])
        free, _ = cache.store.disk_space()
        assert free - len(contents[BIG]) < floor  # BIG would cross the floor
        assert cache.ensure(BIG).read_bytes() == contents[BIG]
        assert MID not in cache.cached_names()  # evicted to make room
        free, _ = cache.store.disk_space()
        assert free >= floor
        # a floor nothing can satisfy: refused up front, with what and where
        cache.settings = cache_settings(proxy.url, root / "cache", cache_min_free="4.5M")
        with caplog.at_level(logging.ERROR, logger="crds_fs.cache"), \
                pytest.raises(CacheFullError) as info:
            cache.ensure(MID)
        assert info.value.errno == errno.ENOSPC
        text = str(info.value)
        assert MID in text and str(root / "cache") in text and "CRDS_FS_CACHE_MIN_FREE" in text
        assert any(str(root / "cache") in r.getMessage() for r in caplog.records)
        assert tmp_leftovers(root / "cache") == []


def test_disk_full_while_downloading_names_the_cache_dir(
    proxy: FaultProxy, tmp_path: Path, contents: dict, tmpfs, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmpfs(tmp_path / "disk", "2m")
    settings = cache_settings(proxy.url, root / "cache", cache_min_free="0")
    with FileCache.open(settings) as cache, \
            caplog.at_level(logging.ERROR, logger="crds_fs.cache"):
        with pytest.raises(CacheFullError) as info:
            cache.ensure(BIG)  # 3 MB into 2 MB
        assert info.value.errno == errno.ENOSPC
        for text in (str(info.value), *[r.getMessage() for r in caplog.records]):
            assert str(root / "cache") in text and "disk is full" in text and "ENOSPC" in text
        assert tmp_leftovers(root / "cache") == []  # the partial file is gone
        assert not cache.is_cached(BIG)
        # the space is back: smaller files still work
        assert cache.ensure(SMALL_REFS[0]).read_bytes() == contents[SMALL_REFS[0]]


def test_full_index_after_commit_still_serves_the_verified_file(
    settings: Settings, proxy: FaultProxy, contents: dict, tmpfs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    index_dir = tmpfs(Path(settings.cache_dir) / "index", "1m")
    with FileCache.open(settings) as cache:
        # empty the WAL, then fill the index's disk: the next index write cannot grow it
        with sqlite3.connect(index_dir / "cache.db") as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = index_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        with caplog.at_level(logging.WARNING, logger="crds_fs.cache"):
            path = cache.ensure(MID)
        assert path.read_bytes() == contents[MID]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(MID in e and "index" in e and "full" in e for e in errors), errors
        assert not any("bug" in e for e in errors)
        filler.unlink()
    proxy.reset_counts()
    with FileCache.open(settings) as cache:  # space again: adopted, not downloaded again
        assert cache.ensure(MID).read_bytes() == contents[MID]
        assert cache.is_cached(MID)
    assert proxy.count("GET", MID) == 0


# --- defect 11: cached files are re-verified ------------------------------------------------


def _corrupt(path: Path, *, keep_mtime: bool = False, truncate: bool = False) -> None:
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as out:
        if truncate:
            out.truncate(st.st_size // 2)
        else:
            out.seek(st.st_size // 3)
            byte = out.read(1)
            out.seek(st.st_size // 3)
            out.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, 0o444)
    if keep_mtime:  # bit rot: same size, same times
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_open_detects_a_damaged_cached_file_and_refetches(
    settings: Settings, proxy: FaultProxy, contents: dict, damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FileCache.open(settings) as cache:
        path = cache.ensure(MID)
        _corrupt(path, truncate=damage == "truncated")
        assert not cache.is_cached(MID)  # a stat says so: the xattr shows cached=no
        with caplog.at_level(logging.WARNING, logger="crds_fs.cache"), \
                cache.open_reader(MID) as reader:
            assert reader.read(len(contents[MID]) + 1, 0) == contents[MID]
        assert any(MID in r.getMessage() and "fetching it again" in r.getMessage()
                   for r in caplog.records)
        assert cache.is_cached(MID)
        assert hashlib.sha1(path.read_bytes()).hexdigest() == cache.catalog.get(MID).sha1
    assert proxy.count("GET", MID) == 2


def test_verify_on_demand_finds_bit_rot(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    with FileCache.open(settings) as cache:
        sha1 = cache.catalog.get(MID).sha1
        assert cache.verify(MID) == "not cached"
        path = cache.ensure(MID)
        assert cache.verify(MID) == f"ok {sha1}"
        _corrupt(path, keep_mtime=True)
        assert cache.is_cached(MID)  # invisible to a stat ...
        assert cache.verify(MID) == f"repaired {sha1}"  # ... found by hashing
        assert path.read_bytes() == contents[MID]
        assert cache.verify(MID) == f"ok {sha1}"
    assert proxy.count("GET", MID) == 2


# --- defect 8: waits that end ------------------------------------------------------------------


def test_interrupted_wait_returns_at_once_and_cancels_the_download(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    patient = cache_settings(settings.server_url, settings.cache_dir, read_timeout=30.0)
    proxy.set_fault("slow", path_contains=MID, delay=2.0, times=1)
    with FileCache.open(patient) as cache:
        asked = time.monotonic()
        with pytest.raises(OpenInterruptedError) as info:
            cache.ensure(MID, cancelled=lambda: time.monotonic() - asked > 0.3)
        assert time.monotonic() - asked < 2.0  # not the server's 2 s, nor 30 s
        assert info.value.errno == errno.EINTR and MID in str(info.value)
        # nobody waits any more: the download stops at its next check, nothing is kept
        deadline = time.monotonic() + 20
        while cache.fetcher.in_flight(MID) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not cache.is_cached(MID) and tmp_leftovers(Path(patient.cache_dir)) == []
        assert cache.stats()["downloads_failed"] == 0
        assert cache.ensure(MID).read_bytes() == contents[MID]


def test_deadline_ends_the_wait_and_the_download_goes_on(
    settings: Settings, proxy: FaultProxy, contents: dict
) -> None:
    patient = cache_settings(settings.server_url, settings.cache_dir, read_timeout=30.0)
    proxy.set_fault("slow", path_contains=MID, delay=3.0, times=1)
    with FileCache.open(patient) as cache:
        asked = time.monotonic()
        with pytest.raises(OpenTimeoutError) as info:
            cache.ensure(MID, deadline=asked + 1.0)
        assert time.monotonic() - asked < 2.5
        assert info.value.errno == errno.ETIMEDOUT
        assert MID in str(info.value) and "CRDS_FS_OPEN_DEADLINE" in str(info.value)
        # a later open joins the download still running (one GET in all)
        assert cache.ensure(MID).read_bytes() == contents[MID]
    assert proxy.count("GET", MID) == 1
