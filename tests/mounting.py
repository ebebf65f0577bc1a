"""Test helper: real `crds-fs mount` daemons on temporary mount points, always cleaned up.

`MountProcess.start()` runs the real CLI (`crds-fs mount` without --foreground, so the
daemonizing path is what gets tested) and learns the daemon's pid from `.crds-fs/stats`.
`cleanup()` never raises and leaves nothing behind: `fusermount3 -u`, then a lazy unmount
if that fails, then SIGTERM/SIGKILL of the daemon.  The `mounter` fixture cleans up every
mount it made at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")


def fuse_available() -> bool:
    """True when real FUSE mounts can be made here (/dev/fuse usable, fusermount3 present)."""
    return FUSERMOUNT is not None and os.access("/dev/fuse", os.R_OK | os.W_OK)


needs_fuse = pytest.mark.skipif(not fuse_available(),
                                reason="needs /dev/fuse and fusermount3 (real mounts)")


def is_mounted(path: Path) -> bool:
    """True when *path* is a mount point (per /proc/self/mountinfo)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as lines:
        return any(len(f := line.split()) > 4 and f[4] == target for line in lines)


def fusermount_u(path: Path, *, lazy: bool = False) -> bool:
    """`fusermount3 -u [-z] path`; True when it succeeded (False if not mounted etc.)."""
    if FUSERMOUNT is None:
        return False
    args = [FUSERMOUNT, "-u", *(["-z"] if lazy else []), str(path)]
    return subprocess.run(args, capture_output=True, timeout=30).returncode == 0


def pid_alive(pid: int) -> bool:
    """True for a running process (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll *predicate* until true or *timeout*; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class MountProcess:
    """One `crds-fs mount` daemon (the real CLI) on *mountpoint*."""

    def __init__(self, mountpoint: Path, server_url: str, cache_dir: Path, *extra: str,
                 log_path: Path, env: dict[str, str] | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.server_url = server_url
        self.cache_dir = Path(cache_dir)
        self.extra = extra
        self.log_path = Path(log_path)
        self.env = env or {}
        self.pid: int | None = None
        self.result: subprocess.CompletedProcess | None = None

    def command(self, *more: str) -> list[str]:
        return [sys.executable, "-m", "crds_fs.cli", "mount", str(self.mountpoint),
                "--server", self.server_url, "--cache", str(self.cache_dir),
                "--log-file", str(self.log_path), *self.extra, *more]

    def start(self, *more: str, check: bool = True, timeout: float = 90.0) -> MountProcess:
        """Run `crds-fs mount` (daemon mode); with *check*, fail the test if it fails."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        # only what the test says: crds (imported by other tests) sets CRDS_* variables
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CRDS_") or k == "CRDS_FS_TESTING"}
        env.update(self.env)
        self.result = subprocess.run(self.command(*more), capture_output=True, text=True,
                                     env=env, timeout=timeout)
        if self.result.returncode == 0:
            self.pid = self.stats()["mount"]["pid"]
        elif check:
            self.cleanup()
            raise AssertionError(
                f"crds-fs mount failed ({self.result.returncode}):\n{self.result.stdout}"
                f"\n{self.result.stderr}\nlog:\n{self.log()}")
        return self

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def stats(self) -> dict[str, Any]:
        return json.loads(self.path(".crds-fs", "stats").read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def umount(self) -> subprocess.CompletedProcess:
        """The real `crds-fs umount` (asserting nothing; see cleanup for the safety net)."""
        return subprocess.run([sys.executable, "-m", "crds_fs.cli", "umount",
                               str(self.mountpoint)], capture_output=True, text=True,
                              timeout=60)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the daemon (SIGKILL: a crash) and wait until it is gone."""
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        wait_until(lambda: not pid_alive(self.pid), 20)

    def cleanup(self) -> None:
        """Unmount and stop the daemon, whatever state they are in; never raises."""
        try:
            if is_mounted(self.mountpoint) and not fusermount_u(self.mountpoint):
                fusermount_u(self.mountpoint, lazy=True)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass
        pid = self.pid
        if pid is not None and not wait_until(lambda: not pid_alive(pid), 10):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if wait_until(lambda: not pid_alive(pid), 5):
                    break
        with contextlib.suppress(Exception):
            if is_mounted(self.mountpoint):
                fusermount_u(self.mountpoint, lazy=True)


class Mounter:
    """Factory of MountProcess objects under one tmp dir; cleans all of them up."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.mounts: list[MountProcess] = []
        self._count = 0

    def __call__(self, server_url: str, *extra: str, cache_dir: Path | None = None,
                 start: bool = True, env: dict[str, str] | None = None,
                 mountpoint: Path | None = None) -> MountProcess:
        self._count += 1
        mount = MountProcess(
            mountpoint or self.base / f"mnt{self._count}", server_url,
            cache_dir or self.base / f"cache{self._count}", *extra,
            log_path=self.base / f"mount{self._count}.log", env=env,
        )
        self.mounts.append(mount)
        if start:
            mount.start()
        return mount

    def cleanup(self) -> None:
        for mount in reversed(self.mounts):
            mount.cleanup()


@contextlib.contextmanager
def mounted(base: Path, server_url: str, *extra: str, **kwargs: Any) -> Iterator[MountProcess]:
    """Context manager: a started mount, always unmounted at exit."""
    mounter = Mounter(base)
    try:
        yield mounter(server_url, *extra, **kwargs)
    finally:
        mounter.cleanup()


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Factory fixture: `mounter(server_url, *cli_options, cache_dir=..)` -> MountProcess."""
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3 (real mounts)")
    factory = Mounter(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


# --- a served demo observatory behind a FaultProxy (shared by the mount test modules) -------


@pytest.fixture(scope="module")
def demo_server(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`crds-fs serve` of the demo observatory, one per test module."""
    from tests.helpers import ServerProcess

    logs = tmp_path_factory.mktemp("demo-serve")
    server = ServerProcess(demo_root, "--index", str(logs / "index"), log_dir=logs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def demo_proxy_module(demo_server: Any) -> Iterator[Any]:
    from tests.faultproxy import FaultProxy

    with FaultProxy(demo_server.url) as proxy:
        yield proxy


@pytest.fixture
def demo_proxy(demo_proxy_module: Any) -> Any:
    """The module's FaultProxy in front of the demo server, with no fault and zero counts."""
    demo_proxy_module.clear_fault()
    demo_proxy_module.reset_counts()
    yield demo_proxy_module
    demo_proxy_module.clear_fault()
