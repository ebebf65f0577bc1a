#!/usr/bin/env python
"""Big files over a wide-area link: parallel ranges and verified random access (issue 11 §3).

Not a test: it prints numbers (and a markdown table with --markdown).  Everything runs on
127.0.0.1: `crds-fs serve` over a generated folder with one big FITS reference, and
`scripts/wanproxy.py` (h8's WAN model: 50 ms first-byte delay, 20 MB/s per connection,
120 MB/s total; run as its own process) in front of it.  Measured:

(a) cold sequential read of the big file through a fresh mount (empty cache):
    1 stream, N streams (parallel ranges, whole-file path), N streams with chunked reads
    (prefetch), and `curl` single stream for reference;
(b) `astropy.io.fits.getheader` of the uncached big file through a fresh mount: time and
    bytes transferred (mount stats and the server's access log).

    PYTHONPATH=. python scripts/bench_scale.py [--size 1G] [--streams 4] [--markdown]

The generated file is random bytes (a sparse file would compress nothing here, but random
data keeps any misplaced range visible to the sha1).  Disk use: the file, its copy in one
mount cache at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import Wan  # noqa: E402

from crds_fs.config import parse_size  # noqa: E402
from tests.helpers import ServerProcess, make_tiny_root  # noqa: E402
from tests.test_ranges import BIG, write_big_fits  # noqa: E402


def crds_fs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", *args], capture_output=True,
                          text=True, env=full, timeout=600, check=False)


class Mount:
    def __init__(self, base: Path, url: str, label: str, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.point = base / f"mnt-{label}"
        self.cache = base / f"cache-{label}"
        self.log = base / f"mount-{label}.log"
        self.point.mkdir(parents=True, exist_ok=True)
        result = crds_fs("mount", str(self.point), "--server", url, "--cache", str(self.cache),
                         "--log-file", str(self.log), *extra, env=env)
        if result.returncode != 0:
            raise SystemExit(f"mount failed: {result.stdout}{result.stderr}")

    @property
    def file(self) -> Path:
        return self.point / "references" / "hst" / BIG

    def stats(self) -> dict:
        return json.loads((self.point / ".crds-fs" / "stats").read_text())

    def close(self) -> None:
        crds_fs("umount", str(self.point))
        shutil.rmtree(self.cache, ignore_errors=True)


def served_bytes(server: ServerProcess, since: int) -> int:
    """Bytes of the big file the server sent (its access log, lines after offset *since*)."""
    text = server.log()[since:]
    return sum(int(m.group(1)) for m in re.finditer(
        rf"GET /unchecked_get/references/hst/{re.escape(BIG)}\S*\" 20[06] (\d+)B", text))


def cold_read(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1 << 20):
            total += len(chunk)
    return time.perf_counter() - started, total


NGINX_CONF = """
user {user};
worker_processes 1;
error_log {base}/nginx-error.log;
pid {base}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {base}/nginx-access.log;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
    }}
}}
"""


def rclone_header(base: Path, root: Path, args: argparse.Namespace) -> tuple[str, ...] | None:
    """getheader through `rclone mount` (http remote on nginx, --vfs-cache-mode full)."""
    from astropy.io import fits

    from tests.helpers import free_port

    if not (shutil.which("rclone") and shutil.which("nginx")):
        print("rclone or nginx not installed: skipping the rclone comparison", flush=True)
        return None
    port = free_port()
    conf = base / "nginx.conf"
    import pwd

    # workers as the user running the benchmark: the temp dir is private (0700)
    conf.write_text(NGINX_CONF.format(base=base, port=port, root=root,
                                      user=pwd.getpwuid(os.getuid()).pw_name))
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(base), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wan = rclone = None
    point = base / "mnt-rclone"
    point.mkdir()
    try:
        time.sleep(0.5)
        wan = Wan(port, args.latency_ms, args.conn_mbps, args.total_mbps)
        rclone = subprocess.Popen(
            ["rclone", "mount", ":http:", str(point), "--http-url",
             f"{wan.url}/references/hst/", "--vfs-cache-mode", "full", "--cache-dir",
             str(base / "rclone-cache"), "--read-only"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.ismount(point) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.listdir(point)  # the directory listing is not part of the header read
        started = time.perf_counter()
        header = fits.getheader(point / BIG)
        seconds = time.perf_counter() - started
        assert header["CRDSBIG"] == "yes"
        time.sleep(1.0)
        log = (base / "nginx-access.log").read_text()
        sent = sum(int(m.group(1)) for m in re.finditer(
            rf"GET /references/hst/{re.escape(BIG)} HTTP/1.1\" 20[06] (\d+)", log))
        version = subprocess.run(["rclone", "version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")[0]
        return ("(b) getheader, uncached", f"{version} mount, --vfs-cache-mode full, "
                "http remote on nginx", f"{seconds:.3f} s",
                f"{sent / (1 << 20):.1f} MiB sent by nginx (within 1 s)")
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], capture_output=True, check=False)
        if rclone is not None:
            rclone.terminate()
            rclone.wait(30)
        if wan is not None:
            wan.stop()
        nginx.terminate()
        nginx.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="size of the big file (default 1G)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--conn-mbps", type=float, default=20.0)
    parser.add_argument("--total-mbps", type=float, default=120.0)
    parser.add_argument("--skip-single", action="store_true",
                        help="skip the 1-stream mount run (the slowest one)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--only-header", action="store_true", help="only part (b)")
    args = parser.parse_args()
    size = parse_size(args.size, what="--size")
    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[tuple[str, str, str, str]] = []
    server = wan = None
    try:
        root = make_tiny_root(base / "root")
        print(f"generating {size} bytes ...", flush=True)
        write_big_fits(root / "references" / "hst" / BIG, size)
        started = time.perf_counter()
        server = ServerProcess(root, "--index", str(base / "index"), log_dir=base)
        server.start(timeout=600)
        print(f"serve up (hashing sha1 + chunk manifest: {time.perf_counter() - started:.1f}s)",
              flush=True)
        wan = Wan(server.port, args.latency_ms, args.conn_mbps, args.total_mbps)
        url = f"{wan.url}/unchecked_get/references/hst/{BIG}"
        mib = size / (1 << 20)

        curl_s = 1.0
        if not args.only_header:  # (a) curl single stream
            result = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w",
                                     "%{time_total} %{size_download}", url],
                                    capture_output=True, text=True, timeout=1800, check=True)
            curl_s = float(result.stdout.split()[0])
            rows.append(("(a) cold read", "curl, 1 stream", f"{curl_s:.1f} s",
                         f"{mib / curl_s:.1f} MiB/s (1.0x)"))
            print(rows[-1], flush=True)

        runs = [("whole-file, 1 stream", ["--streams", "1"], {"CRDS_FS_PARTIAL_READS": "0"}),
                (f"whole-file, {args.streams} ranges", ["--streams", str(args.streams)],
                 {"CRDS_FS_PARTIAL_READS": "0"}),
                (f"chunked reads, {args.streams} prefetch", ["--streams", str(args.streams)],
                 {})]
        if args.skip_single:
            runs = runs[1:]
        if args.only_header:
            runs = []
        for label, extra, env in runs:
            mount = Mount(base, wan.url, re.sub(r"\W+", "-", label), *extra, env=env)
            try:
                seconds_read, total = cold_read(mount.file)
                assert total == size, (total, size)
                log = mount.log.read_text()
                hashed = re.search(r"in (\d+) ranges over \d+ streams in ([\d.]+)s, sha1 done "
                                   r"([\d.]+)s after the last byte", log)
                note = (f"; {hashed.group(1)} ranges, transfer {hashed.group(2)} s, sha1 done "
                        f"{hashed.group(3)} s after the last byte" if hashed else "")
            finally:
                mount.close()
            rows.append(("(a) cold read", f"crds-fs mount, {label}", f"{seconds_read:.1f} s",
                         f"{mib / seconds_read:.1f} MiB/s ({curl_s / seconds_read:.1f}x){note}"))
            print(rows[-1], flush=True)

        # (b) header of the uncached file
        from astropy.io import fits

        mount = Mount(base, wan.url, "header", "--streams", str(args.streams))
        try:
            offset = len(server.log())
            started = time.perf_counter()
            header = fits.getheader(mount.file)
            seconds_header = time.perf_counter() - started
            assert header["CRDSBIG"] == "yes"
            time.sleep(0.5)  # let the access log line reach the file
            sent = served_bytes(server, offset)
            stats = mount.stats()["cache"]
            chunks = os.getxattr(mount.file, "user.crds.chunks").decode()
        finally:
            mount.close()
        rows.append(("(b) getheader, uncached", "crds-fs mount (chunked reads)",
                     f"{seconds_header:.3f} s",
                     f"{stats['bytes_downloaded'] / (1 << 20):.1f} MiB fetched (server sent "
                     f"{sent / (1 << 20):.1f} MiB), chunks {chunks}"))
        print(rows[-1], flush=True)
        rclone_row = rclone_header(base, root, args)
        if rclone_row is not None:
            rows.append(rclone_row)
            print(rows[-1], flush=True)
    finally:
        if wan is not None:
            print(f"wanproxy: {wan.stop()}", flush=True)
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.markdown:
        print(f"\nFile {size} bytes; WAN model {args.latency_ms:g} ms first byte, "
              f"{args.conn_mbps:g} MB/s per connection, {args.total_mbps:g} MB/s total.\n")
        print("| case | how | time | result |\n|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
