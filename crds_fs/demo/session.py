"""Run the demo: `crds-fs serve` over a demo root, optionally a mount of it, and a clean stop.

Both children are separate processes (``python -m crds_fs.cli ...``), exactly what a user
would run by hand, so the demo exercises the real commands.  They are started in their own
sessions so that a Ctrl-C in the terminal reaches only the demo, which then stops them in
the right order: unmount first (while the server still answers), then the server.  On Linux
they also get SIGTERM if the demo process dies without cleaning up, so no mount or server is
left behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from ..errors import DemoError

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DemoSession:
    """A served (and possibly mounted) demo root; use as a context manager or call `stop`.

    *workdir* holds the logs, the server's index and the mount's cache; when not given, a
    temporary folder is created.  `stop` removes it when *remove_workdir* is true (the
    default for a temporary folder).
    """

    def __init__(self, root: Path, *, port: int | None = None, workdir: Path | None = None,
                 remove_workdir: bool | None = None, observatory: str = "hst",
                 python: str = sys.executable) -> None:
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.observatory = observatory
        self.python = python
        self.remove_workdir = workdir is None if remove_workdir is None else remove_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="crds-fs-demo-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server: subprocess.Popen | None = None
        self.mounter: subprocess.Popen | None = None
        self.mountpoint: Path | None = None
        self.umount_command = True

    # --- locations -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @property
    def server_log(self) -> Path:
        return self.workdir / "serve.log"

    @property
    def mount_log(self) -> Path:
        return self.workdir / "mount.log"

    # --- starting ----------------------------------------------------------------------------

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        # Every index the children keep goes to the work folder, none to ~/.cache.
        env = {**os.environ, "CRDS_FS_DATASETS_INDEX": str(self.workdir / "datasets-index")}
        with open(log, "ab") as out:
            return subprocess.Popen(
                [self.python, "-m", "crds_fs.cli", *args], env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                # prctl in a pre-exec hook is only safe while this process has one thread
                preexec_fn=_die_with_parent if threading.active_count() == 1 else None,
            )

    def start_server(self, *, timeout: float = 60.0) -> str:
        """Start `crds-fs serve` on 127.0.0.1 and wait until it answers; returns its URL."""
        args = ["serve", str(self.root), "--host", "127.0.0.1", "--port", str(self.port),
                "--index", str(self.workdir / "serve-index")]
        datasets = self.root / "datasets"
        if datasets.is_dir():
            args += ["--datasets", str(datasets)]
        self.server = self._spawn(args, self.server_log)
        deadline = time.monotonic() + timeout
        with requests.Session() as http:
            http.trust_env = False  # loopback: never through a proxy from the environment
            while time.monotonic() < deadline:
                if self.server.poll() is not None:
                    raise DemoError(f"crds-fs serve {self.root} exited with status "
                                    f"{self.server.returncode}:\n{_tail(self.server_log)}")
                if self._answers(http):
                    return self.url
                time.sleep(0.1)
        raise DemoError(f"crds-fs serve did not answer on {self.url} within {timeout:.0f}s; "
                        f"see {self.server_log}:\n{_tail(self.server_log)}")

    def _answers(self, http: requests.Session) -> bool:
        body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
        try:
            reply = http.post(self.url + "/json/", json=body, timeout=2)
            return reply.ok and "result" in reply.json()
        except (requests.RequestException, ValueError):
            return False

    def mount(self, mountpoint: Path, *, timeout: float = 60.0) -> None:
        """Mount the served demo at *mountpoint* with `crds-fs mount --foreground`."""
        mountpoint = Path(mountpoint).resolve()
        mountpoint.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(mountpoint):
            raise DemoError(f"{mountpoint} is already a mount point; unmount it first "
                            f"(fusermount3 -u {mountpoint}) or choose another folder")
        if any(mountpoint.iterdir()):
            raise DemoError(f"mount point {mountpoint} is not empty; choose an empty folder")
        self.mountpoint = mountpoint
        args = ["mount", str(mountpoint), "--server", self.url, "--cache", str(self.cache_dir),
                "--observatory", self.observatory, "--foreground"]
        datasets = self.root / "datasets"
        if datasets.is_dir():  # bestrefs/ lists the demo datasets
            args += ["--datasets", str(datasets)]
        self.mounter = self._spawn(args, self.mount_log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mounter.poll() is not None:
                raise DemoError(f"crds-fs mount {mountpoint} exited with status "
                                f"{self.mounter.returncode}:\n{_tail(self.mount_log)}")
            if os.path.ismount(mountpoint) and (mountpoint / "mappings").exists():
                return
            time.sleep(0.1)
        raise DemoError(f"{mountpoint} did not show mappings/ within {timeout:.0f}s; "
                        f"see {self.mount_log}:\n{_tail(self.mount_log)}")

    def problem(self) -> str | None:
        """Why the demo is no longer running (a child exited), or None while it is fine."""
        for name, proc, log in (("server", self.server, self.server_log),
                                ("mount", self.mounter, self.mount_log)):
            if proc is not None and proc.poll() is not None:
                return f"the {name} process exited with status {proc.returncode}:\n{_tail(log)}"
        return None

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Unmount, stop the server, remove temporary folders; returns problems met (if any).

        Safe to call more than once and after partial starts.
        """
        problems: list[str] = []
        if self.mountpoint is not None:
            problems += self._unmount(self.mountpoint)
        if self.mounter is not None:
            problems += _terminate(self.mounter, "crds-fs mount")
            self.mounter = None
        if self.server is not None:
            problems += _terminate(self.server, "crds-fs serve")
            self.server = None
        if self.remove_workdir and not (self.mountpoint and os.path.ismount(self.mountpoint)):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.mountpoint = None
        return problems

    def _unmount(self, mountpoint: Path) -> list[str]:
        """Unmount politely, then harder; the daemon exits by itself once unmounted."""
        attempts: list[list[str]] = []
        if self.umount_command:
            attempts.append([self.python, "-m", "crds_fs.cli", "umount", str(mountpoint)])
        attempts.append(["fusermount3", "-u", str(mountpoint)])
        for command in attempts:
            if not os.path.ismount(mountpoint):
                return []
            try:
                subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired):
                continue
        if os.path.ismount(mountpoint) and self.mounter and self.mounter.poll() is None:
            self.mounter.send_signal(signal.SIGTERM)  # libfuse unmounts on SIGTERM
            _wait(self.mounter, 10)
        if os.path.ismount(mountpoint):  # last resort: detach lazily, busy or not
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                           timeout=30, check=False)
        if os.path.ismount(mountpoint):
            return [f"{mountpoint} is still mounted; run: fusermount3 -u -z {mountpoint}"]
        return []

    def __enter__(self) -> DemoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _terminate(proc: subprocess.Popen, what: str) -> list[str]:
    """Give *proc* a moment to exit on its own, then SIGTERM, then SIGKILL."""
    if _wait(proc, 2 if what == "crds-fs mount" else 0):
        return []
    proc.send_signal(signal.SIGTERM)
    if _wait(proc, 15):
        return []
    proc.kill()
    _wait(proc, 10)
    return [f"{what} (pid {proc.pid}) did not stop on SIGTERM and was killed"]
