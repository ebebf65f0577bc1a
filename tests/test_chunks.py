"""Verified random access: chunk manifests from `crds-fs serve`, chunked reads through a mount.

Small chunks (CRDS_FS_SERVE_CHUNK_SIZE=1M on the server) keep the files small: a 48 MiB
generated FITS file has 48+ chunks, as a 400 MiB one would with the default 8 MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import requests

from tests.faultproxy import FaultProxy, _Handler, _QuietServer
from tests.mounting import Mounter, needs_fuse, wait_until
from tests.test_ranges import BIG, big_root, ranged_gets, whole_gets

pytestmark = [pytest.mark.fuse, needs_fuse]

CHUNK = 1 << 20
SIZE = 48 * CHUNK + 777
TOTAL = 49
#: chunked reads are for big files (>= CRDS_FS_RANGE_THRESHOLD, default 64M): lowered here
BIG_ENV = {"CRDS_FS_RANGE_THRESHOLD": "4M"}


@pytest.fixture
def chunked(tmp_path, serve, monkeypatch):
    """(server, data) of a served root with one big FITS file and 1 MiB manifest chunks."""
    monkeypatch.setenv("CRDS_FS_SERVE_CHUNK_SIZE", "1M")
    root, data = big_root(tmp_path, SIZE)
    server = serve(root, "--index", str(tmp_path / "index"))
    return server, data


def rpc(url: str, method: str, *params):
    body = {"jsonrpc": "1.0", "method": method, "params": list(params), "id": 1}
    return requests.post(url + "/json/", json=body, timeout=30).json()


def _path(mount):
    return mount.path("references", "hst", BIG)


def test_serve_publishes_a_chunk_manifest_computed_with_the_sha1(chunked):
    server, data = chunked
    answer = rpc(server.url, "get_chunk_manifest", BIG)["result"]
    assert answer["size"] == len(data) and answer["chunk_size"] == CHUNK
    assert answer["sha1sum"] == hashlib.sha1(data).hexdigest()
    assert answer["chunks"] == [hashlib.sha256(data[i:i + CHUNK]).hexdigest()
                                for i in range(0, len(data), CHUNK)]
    error = rpc(server.url, "get_chunk_manifest", "nope_drk.fits")["error"]
    assert "not on this server" in error["message"]


def test_header_of_an_uncached_big_file_fetches_only_its_first_chunk(chunked, mounter: Mounter):
    astropy_fits = pytest.importorskip("astropy.io.fits")
    server, data = chunked
    mount = mounter(server.url, env=BIG_ENV)
    path = _path(mount)
    assert os.getxattr(path, "user.crds.cached") == b"no"
    header = astropy_fits.getheader(path)
    assert header["CRDSBIG"] == "yes"
    assert os.getxattr(path, "user.crds.cached") == b"partial"
    present, total = os.getxattr(path, "user.crds.chunks").decode().split("/")
    assert int(total) == TOTAL and 1 <= int(present) <= 2
    assert mount.stats()["cache"]["bytes_downloaded"] <= 2 * CHUNK
    assert 1 <= len(ranged_gets(server.log(), BIG)) <= 2
    assert whole_gets(server.log(), BIG) == []
    # a read somewhere in the middle fetches that chunk only, and the bytes are right
    with open(path, "rb") as handle:
        handle.seek(30 * CHUNK + 100)
        assert handle.read(5000) == data[30 * CHUNK + 100:30 * CHUNK + 5100]
    # (the kernel's readahead, 4 MiB on this mount, may reach a few 1 MiB chunks further)
    assert int(os.getxattr(path, "user.crds.chunks").decode().split("/")[0]) <= 2 + 5
    assert mount.stats()["cache"]["bytes_downloaded"] <= 7 * CHUNK
    assert not (Path(mount.cache_dir) / "references" / "hst" / BIG).exists()


def test_a_corrupted_chunk_is_eio_and_nothing_is_kept(chunked, mounter: Mounter):
    server, data = chunked
    with FaultProxy(server.url) as proxy:
        mount = mounter(proxy.url, "--retries", "0", env=BIG_ENV)
        path = _path(mount)
        proxy.set_fault("corrupt", path_contains=BIG)
        with open(path, "rb") as handle:
            handle.seek(5 * CHUNK)
            with pytest.raises(OSError) as caught:
                handle.read(1000)
        assert caught.value.errno == 5  # EIO
        assert os.getxattr(path, "user.crds.chunks") == b"0/49"
        assert re.search(r"chunk 5 .* sha256 .* differs from the manifest", mount.log())
        partial = Path(mount.cache_dir) / "partial" / "hst" / BIG
        assert partial.read_bytes()[5 * CHUNK:6 * CHUNK] == bytes(CHUNK)  # sparse, unwritten
        # the server behaves again: the same read now succeeds with the right bytes
        proxy.clear_fault()
        with open(path, "rb") as handle:
            handle.seek(5 * CHUNK)
            assert handle.read(1000) == data[5 * CHUNK:5 * CHUNK + 1000]


def test_the_chunk_map_survives_a_remount(chunked, mounter: Mounter, tmp_path):
    server, data = chunked
    cache = tmp_path / "shared-cache"
    mount = mounter(server.url, cache_dir=cache, env=BIG_ENV)
    with open(_path(mount), "rb") as handle:
        handle.seek(7 * CHUNK + 10)
        assert handle.read(100) == data[7 * CHUNK + 10:7 * CHUNK + 110]
    assert mount.umount().returncode == 0
    before = len(ranged_gets(server.log(), BIG))
    chunk_map = json.loads((cache / "partial" / "hst" / (BIG + ".map")).read_text())
    kept = chunk_map["present"]  # chunk 7, and what the kernel's readahead touched
    assert 7 in kept and len(kept) <= 5 and set(kept) <= set(range(7, 12))
    again = mounter(server.url, cache_dir=cache, env=BIG_ENV)
    path = _path(again)
    assert os.getxattr(path, "user.crds.cached") == b"partial"
    assert os.getxattr(path, "user.crds.chunks") == f"{len(kept)}/49".encode()
    with open(path, "rb") as handle:
        handle.seek(7 * CHUNK)
        assert handle.read(CHUNK) == data[7 * CHUNK:8 * CHUNK]
    assert len(ranged_gets(server.log(), BIG)) == before  # served from the kept chunk


def test_a_full_read_completes_the_file_and_it_verifies(chunked, mounter: Mounter):
    server, data = chunked
    mount = mounter(server.url, env=BIG_ENV)
    path = _path(mount)
    assert path.read_bytes() == data
    assert wait_until(lambda: os.getxattr(path, "user.crds.cached") == b"yes", 30)
    assert os.getxattr(path, "user.crds.chunks") == b"49/49"
    final = Path(mount.cache_dir) / "references" / "hst" / BIG
    assert hashlib.sha1(final.read_bytes()).hexdigest() == hashlib.sha1(data).hexdigest()
    assert list((Path(mount.cache_dir) / "partial" / "hst").iterdir()) == []
    assert whole_gets(server.log(), BIG) == []
    assert "it is now a cached file" in mount.log()
    assert path.read_bytes() == data  # now an ordinary cached file


def test_complete_partial_fetches_the_rest_in_the_background(chunked, mounter: Mounter):
    server, data = chunked
    mount = mounter(server.url, "--complete-partial", env=BIG_ENV)
    path = _path(mount)
    with open(path, "rb") as handle:
        assert handle.read(100) == data[:100]
    assert wait_until(lambda: os.getxattr(path, "user.crds.cached") == b"yes", 60)
    final = Path(mount.cache_dir) / "references" / "hst" / BIG
    assert final.read_bytes() == data


class _NoManifestHandler(_Handler):
    """A CRDS server of today: JSON-RPC get_chunk_manifest is an unknown method."""

    def _forward(self, body: bytes):  # type: ignore[override]
        if b"get_chunk_manifest" in body:
            payload = json.dumps({"id": 1, "result": None, "error": {
                "code": -32601, "name": "MethodNotFound",
                "message": "Method not found: get_chunk_manifest"}}).encode()
            return 200, "OK", [("Content-Type", "application/json")], payload
        return super()._forward(body)


class NoManifestProxy(FaultProxy):
    def start(self) -> NoManifestProxy:
        import threading

        handler = type("_BoundNoManifest", (_NoManifestHandler,), {"proxy": self})
        server = _QuietServer(("127.0.0.1", self.listen_port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self


def test_without_manifests_the_file_is_verified_whole_before_serving(chunked, mounter: Mounter):
    astropy_fits = pytest.importorskip("astropy.io.fits")
    server, data = chunked
    with NoManifestProxy(server.url) as proxy:
        mount = mounter(proxy.url, env=BIG_ENV)
        path = _path(mount)
        assert astropy_fits.getheader(path)["CRDSBIG"] == "yes"
        assert os.getxattr(path, "user.crds.cached") == b"yes"
        assert mount.stats()["cache"]["bytes_downloaded"] == len(data)
    assert "publishes no chunk manifests" in mount.log()
    # downloaded whole (in parallel ranges: the server honours Range) before serving
    assert "sha1 done" in mount.log() and whole_gets(server.log(), BIG) == []


def test_files_below_the_threshold_are_downloaded_whole(chunked, mounter: Mounter):
    server, data = chunked
    mount = mounter(server.url, env={"CRDS_FS_RANGE_THRESHOLD": "1G"})
    path = _path(mount)
    with open(path, "rb") as handle:
        assert handle.read(100) == data[:100]
    assert os.getxattr(path, "user.crds.cached") == b"yes"
    assert ranged_gets(server.log(), BIG) == [] and len(whole_gets(server.log(), BIG)) == 1
