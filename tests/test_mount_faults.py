"""Failures between a real mount and the server (FaultProxy), a crashed daemon, and many
readers of one uncached file at once."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.mounting import (
    Mounter,
    fusermount_u,
    is_mounted,
    needs_fuse,
    pid_alive,
    wait_until,
)

pytestmark = [pytest.mark.fuse, needs_fuse]

#: a short read timeout and no retries make every fault fail fast
FAST_FAIL = ("--read-timeout", "1.5", "--retries", "0")

#: fault kind -> (FaultProxy options, words of which one must be in the log line)
FAULTS = {
    "refuse": ({}, ("connection", "unreachable", "reset", "refused", "aborted")),
    "500": ({}, ("500",)),
    "slow": ({"delay": 8.0}, ("timed out", "timeout")),
    "reset": ({}, ("reset", "broke off", "connection", "incomplete", "size")),
    "truncate": ({}, ("broke off", "size", "incomplete", "truncated", "short")),
    "corrupt": ({}, ("sha1",)),
}
#: one distinct reference per fault, so a failure can never be masked by an earlier success
VICTIMS = dict(zip(FAULTS, [
    "hst_acs_darkfile_9101.fits", "hst_acs_darkfile_9102.fits", "hst_acs_darkfile_9103.fits",
    "hst_acs_bpixtab_9302.fits", "hst_acs_bpixtab_9303.fits", "hst_wfc3_bpixtab_9701.fits",
], strict=True))


def refs(root: Path) -> Path:
    return root / "references" / "hst"


@pytest.mark.parametrize("kind", list(FAULTS))
def test_download_fault_is_eio_logged_and_retried_later(
        kind: str, mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    options, reasons = FAULTS[kind]
    name = VICTIMS[kind]
    mount = mounter(demo_proxy.url, *FAST_FAIL)
    path = refs(mount.mountpoint) / name
    demo_proxy.set_fault(kind, path_contains=name, **options)
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO
    lines = [line for line in mount.log().splitlines() if name in line and "ERROR" in line]
    assert len(lines) == 1, mount.log()  # one clear line per failure (defect 12)
    assert lines[0].count("download of") == 1 and demo_proxy.url in lines[0], lines[0]
    assert any(word in lines[-1].lower() for word in reasons), lines[-1]
    # nothing corrupt or partial is presented as cached
    assert os.getxattr(path, "user.crds.cached") == b"no"
    assert not (refs(mount.cache_dir) / name).exists()
    demo_proxy.clear_fault()
    assert path.read_bytes() == (refs(demo_root) / name).read_bytes()
    assert os.getxattr(path, "user.crds.cached") == b"yes"


def test_bytes_corrupted_once_are_fetched_again(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    """Defect 12: a sha1 mismatch is retried while retries are left."""
    name = "hst_wfc3_bpixtab_9702.fits"
    mount = mounter(demo_proxy.url, "--retries", "1")
    demo_proxy.set_fault("corrupt", path_contains=name, times=1)
    path = refs(mount.mountpoint) / name
    assert path.read_bytes() == (refs(demo_root) / name).read_bytes()
    assert demo_proxy.count("GET", name) == 2
    assert os.getxattr(path, "user.crds.cached") == b"yes"
    assert "ERROR" not in mount.log()


def test_daemon_killed_mid_download_remounts_with_a_consistent_cache(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    kept = ["hst_acs_bpixtab_9301.fits", "hst_cos_bpixtab_9901.fits"]
    victim = "hst_acs_pfltfile_9201.fits"
    first = mounter(demo_proxy.url)
    for name in kept:
        assert (refs(first.mountpoint) / name).read_bytes() == (refs(demo_root) / name).read_bytes()
    demo_proxy.set_fault("slow_body", path_contains=victim)  # half the body, then stall
    reader = subprocess.Popen(["cat", str(refs(first.mountpoint) / victim)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: demo_proxy.count("GET", victim) == 1, 30)
        # a stalled download blocks only its own readers: the rest of the mount answers
        for name in kept:
            path = refs(first.mountpoint) / name
            assert path.read_bytes() == (refs(demo_root) / name).read_bytes()
        assert len(os.listdir(refs(first.mountpoint))) > len(kept)
        assert reader.poll() is None  # still waiting for the victim
        first.kill(signal.SIGKILL)
        assert reader.wait(30) != 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(10)
    assert not pid_alive(first.pid)
    fusermount_u(first.mountpoint)  # the dead mount (auto_unmount may have done it already)
    assert not is_mounted(first.mountpoint)
    assert not (refs(first.cache_dir) / victim).exists()
    demo_proxy.clear_fault()
    demo_proxy.reset_counts()
    second = mounter(demo_proxy.url, cache_dir=first.cache_dir, mountpoint=first.mountpoint)
    for name in kept:
        path = refs(second.mountpoint) / name
        assert os.getxattr(path, "user.crds.cached") == b"yes"
        assert path.read_bytes() == (refs(demo_root) / name).read_bytes()
    assert demo_proxy.count("GET") == 0
    path = refs(second.mountpoint) / victim
    assert os.getxattr(path, "user.crds.cached") == b"no"
    expected = hashlib.sha1((refs(demo_root) / victim).read_bytes()).hexdigest()
    assert hashlib.sha1(path.read_bytes()).hexdigest() == expected
    assert demo_proxy.count("GET", victim) == 1
    assert second.stats()["cache"]["cached_files"] == len(kept) + 1


READER = """
import hashlib, sys
with open(sys.argv[1], "rb") as f:
    print(hashlib.sha1(f.read()).hexdigest())
