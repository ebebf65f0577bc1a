"""The cache's promises seen through a real mount (issue 9 defects 6, 7, 11): the size
limit at startup and on insert, files open through the mount never evicted, a file larger
than the limit kept only while open, a full disk reported as such, damaged cached files
detected and fetched again, `user.crds.verify`.

Real `crds-fs serve` of the demo observatory behind the FaultProxy, real mounts; full disks
are real tmpfs mounts (needs root: skipped otherwise).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from tests.mounting import Mounter, needs_fuse, wait_until
from tests.test_cache_limits import _corrupt, tmpfs  # noqa: F401 - fixture

pytestmark = [pytest.mark.fuse, needs_fuse]

SMALL = ["hst_acs_bpixtab_9301.fits", "hst_acs_bpixtab_9302.fits", "hst_acs_bpixtab_9303.fits",
         "hst_acs_bpixtab_9304.fits", "hst_cos_bpixtab_9901.fits"]  # 8640 bytes each
LARGE = "hst_acs_darkfile_9106.fits"  # 12 MB


def refs(root: Path) -> Path:
    return root / "references" / "hst"


def reference_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in refs(cache_dir).iterdir())


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_cache_over_the_limit_is_trimmed_when_mounted(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    first = mounter(demo_proxy.url)
    for name in SMALL:
        (refs(first.mountpoint) / name).read_bytes()
    first.cleanup()
    assert reference_bytes(first.cache_dir) == 5 * 8640
    limit = 3 * 8640
    second = mounter(demo_proxy.url, "--cache-max-size", str(limit), cache_dir=first.cache_dir)
    # nothing read yet: the mount trimmed the cache to 90% of the limit when it started
    assert reference_bytes(second.cache_dir) <= 0.9 * limit
    assert second.stats()["cache"]["max_bytes"] == limit
    kept = sorted(p.name for p in refs(second.cache_dir).iterdir())
    assert kept == SMALL[-2:]  # the most recently used survive


def test_files_open_through_the_mount_are_never_evicted(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    limit = 3 * 8640 + 1000
    mount = mounter(demo_proxy.url, env={"CRDS_FS_CACHE_MAX_SIZE": str(limit)})
    held = refs(mount.mountpoint) / SMALL[0]
    with open(held, "rb") as handle:  # open first: the least recently used from now on
        for name in SMALL[1:]:
            assert (refs(mount.mountpoint) / name).read_bytes() == \
                (refs(demo_root) / name).read_bytes()
        assert mount.stats()["cache"]["evictions"] >= 1
        assert (refs(mount.cache_dir) / SMALL[0]).exists()
        assert reference_bytes(mount.cache_dir) <= limit
        assert handle.read() == (refs(demo_root) / SMALL[0]).read_bytes()
    # larger than the whole limit: served, kept only while open
    large = refs(mount.mountpoint) / LARGE
    with open(large, "rb") as handle:
        assert hashlib.sha1(handle.read()).hexdigest() == sha1(refs(demo_root) / LARGE)
        assert (refs(mount.cache_dir) / LARGE).exists()
    # released: it goes at once (the kernel sends RELEASE just after close returns)
    assert wait_until(lambda: not (refs(mount.cache_dir) / LARGE).exists(), 10)
    assert reference_bytes(mount.cache_dir) <= limit
    assert os.getxattr(large, "user.crds.cached") == b"no"


def test_full_disk_is_reported_as_such(
        mounter: Mounter, demo_proxy, demo_root: Path, tmp_path: Path, tmpfs) -> None:  # noqa: F811
    disk = tmpfs(tmp_path / "disk", "2m")
    mount = mounter(demo_proxy.url, cache_dir=disk / "cache",
                    env={"CRDS_FS_CACHE_MIN_FREE": "0"})
    with pytest.raises(OSError) as info:
        (refs(mount.mountpoint) / LARGE).read_bytes()
    assert info.value.errno == errno.ENOSPC
    lines = [line for line in mount.log().splitlines() if "ERROR" in line]
    assert lines and all(LARGE in line for line in lines), lines
    assert any(str(disk / "cache") in line and "disk is full" in line and "ENOSPC" in line
               for line in lines), lines
    assert "bug" not in mount.log()
    # the mount still works for what fits
    assert (refs(mount.mountpoint) / SMALL[0]).read_bytes() == \
        (refs(demo_root) / SMALL[0]).read_bytes()
    # with the default free-space floor the same file is refused before any byte is written
    mount.cleanup()
    floor = mounter(demo_proxy.url, cache_dir=disk / "cache")
    demo_proxy.reset_counts()
    with pytest.raises(OSError) as info:
        (refs(floor.mountpoint) / LARGE).read_bytes()
    assert info.value.errno == errno.ENOSPC
    assert demo_proxy.count("GET", LARGE) == 0
    assert "CRDS_FS_CACHE_MIN_FREE" in floor.log()


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_damaged_cached_file_is_detected_and_fetched_again(
        damage: str, mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    name = SMALL[1]
    first = mounter(demo_proxy.url)
    (refs(first.mountpoint) / name).read_bytes()
    first.cleanup()  # a fresh mount: nothing of the file in the kernel's page cache
    cached = refs(first.cache_dir) / name
    _corrupt(cached, truncate=damage == "truncated")
    demo_proxy.reset_counts()
    mount = mounter(demo_proxy.url, cache_dir=first.cache_dir)
    path = refs(mount.mountpoint) / name
    assert os.getxattr(path, "user.crds.cached") == b"no"  # never "yes" for a bad copy
    assert path.read_bytes() == (refs(demo_root) / name).read_bytes()
    assert demo_proxy.count("GET", name) == 1
    assert sha1(cached) == sha1(refs(demo_root) / name)
    assert os.getxattr(path, "user.crds.cached") == b"yes"
    assert "fetching it again" in mount.log()


def test_verify_xattr_finds_bit_rot_and_repairs_it(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    name = SMALL[2]
    good = sha1(refs(demo_root) / name)
    mount = mounter(demo_proxy.url)
    path = refs(mount.mountpoint) / name
    assert os.getxattr(path, "user.crds.verify") == b"not cached"
    path.read_bytes()
    assert os.getxattr(path, "user.crds.verify") == f"ok {good}".encode()
    assert "user.crds.verify" not in os.listxattr(path)  # on demand only
    _corrupt(refs(mount.cache_dir) / name, keep_mtime=True)  # same size and times
    demo_proxy.reset_counts()
    assert os.getxattr(path, "user.crds.verify") == f"repaired {good}".encode()
    assert demo_proxy.count("GET", name) == 1
    assert sha1(refs(mount.cache_dir) / name) == good
    assert os.getxattr(path, "user.crds.cached") == b"yes"
