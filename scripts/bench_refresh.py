#!/usr/bin/env python3
"""Benchmark: how fast a mount notices a new file, and what a poll that finds nothing costs.

Serves a generated observatory (the demo plus --files synthetic references, so the
catalog has a realistic size) with `crds-fs serve` on 127.0.0.1, then measures:

1. notice: deliver a reference on the server, run `crds-fs refresh MOUNT` (real FUSE
   mount), until `ls` shows the file: wall time of the command and the check's own time;
2. idle poll: one check that finds nothing, as each kind of server is asked:
   - `digest`: crds-fs serve (`get_catalog_digest`);
   - `contexts`: a real CRDS server, regular poll (two `get_default_context` calls);
   - `contexts+catalog`: a real CRDS server, forced or hourly (the whole server info).
   Bytes are request + response bodies and headers as the client saw them.

Usage: PYTHONPATH=. python scripts/bench_refresh.py [--files 44000] [--rounds 5]
Prints a Markdown table (docs/refresh-benchmark.md; summarised in docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_root(root: Path, files: int) -> int:
    """The demo observatory plus *files* small synthetic references; returns file count."""
    from crds_fs.demo.generate import generate

    generate(root, large_mb=1)
    refs = root / "references" / "hst"
    for i in range(files):
        (refs / f"bench_{i:06d}_ref.fits").write_bytes(f"synthetic reference {i}\n".encode())
    return sum(1 for _ in (root / "mappings" / "hst").iterdir()) + sum(1 for _ in refs.iterdir())


def start_server(root: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([PY, "-m", "crds_fs.cli", "serve", str(root), "--host",
                             "127.0.0.1", "--port", str(port), "--index",
                             str(work / "serve-index")], stdout=log, stderr=subprocess.STDOUT)
    body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if requests.post(url + "/json/", json=body, timeout=5).ok:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"crds-fs serve failed: {(work / 'serve.log').read_text()}")
        time.sleep(0.2)
    raise SystemExit("crds-fs serve did not come up")


def deliver(root: Path, n: int) -> str:
    name = f"bench_new_{n:04d}_ref.fits"
    folder = root / "references" / "hst"
    temp = folder.parent / f".{name}"
    temp.write_bytes(b"delivered while mounted\n" * 100)
    os.replace(temp, folder / name)
    return name


def bench_notice(root: Path, url: str, work: Path, rounds: int) -> list[dict[str, Any]]:
    """Real mount, `crds-fs refresh` after each delivery."""
    mnt, cache = work / "mnt", work / "mount-cache"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    subprocess.run([PY, "-m", "crds_fs.cli", "mount", str(mnt), "--server", url, "--cache",
                    str(cache), "--refresh", "0", "--log-file", str(work / "mount.log")],
                   check=True, env=env, capture_output=True, timeout=600)
    results = []
    body = {"jsonrpc": "1.0", "method": "get_catalog_digest", "params": ["hst"], "id": 1}
    try:
        for n in range(2 * rounds):
            name = deliver(root, n)
            warm = n >= rounds
            if warm:  # let the server rescan its folder first: the client's share alone
                requests.post(url + "/json/", json=body, timeout=600).raise_for_status()
            started = time.perf_counter()
            out = subprocess.run([PY, "-m", "crds_fs.cli", "refresh", str(mnt), "--json"],
                                 capture_output=True, text=True, env=env, timeout=120)
            listed = name in os.listdir(mnt / "references" / "hst")
            wall = time.perf_counter() - started
            report = json.loads(out.stdout)
            assert listed and report["result"] == "changed", (report, out.stderr)
            results.append({"warm": warm, "wall_ms": wall * 1000,
                            "check_ms": report["duration_ms"],
                            "bytes": report["bytes_sent"] + report["bytes_received"]})
    finally:
        subprocess.run([PY, "-m", "crds_fs.cli", "umount", str(mnt)], capture_output=True,
                       env=env, timeout=120)
    return results


def bench_idle(url: str, work: Path, rounds: int) -> dict[str, list[tuple[float, int]]]:
    """In-process checks that find nothing, per way of asking."""
    from crds_fs.cache import FileCache
    from crds_fs.config import Settings
    from crds_fs.namespace import MountSource
    from crds_fs.namespace.refresh import Refresher, attach

    settings = Settings.from_env(server_url=url, cache_dir=work / "idle-cache",
                                 observatory="hst")
    out: dict[str, list[tuple[float, int]]] = {}
    with FileCache.open(settings, observatory="hst") as cache:
        source = MountSource(cache)
        for label, use_digest, forced in (("digest", True, False),
                                          ("contexts", False, False),
                                          ("contexts+catalog", False, True)):
            refresher = attach(source, Refresher(source, interval=0, use_digest=use_digest))
            refresher.check("bench", forced=True)  # learn the token
            samples = []
            for _ in range(rounds):
                report = refresher.check("bench", forced=forced)
                assert report.result == "unchanged" and report.check == label, report
                samples.append((report.duration_ms, report.bytes_sent + report.bytes_received))
            out[label] = samples
            refresher.stop()
        source.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=44000,
                        help="synthetic references added to the demo (HST has ~44k files)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    work = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    server = None
    try:
        root = work / "root"
        started = time.perf_counter()
        total = build_root(root, args.files)
        server, url = start_server(root, work)
        print(f"served {total} files from {root} at {url} (ready in "
              f"{time.perf_counter() - started:.1f}s)", file=sys.stderr)
        idle = bench_idle(url, work, args.rounds)
        notice = (bench_notice(root, url, work, args.rounds)
                  if shutil.which("fusermount3") and os.access("/dev/fuse", os.W_OK) else [])
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        print(f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
              f"Python {platform.python_version()}; catalog of {total} files, loopback, "
              f"median of {args.rounds} rounds.\n")
        print("| measurement | time (median) | bytes on the wire |")
        print("|---|---|---|")
        med = statistics.median
        for warm in (False, True):
            runs = [r for r in notice if r["warm"] == warm]
            if not runs:
                continue
            when = ("server had rescanned already" if warm
                    else "server rescans its folder in the same request")
            print(f"| new file visible: `crds-fs refresh` + `ls` ({when}; wall, incl. CLI "
                  f"start) | {med(r['wall_ms'] for r in runs):.0f} ms | "
                  f"{med(r['bytes'] for r in runs):,.0f} |")
            print(f"| ... of which the daemon's check (digest + catalog download + swap) | "
                  f"{med(r['check_ms'] for r in runs):.0f} ms | |")
        for label, samples in idle.items():
            what = {"digest": "idle poll, crds-fs serve (`get_catalog_digest`)",
                    "contexts": "idle poll, real CRDS server (2 x `get_default_context`)",
                    "contexts+catalog": "forced/hourly check, real CRDS server (whole "
                                        "server info)"}[label]
            print(f"| {what} | {statistics.median(s[0] for s in samples):.1f} ms | "
                  f"{statistics.median(s[1] for s in samples):,.0f} |")
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
