"""Test helpers: real subprocesses on loopback, nothing mocked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

SHARED_DATA = Path(
    os.environ.get("CRDS_FS_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "crds-data"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`crds-fs serve ROOT` as a real subprocess on 127.0.0.1, restartable on the same port."""

    def __init__(self, root: Path, *extra: str, port: int | None = None, log_dir: Path) -> None:
        self.root = Path(root)
        self.extra = extra
        self.port = port or free_port()
        self.log_path = Path(log_dir) / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "crds_fs.cli", "serve", str(self.root),
               "--host", "127.0.0.1", "--port", str(self.port), *self.extra]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crds-fs serve exited early: {self.log_path.read_text()}")
            try:
                body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
                if requests.post(self.url + "/json/", json=body, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"crds-fs serve did not come up on {self.url}: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
