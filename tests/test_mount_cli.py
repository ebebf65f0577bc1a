"""`crds-fs mount`/`umount` behave like mount tools: real daemons, real messages.

Each refusal is checked by its message (what failed, why, what to do), and that nothing
was mounted.  The background (daemon) mount is the path a new user takes: its command line
must carry only the options the user gave (click's parameter source), so it comes up
online and read-only.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import Mounter, is_mounted, needs_fuse, pid_alive, wait_until

pytestmark = [pytest.mark.fuse, needs_fuse]

CLI = [sys.executable, "-m", "crds_fs.cli"]


def crds_fs(*args: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def proc_mounts_options(mountpoint: Path) -> list[str]:
    """The mount options of *mountpoint* as /proc/mounts shows them."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mountpoint):
            return fields[3].split(",")
    raise AssertionError(f"{mountpoint} not in /proc/mounts")


def daemon_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_background_mount_is_online_read_only_and_forwards_only_given_options(
        mounter: Mounter, demo_server) -> None:
    mount = mounter(demo_server.url, "-v")
    assert mount.result is not None and "online" in mount.result.stdout
    stats = mount.stats()
    assert stats["mount"]["online"] is True
    assert stats["mount"]["context"] == "hst_9001.pmap"
    args = daemon_cmdline(mount.pid)
    # only what was given (and the settings made explicit): no flag at its default
    assert "--offline" not in args and "--nonempty" not in args
    assert "--engine" not in args and "--poll" not in args
    assert args.count("-v") == 1 and args.index("-v") < args.index("mount")
    assert "ro" in proc_mounts_options(mount.mountpoint)
    with pytest.raises(OSError) as info:  # registration needs -o rw (see the next test)
        os.symlink(demo_server.root / "datasets" / "j9demo01q_raw.fits",
                   mount.path("bestrefs", "mine"))
    assert info.value.errno == errno.EROFS
    # and it serves: a reference is fetched through it
    data = mount.path("references", "hst", "hst_acs_bpixtab_9301.fits").read_bytes()
    assert data == (Path(demo_server.root) / "references" / "hst" /
                    "hst_acs_bpixtab_9301.fits").read_bytes()
    assert mount.stats()["cache"]["downloads_done"] == 1


def test_rw_option_allows_registering_datasets(mounter: Mounter, demo_server) -> None:
    mount = mounter(demo_server.url, "-o", "rw")
    options = proc_mounts_options(mount.mountpoint)
    assert "rw" in options and "ro" not in options
    os.symlink(demo_server.root / "datasets" / "j9demo01q_raw.fits",
               mount.path("bestrefs", "mine"))
    assert "bestrefs.json" in os.listdir(mount.path("bestrefs", "mine"))
    with pytest.raises(OSError) as info:  # everything else stays read-only
        os.open(mount.path("references", "hst", "new.fits"), os.O_WRONLY | os.O_CREAT)
    assert info.value.errno == errno.EROFS


def test_non_empty_mount_point_is_refused_with_the_override(mounter: Mounter,
                                                            demo_server) -> None:
    mount = mounter(demo_server.url, start=False)
    mount.mountpoint.mkdir()
    (mount.mountpoint / "notes.txt").write_text("mine\n")
    result = mount.start(check=False).result
    assert result.returncode != 0
    assert "is not empty (notes.txt)" in result.stderr
    assert "--nonempty" in result.stderr and "-o nonempty" in result.stderr
    assert not is_mounted(mount.mountpoint)
    assert (mount.mountpoint / "notes.txt").read_text() == "mine\n"
    # -o nonempty is ours (libfuse 3 has no such option): it mounts over the folder
    mount.start("-o", "nonempty")
    assert is_mounted(mount.mountpoint)
    assert "notes.txt" not in os.listdir(mount.mountpoint)
    assert {"mappings", "references"} <= set(os.listdir(mount.mountpoint))
    assert mount.umount().returncode == 0
    assert (mount.mountpoint / "notes.txt").read_text() == "mine\n"