"""


def test_many_readers_of_one_uncached_file_share_one_download(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    name = "hst_acs_darkfile_9106.fits"  # 12 MB
    expected = hashlib.sha1((refs(demo_root) / name).read_bytes()).hexdigest()
    mount = mounter(demo_proxy.url)
    path = refs(mount.mountpoint) / name
    # hold the response back a little so that every reader arrives while it is in flight
    demo_proxy.set_fault("slow", path_contains=name, delay=1.5)
    barrier = threading.Barrier(32 + 1)
    digests: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def read() -> None:
        try:
            barrier.wait(30)
            with open(path, "rb") as handle:
                digest = hashlib.sha1(handle.read()).hexdigest()
            with lock:
                digests.append(digest)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(32)]
    for thread in threads:
        thread.start()
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    barrier.wait(30)
    for thread in threads:
        thread.join(60)
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert not errors, errors
    assert digests == [expected] * 32
    assert outputs == [expected] * 4
    assert demo_proxy.count("GET", name) == 1


# --- defect 8: a reader stuck in open() of a stalled download ------------------------------

STALLED = "hst_acs_pfltfile_9202.fits"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_reader_killed_in_open_of_a_stalled_download_exits_at_once(
        sig: int, mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    # long socket timeouts: only the FUSE interrupt can free the reader quickly
    mount = mounter(demo_proxy.url, "--read-timeout", "60", "--retries", "3")
    demo_proxy.set_fault("slow_body", path_contains=STALLED)  # half the body, then nothing
    reader = subprocess.Popen(["cat", str(refs(mount.mountpoint) / STALLED)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: demo_proxy.count("GET", STALLED) == 1, 30)
        time.sleep(0.5)
        assert reader.poll() is None  # stuck in open(), as the download is
        killed = time.monotonic()
        os.kill(reader.pid, sig)
        reader.wait(15)  # not 60 s x 4 attempts
        assert time.monotonic() - killed < 10
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(10)
    assert wait_until(lambda: "interrupted" in mount.log(), 10), mount.log()
    # the mount answers other paths meanwhile
    name = "hst_acs_bpixtab_9301.fits"
    assert (refs(mount.mountpoint) / name).read_bytes() == (refs(demo_root) / name).read_bytes()


def test_open_of_a_stalled_download_ends_at_the_open_deadline(
        mounter: Mounter, demo_proxy, demo_root: Path) -> None:
    mount = mounter(demo_proxy.url, "--read-timeout", "8", "--retries", "3",
                    env={"CRDS_FS_OPEN_DEADLINE": "2"})
    demo_proxy.set_fault("slow_body", path_contains=STALLED, times=1)
    path = refs(mount.mountpoint) / STALLED
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert time.monotonic() - started < 7  # the deadline, before any socket timeout
    assert info.value.errno == errno.ETIMEDOUT
    lines = [line for line in mount.log().splitlines() if "ERROR" in line and STALLED in line]
    assert lines and "deadline" in lines[-1] and "CRDS_FS_OPEN_DEADLINE" in lines[-1], lines
    # the download went on: once the stall times out it resumes, and a later open gets it
    assert wait_until(lambda: os.getxattr(path, "user.crds.cached") == b"yes", 60)
    assert path.read_bytes() == (refs(demo_root) / STALLED).read_bytes()
