"""Parallel ranged downloads of big files, through real mounts and a real `crds-fs serve`.

The big file is generated in tmp (tens of MiB of random bytes, so a range written at the
wrong offset cannot go unnoticed); the range threshold is lowered so the test stays small.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from crds_fs.cache.ranges import plan
from tests.faultproxy import FaultProxy, _Handler, _QuietServer
from tests.helpers import make_tiny_root
from tests.mounting import Mounter, needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse]

BIG = "zzz00009j_drk.fits"
BIG_SIZE = 40 * (1 << 20) + 12345  # not a multiple of anything: uneven last range


def write_big_fits(path: Path, size: int) -> bytes:
    """A FITS file of *size* bytes: one header block, then random bytes; returns them."""
    cards = [f"{'SIMPLE':8}= {'T':>20}", f"{'BITPIX':8}= {8:>20}", f"{'NAXIS':8}= {0:>20}",
             f"{'EXTEND':8}= {'T':>20}", f"{'TELESCOP':8}= {chr(39) + 'HST' + chr(39):>20}",
             f"{'CRDSBIG':8}= {chr(39) + 'yes' + chr(39):>20}", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    data = header + os.urandom(size - len(header))
    path.write_bytes(data)
    return data


def big_root(base: Path, size: int = BIG_SIZE) -> tuple[Path, bytes]:
    root = make_tiny_root(base / "root")
    data = write_big_fits(root / "references" / "hst" / BIG, size)
    return root, data


def ranged_gets(server_log: str, name: str) -> list[str]:
    """Access-log lines of GETs of *name* answered 206 (one per range request)."""
    return [line for line in server_log.splitlines()
            if f"GET /unchecked_get/references/hst/{name}" in line
            and re.search(r'" 206 ', line)]


def whole_gets(server_log: str, name: str) -> list[str]:
    return [line for line in server_log.splitlines()
            if f"GET /unchecked_get/references/hst/{name}" in line
            and re.search(r'" 200 ', line)]


#: the whole-file path (parallel ranges), without chunked reads, with a small threshold
RANGE_ENV = {"CRDS_FS_RANGE_THRESHOLD": "8M", "CRDS_FS_PARTIAL_READS": "0"}


def test_parallel_ranges_are_byte_identical_one_get_per_range(tmp_path, serve, mounter: Mounter):
    root, data = big_root(tmp_path)
    server = serve(root, "--index", str(tmp_path / "index"))
    mount = mounter(server.url, "--streams", "4", env=RANGE_ENV)
    path = mount.path("references", "hst", BIG)
    assert path.read_bytes() == data
    assert os.getxattr(path, "user.crds.cached") == b"yes"
    cached = Path(mount.cache_dir) / "references" / "hst" / BIG
    assert hashlib.sha1(cached.read_bytes()).hexdigest() == hashlib.sha1(data).hexdigest()
    log = server.log()
    pieces = plan(len(data), 4)
    assert len(pieces) == 11  # 40 MiB + 12345: 4 MiB pieces, taken in order by 4 streams
    assert len(ranged_gets(log, BIG)) == len(pieces), log
    assert whole_gets(log, BIG) == []
    assert mount.stats()["cache"]["bytes_downloaded"] == len(data)
    assert f"in {len(pieces)} ranges over 4 streams" in mount.log()


def test_one_stream_below_the_threshold_or_with_streams_1(tmp_path, serve, mounter: Mounter):
    root, data = big_root(tmp_path)
    server = serve(root, "--index", str(tmp_path / "index"))
    mount = mounter(server.url, "--streams", "1", env=RANGE_ENV)
    assert mount.path("references", "hst", BIG).read_bytes() == data
    log = server.log()
    assert ranged_gets(log, BIG) == [] and len(whole_gets(log, BIG)) == 1


def test_a_range_reset_midway_resumes_from_the_last_byte(tmp_path, serve, mounter: Mounter):
    root, data = big_root(tmp_path)
    server = serve(root, "--index", str(tmp_path / "index"))
    with FaultProxy(server.url) as proxy:
        mount = mounter(proxy.url, "--streams", "4", env=RANGE_ENV)
        proxy.reset_counts()
        proxy.set_fault("reset", path_contains=BIG, times=1)
        path = mount.path("references", "hst", BIG)
        assert path.read_bytes() == data
        # one GET per range + 1 resume of the range that was cut; never a restart
        assert proxy.count("GET", BIG) == len(plan(len(data), 4)) + 1
    log = mount.log()
    assert re.search(r"range \d+-\d+ broke off at byte \d+", log), log
    assert mount.stats()["cache"]["bytes_downloaded"] < len(data) * 1.2


class _NoRangeHandler(_Handler):
    """Forwards requests without their Range header: a server that ignores ranges."""

    def _forward(self, body: bytes):  # type: ignore[override]
        del self.headers["Range"]
        return super()._forward(body)


class NoRangeProxy(FaultProxy):
    def start(self) -> NoRangeProxy:
        import threading

        handler = type("_BoundNoRange", (_NoRangeHandler,), {"proxy": self})
        server = _QuietServer(("127.0.0.1", self.listen_port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self


def test_a_server_without_range_support_gets_one_stream(tmp_path, serve, mounter: Mounter):
    root, data = big_root(tmp_path)
    server = serve(root, "--index", str(tmp_path / "index"))
    with NoRangeProxy(server.url) as proxy:
        mount = mounter(proxy.url, "--streams", "4", env=RANGE_ENV)
        proxy.reset_counts()
        assert mount.path("references", "hst", BIG).read_bytes() == data
        # the first ranged GET got a 200 (ignored range) and was dropped; then one stream
        assert proxy.count("GET", BIG) == 2
    assert "does not serve byte ranges" in mount.log()
    assert os.getxattr(mount.path("references", "hst", BIG), "user.crds.cached") == b"yes"


@pytest.mark.parametrize("size,streams,count", [(100 << 20, 4, 4), (9 << 20, 4, 2),
                                                (64 << 20, 1, 1), (10, 4, 1)])
def test_split_covers_the_file_exactly(size, streams, count):
    from crds_fs.cache.ranges import split

    spans = split(size, streams)
    assert_cover(spans, size, count)


@pytest.mark.parametrize("size,streams,count", [(1 << 30, 4, 32), (40 << 20, 4, 10),
                                                (5 << 30, 4, 160), (9 << 20, 2, 3)])
def test_plan_pieces_cover_the_file_in_order(size, streams, count):
    assert_cover(plan(size, streams), size, count)


def assert_cover(spans, size, count):
    assert len(spans) == count
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
