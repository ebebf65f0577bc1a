#!/usr/bin/env python
"""Benchmark `crds-fs sync --fetch-references` against crds 14.0.3 `crds.sync`, same run.

Builds a served root in a work folder: the real HST mappings of `hst_0729.pmap` (from the
shared data) plus a generated context `hst_9729.pmap` naming only some instruments of it
(default ACS, COS and NICMOS: 3,841 references), every reference written with synthetic
content.  Sizes span KB to hundreds of MB (2 of 200 MB, 8 of 40 MB, 80 of 4 MB, 400 of
400 KB, the rest about 30 KB: ~1.4 GB; `--scale` multiplies them).  `crds-fs serve` serves
it on loopback; each tool syncs `--contexts hst_9729.pmap --fetch-references` into an empty
cache (deleted after each run, so the disk holds at most the root plus one cache):

(a) on loopback, straight to the server;
(b) through a wide-area model, `scripts/wanproxy.py` between client and server: every
    response's first byte 50 ms late, 20 MB/s per connection, 120 MB/s for all together.

Each run is the whole command (interpreter start included) and is checked: exit status 0
and every file present (crds-fs: its JSON report; crds: the files in its cache).

    python scripts/bench_sync.py                      # ~1.4 GB of data, a few minutes
    python scripts/bench_sync.py --scale 0.05 --instruments cos   # a quick look
    python scripts/bench_sync.py --write-doc          # also write docs/sync-benchmark.md

Not a test: numbers depend on the machine (and on its load: it is printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import Server, Wan  # noqa: E402

from crds_fs.bestrefs.sources import folder_source  # noqa: E402
from crds_fs.engine.checksum import set_mapping_checksum  # noqa: E402

SHARED = Path(os.environ.get("CRDS_FS_SHARED_DATA") or REPO.parent / "shared" / "crds-data")
BASE_CONTEXT = "hst_0729.pmap"
CONTEXT = "hst_9729.pmap"
DOC = REPO / "docs" / "sync-benchmark.md"
#: (count, bytes) of the size tiers at --scale 1; the rest of the files get SMALL bytes
TIERS = ((2, 200_000_000), (8, 40_000_000), (80, 4_000_000), (400, 400_000))
SMALL = 30_000
BLOCK = 4 << 20
PMAP = """header = {
    'derived_from' : 'hst_0729.pmap (scripts/bench_sync.py)',
    'mapping' : 'PIPELINE',
    'name' : 'NAME',
    'observatory' : 'HST',
    'parkey' : ('INSTRUME',),
    'sha1sum' : '0',
}