def test_mount_on_a_file_says_it_is_not_a_directory(mounter: Mounter, demo_server,
                                                    tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    mount = mounter(demo_server.url, start=False, mountpoint=target)
    result = subprocess.run(mount.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"mount point {target} is not a directory" in result.stderr
    assert target.read_text() == "x"


def test_mounting_twice_is_refused(mounter: Mounter, demo_server) -> None:
    first = mounter(demo_server.url)
    again = mounter(demo_server.url, start=False, mountpoint=first.mountpoint)
    result = subprocess.run(again.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{first.mountpoint} is already a mount point" in result.stderr
    assert f"crds-fs umount {first.mountpoint}" in result.stderr
    assert first.stats()["mount"]["pid"] == first.pid and pid_alive(first.pid)


def test_server_url_without_scheme_is_explained(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = crds_fs("mount", mountpoint, "--server", "127.0.0.1:8765", "--cache",
                     tmp_path / "cache", timeout=60)
    assert result.returncode == 1
    assert "'127.0.0.1:8765'" in result.stderr and "http://127.0.0.1:8765" in result.stderr
    assert "Traceback" not in result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env["CRDS_SERVER_URL"] = "localhost:1"
    result = crds_fs("mount", mountpoint, "--cache", tmp_path / "cache", env=env, timeout=60)
    assert result.returncode == 1
    assert "CRDS_SERVER_URL" in result.stderr and "http://localhost:1" in result.stderr
    assert not is_mounted(mountpoint)


def test_busy_umount_names_the_holders_and_lazy_detaches(mounter: Mounter,
                                                         demo_server) -> None:
    mount = mounter(demo_server.url)
    inside = mount.path("references", "hst")
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              cwd=inside, stdin=subprocess.PIPE)
    try:
        result = mount.umount()
        assert result.returncode == 1
        assert f"{mount.mountpoint} is busy" in result.stderr
        assert f"pid {holder.pid} (python" in result.stderr
        assert "cwd references/hst" in result.stderr
        assert f"crds-fs umount --lazy {mount.mountpoint}" in result.stderr
        assert is_mounted(mount.mountpoint) and pid_alive(mount.pid)
        lazy = crds_fs("umount", "--lazy", mount.mountpoint, timeout=60)
        assert lazy.returncode == 0, lazy.stderr
        assert "lazily" in lazy.stderr + lazy.stdout
        assert not is_mounted(mount.mountpoint)
    finally:
        holder.communicate(b"", timeout=30)
    assert wait_until(lambda: not pid_alive(mount.pid), 20)


def test_verbose_and_log_file_after_the_subcommand(mounter: Mounter, demo_server,
                                                   tmp_path: Path) -> None:
    # MountProcess puts --log-file after `mount`; -vv there too gives DEBUG lines
    mount = mounter(demo_server.url, "-vv")
    mount.path("references", "hst", "hst_acs_bpixtab_9301.fits").read_bytes()
    log = mount.log()
    assert " DEBUG " in log and "downloaded hst_acs_bpixtab_9301.fits" in log
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ crds-fs\[\d+\] ", log, re.M)
    umount = crds_fs("umount", "-v", mount.mountpoint, timeout=60)
    assert umount.returncode == 0, umount.stderr
    # before the subcommand works the same
    before = tmp_path / "before.log"
    second = mounter(demo_server.url, start=False, cache_dir=mount.cache_dir)
    second.mountpoint.mkdir()
    result = crds_fs("--log-file", before, "mount", second.mountpoint, "--server",
                     demo_server.url, "--cache", second.cache_dir, timeout=90)
    assert result.returncode == 0, result.stderr
    second.pid = second.stats()["mount"]["pid"]
    assert f"log {before}" in result.stdout and "mounted" in before.read_text()


def test_serve_log_lines_carry_timestamps(demo_server) -> None:
    import requests

    body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
    assert requests.post(demo_server.url + "/json/", json=body, timeout=10).ok
    assert wait_until(lambda: "get_server_info" in demo_server.log(), 10)
    lines = [line for line in demo_server.log().splitlines() if " crds_fs." in line]
    assert lines
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} crds-fs\[\d+\] (INFO|WARNING) ")
    assert all(stamp.match(line) for line in lines), lines
