"""What the benchmark scripts share: a free loopback port, `crds-fs serve` as a subprocess,
and the wide-area model (scripts/wanproxy.py) in front of it.  Imported by the scripts in
this folder (`python scripts/bench_x.py` puts it on sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`crds-fs serve ROOT` on a free loopback port, ready once get_server_info answers
    (the first start hashes ROOT: *ready_timeout* covers that)."""

    def __init__(self, root: Path, work: Path, *, env: dict[str, str] | None = None,
                 ready_timeout: float = 900) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(work / "serve.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crds_fs.cli", "serve", str(root), "--port", str(self.port),
             "--index", str(work / "serve-index"), "-q"], stdout=log, stderr=subprocess.STDOUT,
            env=env)
        deadline = time.monotonic() + ready_timeout
        body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"crds-fs serve died: see {work / 'serve.log'}")
            try:
                if requests.post(self.url + "/json/", json=body, timeout=300).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise SystemExit("crds-fs serve did not come up")

    def cpu(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Wan:
    """scripts/wanproxy.py in front of 127.0.0.1:*port*, as a subprocess of its own: every
    response's first byte held back by *latency_ms*, each connection and all together
    capped (MB/s)."""

    def __init__(self, port: int, latency_ms: float, conn_mbps: float,
                 total_mbps: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "wanproxy.py"), "--upstream",
             f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--latency-ms",
             str(latency_ms), "--conn-mbps", str(conn_mbps), "--total-mbps", str(total_mbps)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"wanproxy did not start: {line}{self.proc.stderr.read()}")
        self.url = "http://" + line.split("listening on ", 1)[1].split(" ")[0]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=30)
        return err.strip()
