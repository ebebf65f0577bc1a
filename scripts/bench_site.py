"""Benchmark (issue 11 (c)): 8 mounts behind one nginx proxy_cache reading the same 50 files.

Every mount has its own cache and reaches the origin `crds-fs serve` only through nginx
(configured from docs/site/nginx-crds-fs.conf, as the tests do); all mounts read all 18
mappings and 32 references of the demo observatory at the same time.  Reported: bytes the
origin sent (from its access log), the distinct bytes of the 50 files, and what the mounts
read in all.  Goal: origin bytes = 1.0x the distinct bytes (each file crosses the "WAN"
once per site).

    PYTHONPATH=. python scripts/bench_site.py [--mounts 8] [--markdown]

Needs nginx (apt-get install nginx-light), fusermount3 and root (or user_allow_other).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_scale import Mount  # noqa: E402

from crds_fs.demo.generate import generate  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402
from tests.test_site_cache import PROXIED_ENV, NginxCache  # noqa: E402


def origin_bytes(server: ServerProcess) -> tuple[int, int]:
    """(downloads, bytes) the origin sent for files (its access log)."""
    found = re.findall(r'"GET /unchecked_get/\S+" 20[06] (\d+)B', server.log())
    return len(found), sum(int(n) for n in found)


def read_everything(mounts: list[Mount], files: dict[str, int]) -> tuple[int, list[str]]:
    """Every mount reads every file at once; (bytes read, failures)."""
    failures: list[str] = []
    total = [0]
    lock = threading.Lock()

    def read(mount: Mount, relative: str) -> None:
        try:
            data = (mount.point / relative).read_bytes()
        except OSError as exc:
            failures.append(f"{mount.point}/{relative}: {exc}")
            return
        if len(data) != files[relative]:
            failures.append(f"{mount.point}/{relative}: {len(data)} bytes")
        with lock:
            total[0] += len(data)

    threads = [threading.Thread(target=read, args=(m, f)) for m in mounts for f in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return total[0], failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mounts", type=int, default=8)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crds-fs-bench-site-") as tmp:
        work = Path(tmp)
        root = work / "demo"
        generate(root)
        files = {f"{kind}/hst/{p.name}": p.stat().st_size
                 for kind in ("mappings", "references")
                 for p in sorted((root / kind / "hst").iterdir())}
        origin = ServerProcess(root, "--index", str(work / "origin-index"), log_dir=work)
        origin.start()
        (work / "nginx").mkdir()
        nginx = NginxCache(work / "nginx").start()
        mounts: list[Mount] = []
        try:
            for i in range(args.mounts):
                mounts.append(Mount(work, origin.url, str(i), "--proxy", nginx.url,
                                    env=PROXIED_ENV))
            started = time.perf_counter()
            read, failures = read_everything(mounts, files)
            seconds = time.perf_counter() - started
            time.sleep(1)  # the origin writes its access line just after each response
            downloads, sent = origin_bytes(origin)
        finally:
            for mount in mounts:
                mount.close()
            nginx.stop()
            origin.stop()
    distinct = sum(files.values())
    rows = [("mounts (separate caches) behind one nginx proxy_cache", f"{args.mounts}"),
            ("files read by every mount, all at once", f"{len(files)}"),
            ("distinct bytes of those files", f"{distinct:,}"),
            ("bytes read through all mounts", f"{read:,} ({read / distinct:.1f}x distinct)"),
            ("downloads the origin answered", f"{downloads}"),
            ("bytes the origin sent", f"{sent:,} (**{sent / distinct:.2f}x** distinct)"),
            ("wall time", f"{seconds:.1f} s"),
            ("read failures", f"{len(failures)}")]
    if args.markdown:
        print("| measurement | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
    else:
        for name, value in rows:
            print(f"{name:55s} {value}")
    for failure in failures:
        print("FAILED", failure, file=sys.stderr)
    return 1 if failures or sent != distinct else 0


if __name__ == "__main__":
    sys.exit(main())