selector = {
ENTRIES
}
"""


# --- data -------------------------------------------------------------------------------------


def make_root(root: Path, instruments: list[str], scale: float, seed: int) -> dict[str, int]:
    """Write the served root; returns {reference name: size}."""
    source_maps = SHARED / "mappings" / "hst"
    if not (source_maps / BASE_CONTEXT).is_file():
        raise SystemExit(f"{source_maps / BASE_CONTEXT} not found: set CRDS_FS_SHARED_DATA")
    mappings = root / "mappings" / "hst"
    references = root / "references" / "hst"
    config = root / "config" / "hst"
    for folder in (mappings, references, config):
        folder.mkdir(parents=True, exist_ok=True)
    base = folder_source(source_maps).load_context(BASE_CONTEXT)
    selector = {}
    names: set[str] = set()
    for instrument in instruments:
        loaded = base.instrument(instrument)
        selector[instrument.upper()] = loaded.imap.name
        for name in loaded.mapping_names():
            shutil.copyfile(source_maps / name, mappings / name)
        for rmap in loaded.rmaps.values():
            names |= rmap.reference_names()
    entries = "".join(f"    '{k}' : '{v}',\n" for k, v in sorted(selector.items()))
    pmap = PMAP.replace("NAME", CONTEXT).replace("ENTRIES\n", entries)
    (mappings / CONTEXT).write_text(set_mapping_checksum(pmap))
    (config / "server_config").write_text(repr({
        "observatory": "hst", "operational_context": CONTEXT, "edit_context": CONTEXT,
        "bad_files_list": [], "force_remote_mode": 0}))
    for name in list(names):  # GEIS headers come with their data file (crds syncs both)
        if len(name) > 4 and name[-4:-2] == ".r" and name.endswith("h"):
            names.add(name[:-1] + "d")
    sizes = plan_sizes(sorted(names), scale, seed)
    write_files(references, sizes, seed)
    return sizes


def plan_sizes(names: list[str], scale: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    order = names[:]
    rng.shuffle(order)
    sizes: dict[str, int] = {}
    position = 0
    for count, size in TIERS:
        for name in order[position:position + count]:
            sizes[name] = max(1024, int(size * scale))
        position += count
    for name in order[position:]:
        sizes[name] = max(1024, int(min(max(rng.lognormvariate(0, 0.8), 0.07), 10) * SMALL
                                    * scale))
    return sizes


def write_files(folder: Path, sizes: dict[str, int], seed: int) -> None:
    """Distinct content per file: its name, then a rotating random block."""
    block = random.Random(seed).randbytes(BLOCK)
    for number, (name, size) in enumerate(sorted(sizes.items())):
        with open(folder / name, "wb") as out:
            head = f"SIMPLE  = T / synthetic {name} {size}\n".encode()
            out.write(head[:size])
            written, offset = len(head[:size]), (number * 7919) % BLOCK
            while written < size:
                piece = block[offset:offset + min(size - written, BLOCK - offset)]
                out.write(piece)
                written += len(piece)
                offset = 0


# --- processes --------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class Run:
    tool: str
    network: str
    seconds: float
    files: int
    nbytes: int
    #: CPU seconds (user + system) of the command and its worker processes
    cpu: float = 0.0
    #: CPU seconds of the server (and the WAN proxy) during the run
    server_cpu: float = 0.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_crds_fs(url: str, cache: Path, jobs: int, expected: int, log: Path) -> float:
    cmd = [sys.executable, "-m", "crds_fs.cli", "sync", "--server", url, "--cache", str(cache),
           "--contexts", CONTEXT, "--fetch-references", "--jobs", str(jobs), "--json"]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    seconds = time.perf_counter() - started
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"crds-fs sync failed ({result.returncode}): see {log}")
    report = json.loads(result.stdout)
    fetched = [n for n in report["fetched"] if not n.endswith("map")]
    if len(fetched) != expected or report["failed"]:
        raise SystemExit(f"crds-fs sync fetched {len(fetched)} of {expected} references: {log}")
    return seconds


def run_crds(url: str, cache: Path, expected: int, log: Path) -> float:
    cmd = [sys.executable, "-m", "crds.sync", "--contexts", CONTEXT, "--fetch-references"]
    env = clean_env(CRDS_SERVER_URL=url, CRDS_PATH=str(cache), CRDS_OBSERVATORY="hst")
    started = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"crds sync failed ({result.returncode}): see {log}")
    found = sum(1 for p in (cache / "references").rglob("*") if p.is_file())
    if found != expected:
        raise SystemExit(f"crds sync left {found} of {expected} references: see {log}")
    return seconds


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo")
                  if line.startswith("MemTotal"))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    try:
        from importlib.metadata import version
        crds_version = version("crds")
    except Exception:  # noqa: BLE001 - only for the report
        crds_version = "?"
    return {"cpus": str(os.cpu_count()), "model": model,
            "memory": f"{mem_kb / 1024 / 1024:.0f} GiB", "kernel": platform.release(),
            "python": platform.python_version(), "crds": crds_version}


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


def table(runs: list[Run], info: dict[str, str], args: argparse.Namespace,
          loads: list[float], mappings: int) -> str:
    goals = {"loopback": 3, "wan": 5}
    names = {"loopback": "loopback",
             "wan": f"WAN model ({args.latency_ms:g} ms first byte, {args.conn_mbps:g} MB/s per "
                    f"connection, {args.total_mbps:g} MB/s total)"}
    files, nbytes = runs[0].files, runs[0].nbytes
    lines = [
        "## `crds-fs sync` vs `crds sync`",
        "",
        f"Measured by `python scripts/bench_sync.py{' ' + args.argv if args.argv else ''}` on "
        f"{info['cpus']} cores ({info['model']}), {info['memory']} RAM, Linux {info['kernel']}, "
        f"Python {info['python']}, crds {info['crds']}; load average {loads[0]:.1f} before "
        f"and {loads[1]:.1f} after (the machine is shared: absolute times vary, each ratio "
        "compares runs of the same minutes).",
        "",
        f"Data: `{CONTEXT}` (the `{BASE_CONTEXT}` rules of {', '.join(args.instruments)}): "
        f"{mappings} mappings and {files} references with synthetic content, {human(nbytes)} "
        "(KB to hundreds of MB), served by `crds-fs serve` on loopback. Each run is the "
        "whole command into an empty cache: `crds-fs sync --contexts "
        f"{CONTEXT} --fetch-references` ({args.jobs} jobs) vs `python -m crds.sync --contexts "
        f"{CONTEXT} --fetch-references`.",
        "",
        "| network | crds sync | crds-fs sync | speed-up | goal | client CPU s crds / crds-fs "
        "| server CPU s crds / crds-fs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for network in ("loopback", "wan"):
        got = {r.tool: r for r in runs if r.network == network}
        if len(got) < 2:
            continue
        crds, ours = got["crds"], got["crds-fs"]
        ratio = crds.seconds / ours.seconds
        mark = "met" if ratio >= goals[network] else "NOT met"
        lines.append(
            f"| {names[network]} | {crds.seconds:.1f} s ({human(nbytes / crds.seconds)}/s) | "
            f"{ours.seconds:.1f} s ({human(nbytes / ours.seconds)}/s) | **{ratio:.2f}x** | "
            f"≥ {goals[network]}x ({mark}) | {crds.cpu:.0f} / {ours.cpu:.0f} | "
            f"{crds.server_cpu:.0f} / {ours.server_cpu:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every file size")
    parser.add_argument("--instruments", default="acs,cos,nicmos",
                        help="instruments of hst_0729.pmap in the context (default "
                             "acs,cos,nicmos)")
    parser.add_argument("--jobs", type=int, default=8, help="crds-fs sync --jobs (default 8)")
    parser.add_argument("--networks", default="loopback,wan", help="loopback, wan or both")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--conn-mbps", type=float, default=20.0)
    parser.add_argument("--total-mbps", type=float, default=120.0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where data and caches go (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-doc", action="store_true", help=f"write {DOC.name}")
    args = parser.parse_args(argv)
    args.instruments = [i.strip().lower() for i in args.instruments.split(",") if i.strip()]
    args.argv = " ".join(sys.argv[1:] if argv is None else argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crds-fs-bench-sync-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    server = None
    try:
        started = time.monotonic()
        sizes = make_root(root, args.instruments, args.scale, args.seed)
        mappings = len(list((root / "mappings" / "hst").iterdir()))
        total = sum(sizes.values())
        print(f"data: {mappings} mappings, {len(sizes)} references, {human(total)} in "
              f"{time.monotonic() - started:.0f} s ({root})", flush=True)
        server = Server(root, work, env=clean_env())
        print(f"server: {server.url} ready after {time.monotonic() - started:.0f} s", flush=True)
        loads = [os.getloadavg()[0]]
        runs: list[Run] = []
        for network in args.networks.split(","):
            wan = Wan(server.port, args.latency_ms, args.conn_mbps, args.total_mbps) \
                if network == "wan" else None
            url = wan.url if wan else server.url
            try:
                for tool in ("crds-fs", "crds"):
                    cache = work / f"cache-{tool}-{network}"
                    shutil.rmtree(cache, ignore_errors=True)
                    log = work / f"{tool}-{network}.log"
                    cpu, served = children_cpu(), server.cpu()
                    if tool == "crds-fs":
                        seconds = run_crds_fs(url, cache, args.jobs, len(sizes), log)
                    else:
                        seconds = run_crds(url, cache, len(sizes), log)
                    cpu, served = children_cpu() - cpu, server.cpu() - served
                    shutil.rmtree(cache, ignore_errors=True)
                    runs.append(Run(tool, network, seconds, len(sizes), total, cpu, served))
                    print(f"{network:8} {tool:8} {seconds:7.1f} s  (CPU {cpu:.1f} s, server "
                          f"{served:.1f} s)", flush=True)
            finally:
                if wan is not None:
                    print(f"wanproxy: {wan.stop()}", flush=True)
        loads.append(os.getloadavg()[0])
        text = table(runs, machine(), args, loads, mappings)
        print()
        print(text)
        if args.write_doc:
            # the hand-written sections (from the first "### " heading on) are kept
            old = DOC.read_text() if DOC.exists() else ""
            kept = old[old.index("\n### "):] if "\n### " in old else ""
            DOC.write_text("# Sync benchmark\n\n" + text + DOC_TAIL + kept)
            print(f"wrote {DOC}")
    finally:
        if server is not None:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


DOC_TAIL = """
Why: `crds sync` fetches one file at a time, so every file costs at least a round trip and
one connection's bandwidth; `crds-fs sync` keeps `--jobs` downloads in flight (biggest files
first, so the run does not end on one large straggler), each streamed, hashed and written
by the same fetcher a mount uses (size and sha1 verified, fsynced, committed by rename).
On loopback the gain is the overlap of per-file overheads (HTTP, hashing, fsync) on two
cores; through the WAN model the latency of thousands of small files is paid `--jobs` at a
time and the big files use the aggregate bandwidth instead of one connection's.

The WAN model is `scripts/wanproxy.py` (asyncio TCP forwarding proxy; reusable for other
benchmarks): it holds back every response's first byte by the latency and caps each
connection's and the total rate with token buckets.
"""


if __name__ == "__main__":
    sys.exit(main())
