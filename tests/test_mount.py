"""Real FUSE mounts of the demo observatory (`crds-fs mount`/`umount` as subprocesses),
read with ordinary tools; a FaultProxy between mount and server counts every request."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import Mounter, is_mounted, mounted, needs_fuse, pid_alive, wait_until

pytestmark = [pytest.mark.fuse, needs_fuse]

SMALL = "hst_acs_bpixtab_9301.fits"
BIG = "hst_acs_darkfile_9106.fits"


def refs(root: Path) -> Path:
    return root / "references" / "hst"


def run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                          **kwargs)


def test_unix_tools_read_references_by_plain_path(mounter: Mounter, demo_proxy, demo_root,
                                                  tmp_path: Path) -> None:
    mount = mounter(demo_proxy.url)
    served, mounted = refs(demo_root) / BIG, refs(mount.mountpoint) / BIG
    assert run("cmp", served, mounted).returncode == 0
    copy = tmp_path / "copy.fits"
    assert run("cp", mounted, copy).returncode == 0
    assert copy.read_bytes() == served.read_bytes()
    assert demo_proxy.count("GET", BIG) == 1
    small = refs(mount.mountpoint) / SMALL
    out = subprocess.run(["cat", str(small)], capture_output=True, timeout=60).stdout
    assert out == (refs(demo_root) / SMALL).read_bytes()
    digest = run("sha1sum", mounted).stdout.split()[0]
    assert digest == hashlib.sha1(served.read_bytes()).hexdigest()
    assert os.getxattr(mounted, "user.crds.sha1").decode() == digest
    assert demo_proxy.count("GET", BIG) == 1 and demo_proxy.count("GET", SMALL) == 1


def test_astropy_memmap_opens_references(mounter: Mounter, demo_proxy, demo_root) -> None:
    import numpy as np
    from astropy.io import fits

    mount = mounter(demo_proxy.url)
    with fits.open(refs(mount.mountpoint) / BIG, memmap=True) as mounted, \
            fits.open(refs(demo_root) / BIG, memmap=True) as served:
        assert len(mounted) == len(served)
        for ours, theirs in zip(mounted, served, strict=True):
            assert ours.header == theirs.header
            if theirs.data is not None:
                assert np.array_equal(ours.data, theirs.data)
    assert demo_proxy.count("GET", BIG) == 1


def test_listing_sizes_equal_catalog_without_any_get(mounter: Mounter, demo_proxy,
                                                     demo_root) -> None:
    mount = mounter(demo_proxy.url)
    catalog = {p.name: p.stat().st_size for p in refs(demo_root).iterdir()}
    lines = run("ls", "-l", refs(mount.mountpoint)).stdout.splitlines()[1:]
    listed = {line.split()[-1]: int(line.split()[4]) for line in lines}
    assert listed == catalog
    assert all(line.startswith("-r--r--r--") for line in lines)
    found = run("find", mount.mountpoint, "-type", "f", "-printf", "%P %s\n").stdout
    sizes = dict(line.rsplit(" ", 1) for line in found.splitlines())
    for name, size in catalog.items():
        assert int(sizes[f"references/hst/{name}"]) == size
    mappings = {p.name: p.stat().st_size for p in (demo_root / "mappings" / "hst").iterdir()}
    for name, size in mappings.items():
        assert int(sizes[f"mappings/hst/{name}"]) == size
    du = run("du", "-s", "-b", "--apparent-size", refs(mount.mountpoint)).stdout.split()[0]
    assert int(du) == sum(catalog.values())
    assert demo_proxy.count("GET") == 0
    assert mount.stats()["cache"]["cached_files"] == 0


def test_modes_and_times_are_stable_across_remounts(mounter: Mounter, demo_proxy) -> None:
    first = mounter(demo_proxy.url)
    path = refs(first.mountpoint) / SMALL
    before = path.stat()
    assert oct(before.st_mode & 0o7777) == "0o444"
    assert oct(first.mountpoint.joinpath("references").stat().st_mode & 0o7777) == "0o555"
    assert first.umount().returncode == 0
    second = mounter(demo_proxy.url, cache_dir=first.cache_dir, mountpoint=first.mountpoint)
    after = refs(second.mountpoint) / SMALL
    assert after.stat().st_mtime_ns == before.st_mtime_ns
    assert after.stat().st_size == before.st_size


def test_writes_are_erofs(mounter: Mounter, demo_proxy, tmp_path: Path) -> None:
    mount = mounter(demo_proxy.url)
    path = refs(mount.mountpoint) / SMALL
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError) as info:
            os.open(path, flags)
        assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.open(refs(mount.mountpoint) / "new.fits", os.O_WRONLY | os.O_CREAT, 0o644)
    assert info.value.errno == errno.EROFS
    for cmd in (["touch", path], ["touch", refs(mount.mountpoint) / "new.fits"],
                ["mkdir", refs(mount.mountpoint) / "dir"], ["mkdir", mount.path("newdir")],
                ["rm", "-f", path], ["mv", path, refs(mount.mountpoint) / "moved.fits"],
                ["chmod", "600", path], ["ln", "-s", SMALL, refs(mount.mountpoint) / "l"],
                ["truncate", "-s", "0", mount.path("config", "hst", "server_config")]):
        result = run(*cmd)
        assert result.returncode != 0, cmd
        assert "Read-only file system" in result.stderr, (cmd, result.stderr)
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.note", b"x")
    assert info.value.errno == errno.EROFS
    assert not os.access(path, os.W_OK) and os.access(path, os.R_OK)
    assert SMALL in os.listdir(refs(mount.mountpoint))
    assert path.stat().st_size > 0 and demo_proxy.count("GET") == 0


def test_xattrs(mounter: Mounter, demo_proxy, demo_root) -> None:
    mount = mounter(demo_proxy.url)
    path = refs(mount.mountpoint) / SMALL
    data = (refs(demo_root) / SMALL).read_bytes()
    assert sorted(os.listxattr(path)) == ["user.crds.cached", "user.crds.chunks",
                                          "user.crds.sha1", "user.crds.url"]
    assert os.getxattr(path, "user.crds.sha1").decode() == hashlib.sha1(data).hexdigest()
    assert os.getxattr(path, "user.crds.cached") == b"no"
    url = os.getxattr(path, "user.crds.url").decode()
    assert url == f"{demo_proxy.url}/unchecked_get/references/hst/{SMALL}"
    assert path.read_bytes() == data
    assert os.getxattr(path, "user.crds.cached") == b"yes"
    with pytest.raises(OSError) as info:
        os.getxattr(path, "user.nothing")
    assert info.value.errno == errno.ENODATA
    assert demo_proxy.count("GET", SMALL) == 1


def test_unknown_names_are_enoent_without_requests(mounter: Mounter, demo_proxy) -> None:
    mount = mounter(demo_proxy.url)
    demo_proxy.reset_counts()
    for path in (refs(mount.mountpoint) / "hst_acs_darkfile_0000.fits",
                 mount.path("mappings", "hst", "hst_0000.pmap"),
                 mount.path("references", "jwst"), mount.path("nothing"),
                 mount.path("config", "hst", "crds_db.sqlite3")):
        with pytest.raises(FileNotFoundError):
            path.stat()
        with pytest.raises(FileNotFoundError):
            path.open("rb")
    assert demo_proxy.count("GET") == 0 and demo_proxy.count("POST") == 0


def test_stats_and_config_files(demo_proxy, tmp_path: Path) -> None:
    import ast

    with mounted(tmp_path, demo_proxy.url, "--context", "hst_9000.pmap") as mount:
        stats = mount.stats()
        assert stats["mount"]["context"] == "hst_9000.pmap"
        assert stats["mount"]["online"] is True
        assert stats["mount"]["mountpoint"] == str(mount.mountpoint)
        info = ast.literal_eval(mount.path("config", "hst", "server_config").read_text())
        assert info["operational_context"] == "hst_9000.pmap"
        assert mount.path("config", "hst", "ref_cache_subdir_mode").read_text().strip() == "flat"
        pid = mount.pid
    assert not is_mounted(mount.mountpoint) and not pid_alive(pid)


def test_umount_waits_for_the_daemon(mounter: Mounter, demo_proxy) -> None:
    mount = mounter(demo_proxy.url)
    pid = mount.pid
    assert pid is not None and pid_alive(pid)
    result = mount.umount()
    assert result.returncode == 0, result.stderr
    assert f"daemon {pid} exited" in result.stdout
    assert not is_mounted(mount.mountpoint) and not pid_alive(pid)
    again = mount.umount()
    assert again.returncode != 0 and "not mounted" in again.stderr


def test_busy_mount_stays_unless_lazy(mounter: Mounter, demo_proxy) -> None:
    mount = mounter(demo_proxy.url)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              cwd=mount.path("references", "hst"), stdin=subprocess.PIPE)
    try:
        refused = mount.umount()
        assert refused.returncode == 1 and "busy" in refused.stderr
        assert is_mounted(mount.mountpoint)
        result = run(sys.executable, "-m", "crds_fs.cli", "umount", "--lazy", mount.mountpoint)
        assert result.returncode == 0, result.stderr
        assert "busy" in result.stderr and "lazily" in result.stderr
        assert not is_mounted(mount.mountpoint)
    finally:
        holder.communicate(b"", timeout=30)
    assert wait_until(lambda: not pid_alive(mount.pid), 20)


def test_sigterm_unmounts_cleanly(mounter: Mounter, demo_proxy) -> None:
    mount = mounter(demo_proxy.url)
    mount.kill(signal.SIGTERM)
    assert wait_until(lambda: not is_mounted(mount.mountpoint), 20)
    assert "unmounted" in mount.log()


def test_mount_failures_exit_nonzero_with_the_reason(mounter: Mounter, tmp_path: Path) -> None:
    missing = mounter("http://127.0.0.1:9", start=False, mountpoint=tmp_path / "absent" / "m")
    result = subprocess.run(missing.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "does not exist" in result.stderr
    dead = mounter("http://127.0.0.1:9", start=False, env={"CRDS_FS_RETRIES": "0"})
    dead.mountpoint.mkdir()
    result = dead.start(check=False).result
    assert result.returncode != 0
    assert "127.0.0.1:9" in result.stderr and "no catalog" in result.stderr.lower()
    assert not is_mounted(dead.mountpoint)


def test_offline_remount_serves_cached_files_only(mounter: Mounter, demo_proxy,
                                                  demo_root) -> None:
    first = mounter(demo_proxy.url)
    data = (refs(first.mountpoint) / SMALL).read_bytes()
    assert first.umount().returncode == 0
    demo_proxy.reset_counts()
    offline = mounter(demo_proxy.url, "--offline", cache_dir=first.cache_dir)
    assert offline.stats()["mount"]["online"] is False
    assert (refs(offline.mountpoint) / SMALL).read_bytes() == data
    other = refs(offline.mountpoint) / BIG
    assert other.stat().st_size == (refs(demo_root) / BIG).stat().st_size
    with pytest.raises(OSError) as info:
        other.read_bytes()
    assert info.value.errno == errno.EIO
    assert demo_proxy.count("GET") == 0 and demo_proxy.count("POST") == 0
    line = next(line for line in offline.log().splitlines() if BIG in line)
    assert "unreachable" in line or "offline" in line


def test_unreachable_server_at_mount_time_means_offline(mounter: Mounter, demo_proxy) -> None:
    first = mounter(demo_proxy.url)
    data = (refs(first.mountpoint) / SMALL).read_bytes()
    assert first.umount().returncode == 0
    demo_proxy.set_fault("refuse")
    second = mounter(demo_proxy.url, cache_dir=first.cache_dir, env={"CRDS_FS_RETRIES": "0"})
    assert second.stats()["mount"]["online"] is False
    assert "OFFLINE" in second.result.stdout
    assert (refs(second.mountpoint) / SMALL).read_bytes() == data
    with pytest.raises(OSError) as info:
        (refs(second.mountpoint) / BIG).read_bytes()
    assert info.value.errno == errno.EIO


def test_remount_finds_the_cache_as_it_was(mounter: Mounter, demo_proxy, demo_root) -> None:
    first = mounter(demo_proxy.url)
    names = [SMALL, "hst_cos_bpixtab_9901.fits", "hst_acs_flshfile_9401.fits"]
    for name in names:
        (refs(first.mountpoint) / name).read_bytes()
    assert first.umount().returncode == 0
    demo_proxy.reset_counts()
    second = mounter(demo_proxy.url, cache_dir=first.cache_dir)
    for name in names:
        path = refs(second.mountpoint) / name
        assert os.getxattr(path, "user.crds.cached") == b"yes"
        assert path.read_bytes() == (refs(demo_root) / name).read_bytes()
    assert demo_proxy.count("GET") == 0
    assert second.stats()["cache"]["cached_files"] == len(names)
