"""The namespace layer without FUSE: a real FileCache talking to a real `crds-fs serve`
through a FaultProxy (to count requests), and `MountSource` calls made directly."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crds_fs.cache import FileCache
from crds_fs.client.payload import crds_decode
from crds_fs.config import Settings
from crds_fs.errors import ConfigError, CrdsFsError
from crds_fs.namespace import (
    BytesHandle,
    Listing,
    MountSource,
    Provider,
    catalog_epoch_ns,
    provider_factories,
    register_provider,
    unregister_provider,
)
from crds_fs.namespace.base import DIR_MODE, FILE_MODE
from crds_fs.namespace.source import FALLBACK_EPOCH_NS
from tests.faultproxy import FaultProxy
from tests.helpers import TINY_REFERENCES, ServerProcess, make_tiny_root

REF = "ccc00003j_drk.fits"
REF_PATH = f"/references/hst/{REF}"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_root(tmp_path_factory.mktemp("tiny") / "root")


@pytest.fixture(scope="module")
def proxy(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    logs = tmp_path_factory.mktemp("serve")
    server = ServerProcess(tiny_root, "--index", str(logs / "index"), log_dir=logs)
    server.start()
    try:
        with FaultProxy(server.url) as fault_proxy:
            yield fault_proxy
    finally:
        server.stop()


def open_cache(proxy: FaultProxy, cache_dir: Path, **overrides: object) -> FileCache:
    settings = Settings(server_url=proxy.url, cache_dir=cache_dir, observatory="hst",
                        read_timeout=3.0, connect_timeout=2.0, retries=0, backoff=0.05)
    for key, value in overrides.items():
        object.__setattr__(settings, key, value)
    return FileCache.open(settings, observatory="hst")


@pytest.fixture
def source(proxy: FaultProxy, tmp_path: Path) -> Iterator[MountSource]:
    proxy.clear_fault()
    cache = open_cache(proxy, tmp_path / "cache")
    src = MountSource(cache, mountpoint=str(tmp_path / "mnt"))
    proxy.reset_counts()
    try:
        yield src
    finally:
        src.close()
        cache.close()


def errno_of(call, *args) -> int:
    with pytest.raises(CrdsFsError) as info:
        call(*args)
    return info.value.errno


def read_all(src: MountSource, path: str) -> bytes:
    opened = src.open(path, os.O_RDONLY)
    try:
        chunks, offset = [], 0
        while chunk := src.read(path, 4096, offset, opened.fh):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        src.release(path, opened.fh)


# --- tree and attributes ----------------------------------------------------------------------


def test_root_lists_the_builtin_directories_read_only(source: MountSource) -> None:
    names = [name for name, _ in source.readdir("/")]
    assert {".crds-fs", "config", "mappings", "references"} <= set(names)
    assert names == sorted(names)
    for path in ("/", "/mappings", "/mappings/hst", "/references/hst", "/config/hst"):
        attrs = source.getattr(path)
        assert attrs["st_mode"] == DIR_MODE, path
    assert source.getattr("/")["st_nlink"] == 2 + len(names)
    assert source.getattr("/references")["st_nlink"] == 3


def test_listings_and_sizes_come_from_the_catalog_without_downloads(
        source: MountSource, proxy: FaultProxy, tiny_root: Path) -> None:
    listing = dict(source.readdir("/references/hst"))
    assert sorted(listing) == sorted(TINY_REFERENCES)
    for name, data in TINY_REFERENCES.items():
        assert listing[name]["st_size"] == len(data)
        assert listing[name]["st_mode"] == FILE_MODE
        assert source.getattr(f"/references/hst/{name}")["st_size"] == len(data)
    served = sorted(p.name for p in (tiny_root / "mappings" / "hst").iterdir())
    mappings = dict(source.readdir("/mappings/hst"))
    assert sorted(mappings) == served
    for name in served:
        size = (tiny_root / "mappings" / "hst" / name).stat().st_size
        assert mappings[name]["st_size"] == size
    assert proxy.count("GET") == 0 and proxy.count("POST") == 0
    assert not any(source.cache.is_cached(n) for n in TINY_REFERENCES)


def test_times_are_fixed_by_the_catalog(source: MountSource, proxy: FaultProxy,
                                        tmp_path: Path) -> None:
    stamp = source.getattr(REF_PATH)["st_mtime"]
    assert stamp == source.getattr("/")["st_mtime"] == source.env.epoch_ns
    assert stamp == catalog_epoch_ns(source.cache.server_info) != FALLBACK_EPOCH_NS
    with open_cache(proxy, tmp_path / "other-cache") as cache:
        assert MountSource(cache).getattr(REF_PATH)["st_mtime"] == stamp
    assert catalog_epoch_ns({}) == FALLBACK_EPOCH_NS
    history = {"context_history": [["2020-01-02 03:04:05", "a.pmap", ""],
                                   ["2021-01-02 03:04:05.5", "b.pmap", ""], ["junk"]]}
    assert catalog_epoch_ns(history) == 1609556645 * 10**9


@pytest.mark.parametrize("path", [
    "/references/hst/nothere_drk.fits",
    "/references/hst/hst_0001.pmap",      # a mapping is not a reference
    "/mappings/hst/ccc00003j_drk.fits",   # nor the other way round
    "/references/jwst",
    "/references/hst/ccc00003j_drk.fits/x",
    "/nope",
    "/config/hst/crds_db.sqlite3",
    "/.crds-fs/other",
])
def test_unknown_paths_are_enoent_without_any_request(source: MountSource, proxy: FaultProxy,
                                                      path: str) -> None:
    assert errno_of(source.getattr, path) == errno.ENOENT
    assert errno_of(source.open, path, os.O_RDONLY) == errno.ENOENT
    assert proxy.count("GET") == 0 and proxy.count("POST") == 0


def test_every_write_is_erofs(source: MountSource) -> None:
    calls = [
        (source.open, REF_PATH, os.O_WRONLY),
        (source.open, REF_PATH, os.O_RDWR),
        (source.open, REF_PATH, os.O_RDONLY | os.O_TRUNC),
        (source.open, "/config/hst/server_config", os.O_WRONLY | os.O_APPEND),
        (source.create, "/references/hst/new.fits", 0o644),
        (source.create, "/newfile", 0o644),
        (source.mkdir, "/references/hst/dir", 0o755),
        (source.mkdir, "/newdir", 0o755),
        (source.rmdir, "/references/hst"),
        (source.unlink, REF_PATH),
        (source.symlink, "/references/hst/link", REF),
        (source.rename, REF_PATH, "/references/hst/other.fits"),
        (source.setattr, "chmod", REF_PATH),
        (source.setattr, "truncate", "/mappings/hst/hst_0001.pmap"),
        (source.setxattr, REF_PATH, "user.x", b"1"),
        (source.removexattr, REF_PATH, "user.crds.sha1"),
        (source.write, REF_PATH, b"x", 0, 1),
        (source.access, REF_PATH, os.W_OK),
    ]
    for call, *args in calls:
        assert errno_of(call, *args) == errno.EROFS, (call.__name__, args)
    source.access(REF_PATH, os.R_OK)
    source.access("/references/hst", os.R_OK | os.X_OK)
    assert errno_of(source.access, REF_PATH, os.X_OK) == errno.EACCES
    assert errno_of(source.open, "/references/hst", os.O_RDONLY) == errno.EISDIR


# --- opening and reading -----------------------------------------------------------------------


def test_open_downloads_once_then_reads_from_the_cache(source: MountSource,
                                                       proxy: FaultProxy) -> None:
    assert read_all(source, REF_PATH) == TINY_REFERENCES[REF]
    assert proxy.count("GET", REF) == 1
    opened = source.open(REF_PATH, os.O_RDONLY)
    assert opened.keep_cache and not opened.direct_io
    view = memoryview(bytearray(7))
    assert source.readinto(opened.fh, view, 3) == 7
    assert bytes(view) == TINY_REFERENCES[REF][3:10]
    assert source.handle(opened.fh).fileno() is not None
    source.release(REF_PATH, opened.fh)
    assert errno_of(source.read, REF_PATH, 1, 0, opened.fh) == errno.ENOENT
    assert read_all(source, REF_PATH) == TINY_REFERENCES[REF]
    assert proxy.count("GET", REF) == 1
    assert source.counters["opens"] == 3


def test_failed_download_is_eio_and_logged_then_retried(
        source: MountSource, proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    name = "ddd00004j_drk.fits"
    proxy.set_fault("corrupt", path_contains=name)
    with caplog.at_level(logging.ERROR, logger="crds_fs"):
        assert errno_of(source.open, f"/references/hst/{name}", os.O_RDONLY) == errno.EIO
    text = caplog.text
    assert f"references/hst/{name}" in text and "sha1" in text.lower()
    assert not source.cache.is_cached(name)
    assert not source.cache.local_path(name).exists()
    assert source.counters["open_errors"] == 1
    proxy.clear_fault()
    assert read_all(source, f"/references/hst/{name}") == TINY_REFERENCES[name]


def test_xattrs(source: MountSource, proxy: FaultProxy) -> None:
    data = TINY_REFERENCES[REF]
    assert sorted(source.listxattr(REF_PATH)) == [
        "user.crds.cached", "user.crds.chunks", "user.crds.sha1", "user.crds.url"]
    assert source.getxattr(REF_PATH, "user.crds.sha1") == hashlib.sha1(data).hexdigest().encode()
    assert source.getxattr(REF_PATH, "user.crds.cached") == b"no"
    url = source.getxattr(REF_PATH, "user.crds.url").decode()
    assert url == f"{proxy.url}/unchecked_get/references/hst/{REF}"
    assert proxy.count("GET") == 0
    read_all(source, REF_PATH)
    assert source.getxattr(REF_PATH, "user.crds.cached") == b"yes"
    pmap = "/mappings/hst/hst_0001.pmap"
    assert source.getxattr(pmap, "user.crds.url").decode().endswith(
        "/unchecked_get/mappings/hst/hst_0001.pmap")
    assert errno_of(source.getxattr, REF_PATH, "user.other") == errno.ENODATA
    assert errno_of(source.getxattr, REF_PATH, "security.selinux") == errno.EOPNOTSUPP
    assert errno_of(source.getxattr, "/references/hst", "user.crds.sha1") == errno.ENODATA
    assert source.listxattr("/references/hst") == []
    assert source.listxattr("/") == []
    assert errno_of(source.getxattr, "/references/hst/zz.fits", "user.crds.sha1") == errno.ENOENT


# --- config/ and .crds-fs/ ------------------------------------------------------------------


def test_config_files_are_what_crds_reads(source: MountSource) -> None:
    text = read_all(source, "/config/hst/server_config")
    assert source.getattr("/config/hst/server_config")["st_size"] == len(text)
    info = ast.literal_eval(text.decode())
    assert info["observatory"] == "hst"
    assert info["operational_context"] == source.context == "hst_0001.pmap"
    assert info["bad_files_list"] == ["bbb00002j_bia.fits"]
    assert info["force_remote_mode"] == 0 and info["last_synced"]
    assert info["mappings"] == source.cache.catalog.mappings()
    metadata = crds_decode(info["download_metadata"])
    catalog = source.cache.catalog
    assert set(metadata) == set(catalog.mappings()) | set(catalog.references())
    for name, record in metadata.items():
        entry = catalog.get(name)
        assert record == {"sha1sum": entry.sha1, "size": str(entry.size)}
    assert read_all(source, "/config/hst/bad_files.txt") == b"bbb00002j_bia.fits\n"
    assert read_all(source, "/config/hst/ref_cache_subdir_mode").strip() == b"flat"
    assert sorted(n for n, _ in source.readdir("/config/hst")) == [
        "bad_files.txt", "ref_cache_subdir_mode", "server_config"]


def test_named_context_becomes_operational(proxy: FaultProxy, tmp_path: Path) -> None:
    with open_cache(proxy, tmp_path / "cache") as cache:
        src = MountSource(cache, context="hst_0002")
        assert src.context == "hst_0002.pmap"
        info = ast.literal_eval(read_all(src, "/config/hst/server_config").decode())
        assert info["operational_context"] == "hst_0002.pmap"
        assert MountSource(cache, context="operational").context == "hst_0001.pmap"
        with pytest.raises(ConfigError, match="hst_9999.pmap"):
            MountSource(cache, context="hst_9999.pmap")
        with pytest.raises(ConfigError):
            MountSource(cache, context="aaa00001j_bia.fits")


def test_stats_file(source: MountSource) -> None:
    read_all(source, REF_PATH)
    opened = source.open("/.crds-fs/stats", os.O_RDONLY)
    assert opened.direct_io and not opened.keep_cache
    stats = json.loads(source.read("", 1 << 20, 0, opened.fh))
    source.release("", opened.fh)
    assert stats["mount"]["pid"] == os.getpid()
    assert stats["mount"]["context"] == "hst_0001.pmap"
    assert stats["mount"]["references"] == len(TINY_REFERENCES)
    assert stats["io"]["opens"] == 1 and stats["io"]["bytes_read"] >= len(TINY_REFERENCES[REF])
    assert stats["cache"]["cached_files"] == 1
    assert [n for n, _ in source.readdir("/.crds-fs")] == ["stats"]


# --- extensibility -----------------------------------------------------------------------------


class _HelloProvider(Provider):
    def getattr(self, parts):
        if not parts:
            return self.env.dir_attrs()
        if parts == ("hello",):
            return self.env.file_attrs(5)
        raise CrdsFsError("nope")

    def readdir(self, parts):
        return [("hello", self.getattr(("hello",)))]

    def open(self, parts, flags):
        return BytesHandle(b"hello")


def test_providers_register_by_top_level_name(proxy: FaultProxy, tmp_path: Path) -> None:
    assert "hello-test" not in provider_factories()
    register_provider("hello-test", _HelloProvider)
    try:
        with pytest.raises(ValueError):
            register_provider("hello-test", _HelloProvider)
        with open_cache(proxy, tmp_path / "cache") as cache:
            src = MountSource(cache)
            assert "hello-test" in [n for n, _ in src.readdir("/")]
            assert read_all(src, "/hello-test/hello") == b"hello"
            assert errno_of(src.unlink, "/hello-test/hello") == errno.EROFS
    finally:
        unregister_provider("hello-test")
    assert "hello-test" not in provider_factories()


def test_listing_builds_attributes_lazily() -> None:
    built: list[str] = []

    def attrs_of(name: str) -> dict:
        built.append(name)
        return {"st_mode": FILE_MODE, "st_size": len(name)}

    listing = Listing(["a", "bb", "ccc"], attrs_of)
    assert len(listing) == 3 and built == []
    assert listing[1] == ("bb", {"st_mode": FILE_MODE, "st_size": 2})
    assert [n for n, _ in listing[1:]] == ["bb", "ccc"]
    assert built == ["bb", "bb", "ccc"]
