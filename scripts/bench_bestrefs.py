#!/usr/bin/env python
"""Benchmark: crds 14.0.3 vs the crds-fs engine, best references on this machine, one run.

Measured for each side in its own fresh subprocesses (so imports, caches and peak RSS are
not shared), the two sides interleaved over ``--rounds`` rounds, best numbers kept:

* load: time to load ``hst_0729.pmap`` completely (every imap and rmap parsed and built;
  crds: ``load_mapping(...).force_load()``, crds-fs: ``Context.load(...).mapping_names()``),
  first load in a fresh process, best of ``--load-runs`` processes;
* per header: ``getrecommendations`` (crds) / ``Context.best_references`` (crds-fs) over every
  shared case of hst_0729 and jwst_0541, after the contexts are fully loaded (best of
  ``$BENCH_PASSES`` passes, default 2);
* batch: 10,000 headers (the shared cases of both observatories, cycled) in one loop;
* peak RSS of the process after all of the above (``ru_maxrss``).

Usage::

    python scripts/bench_bestrefs.py                 # print the table
    python scripts/bench_bestrefs.py --write-docs    # also update docs/performance.md

Data: ``--data DIR`` or ``$CRDS_FS_SHARED_DATA`` or ``../shared/crds-data``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "performance.md"
BEGIN = "<!-- section: bestrefs (scripts/bench_bestrefs.py) -->"
END = "<!-- end section: bestrefs -->"
CONTEXTS = {"hst": "hst_0729.pmap", "jwst": "jwst_0541.pmap"}
BATCH = 10_000
PASSES = int(os.environ.get("BENCH_PASSES", "2"))


def default_data() -> Path:
    return Path(os.environ.get("CRDS_FS_SHARED_DATA") or REPO.parent / "shared" / "crds-data")


def crds_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_MODE="local", CRDS_PATH=str(data), CRDS_READONLY_CACHE="1",
               CRDS_SERVER_URL="https://serverless-mode.stsci.edu", CRDS_CONFIG_URI="none")
    return env


def load_cases(data: Path) -> dict[str, list[dict[str, Any]]]:
    cases = {}
    for obs, context in CONTEXTS.items():
        path = data / "cases" / context.replace(".pmap", ".jsonl")
        with open(path, encoding="utf-8") as lines:
            cases[obs] = [json.loads(line)["header"] for line in lines]
    return cases


# --- workers (run in their own subprocess) ----------------------------------------------------


def worker_load(side: str, data: Path) -> dict[str, float]:
    if side == "crds":
        from crds.core import rmap

        start = time.perf_counter()
        rmap.load_mapping("hst_0729.pmap").force_load()
    else:
        import ast

        from crds_fs.bestrefs.sources import cache_root_loader
        from crds_fs.engine import Context

        start = time.perf_counter()
        Context.load("hst_0729.pmap", cache_root_loader(data, "hst")).mapping_names()
        elapsed = time.perf_counter() - start
        texts = [p.read_text() for p in (data / "mappings" / "hst").iterdir()]
        start = time.perf_counter()
        for text in texts:  # the floor: Python's parser alone on the same 137 files
            ast.parse(text)
        return {"load_s": elapsed, "ast_s": time.perf_counter() - start}
    return {"load_s": time.perf_counter() - start}


def worker_eval(side: str, data: Path) -> dict[str, float]:
    cases = load_cases(data)
    if side == "crds":
        import crds
        from crds.core import rmap

        for context in CONTEXTS.values():
            rmap.get_cached_mapping(context).force_load()

        def lookup(obs: str, header: dict[str, Any]) -> Any:
            return crds.getrecommendations(header, context=CONTEXTS[obs], observatory=obs)
    else:
        from crds_fs.bestrefs.sources import cache_root_source

        loaded = {}
        for obs, context in CONTEXTS.items():
            source = cache_root_source(data, obs)
            loaded[obs] = (source.load_context(context), source.bad_files)
            loaded[obs][0].mapping_names()

        def lookup(obs: str, header: dict[str, Any]) -> Any:
            context, bad = loaded[obs]
            try:
                return context.best_references(header, bad_files=bad)
            except Exception as exc:  # noqa: BLE001 - whole-call failures are answers too
                return exc

    for obs, headers in cases.items():  # warm-up: first call per instrument
        for header in headers[:200]:
            lookup(obs, header)
    result: dict[str, float] = {}
    total_time = 0.0
    total = 0
    for obs, headers in cases.items():
        passes = []  # best of several passes: robust against other load on the machine
        for _ in range(PASSES):
            start = time.perf_counter()
            for header in headers:
                lookup(obs, header)
            passes.append(time.perf_counter() - start)
        elapsed = min(passes)
        result[f"{obs}_us"] = elapsed / len(headers) * 1e6
        total_time += elapsed
        total += len(headers)
    result["all_us"] = total_time / total * 1e6
    flat = [(obs, h) for obs, headers in cases.items() for h in headers]
    start = time.perf_counter()
    for i in range(BATCH):
        obs, header = flat[i % len(flat)]
        lookup(obs, header)
    result["batch_s"] = time.perf_counter() - start
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_worker(side: str, task: str, data: Path) -> dict[str, float]:
    env = crds_env(data) if side == "crds" else dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, __file__, "--worker", side, task, "--data", str(data)],
        env=env, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{side} {task} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report ---------------------------------------------------------------------------------


def measure(data: Path, load_runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Interleave the two sides over several rounds and keep each side's best numbers, so
    that a burst of other load on the machine does not penalise one side only."""
    loads: dict[str, list[dict[str, float]]] = {"crds": [], "crds-fs": []}
    evals: dict[str, list[dict[str, float]]] = {"crds": [], "crds-fs": []}
    for number in range(rounds):
        order = ("crds", "crds-fs") if number % 2 == 0 else ("crds-fs", "crds")
        for side in order:
            loads[side] += [run_worker(side, "load", data) for _ in range(load_runs)]
            evals[side].append(run_worker(side, "eval", data))
            print(f"round {number + 1} {side}: load {loads[side][-1]} eval {evals[side][-1]}",
                  file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    for side in loads:
        best: dict[str, float] = {
            "load_s": min(run["load_s"] for run in loads[side]),
            "load_median_s": statistics.median(run["load_s"] for run in loads[side]),
        }
        if "ast_s" in loads[side][0]:
            best["ast_s"] = min(run["ast_s"] for run in loads[side])
        for key in evals[side][0]:
            pick = max if key == "rss_mb" else min
            best[key] = pick(run[key] for run in evals[side])
        results[side] = best
    return results


def table(results: dict[str, dict[str, float]], cases: dict[str, int]) -> str:
    crds, ours = results["crds"], results["crds-fs"]

    def row(label: str, key: str, unit: str, goal: float | None, fmt: str = "{:.3g}") -> str:
        ratio = crds[key] / ours[key] if ours[key] else float("inf")
        verdict = "" if goal is None else ("meets goal" if ratio >= goal else "below goal")
        goal_text = "" if goal is None else f">= {goal:g}x"
        return (f"| {label} | {fmt.format(crds[key])} {unit} | {fmt.format(ours[key])} {unit} "
                f"| {ratio:.1f}x | {goal_text} | {verdict} |")

    lines = [
        "| measurement | crds 14.0.3 | crds-fs | speed-up | goal | status |",
        "|---|---|---|---|---|---|",
        row("load hst_0729.pmap fully (137 mappings), best of runs", "load_s", "s", 5),
        row(f"per header, all shared cases ({cases['hst'] + cases['jwst']})", "all_us", "µs",
            20, "{:.0f}"),
        row(f"per header, HST cases ({cases['hst']})", "hst_us", "µs", 20, "{:.0f}"),
        row(f"per header, JWST cases ({cases['jwst']})", "jwst_us", "µs", 20, "{:.0f}"),
        row(f"batch of {BATCH:,} headers (cases cycled)", "batch_s", "s", None),
    ]
    if "ast_s" in ours:
        lines.append(f"| ... `ast.parse` alone of the same 137 files (floor of any eval-free "
                     f"loader) | | {ours['ast_s']:.3g} s | {crds['load_s'] / ours['ast_s']:.1f}x "
                     f"| | |")
    rss = (f"| peak RSS after load + all cases + batch | {crds['rss_mb']:.0f} MB | "
           f"{ours['rss_mb']:.0f} MB | {crds['rss_mb'] / ours['rss_mb']:.1f}x less | | |")
    lines.append(rss)
    return "\n".join(lines)


def write_docs(body: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOCS} lacks the bestrefs section markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(head + BEGIN + "\n" + body.rstrip() + "\n" + END + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--load-runs", type=int, default=3, help="load runs per side and round")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds (crds, crds-fs alternate); best kept")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        side, task = args.worker
        work = worker_load if task == "load" else worker_eval
        print(json.dumps(work(side, args.data)))
        return 0
    if not (args.data / "cases").is_dir():
        raise SystemExit(f"shared data not found at {args.data} (use --data)")
    cases = {obs: len(headers) for obs, headers in load_cases(args.data).items()}
    results = measure(args.data, args.load_runs, args.rounds)
    report = table(results, cases)
    print(report)
    if args.write_docs:
        write_docs(docs_text(report, results))
        print(f"updated {DOCS}", file=sys.stderr)
    return 0


def docs_text(report: str, results: dict[str, dict[str, float]]) -> str:
    machine = f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    ours = results["crds-fs"]
    ast_s = ours.get("ast_s", ours["load_s"])
    ast_share = f"{ast_s / ours['load_s']:.0%}"
    floor_ratio = f"{results['crds']['load_s'] / ast_s:.1f}x"
    budget_ms = max(0.0, (results["crds"]["load_s"] / 5 - ast_s) * 1000)
    rest_ms = (ours["load_s"] - ast_s) * 1000
    load_ratio = results["crds"]["load_s"] / ours["load_s"]
    per_header = results["crds"]["all_us"] / ours["all_us"]
    verdict = (f"per header {per_header:.1f}x ({'meets' if per_header >= 20 else 'below'} "
               f"the 20x goal); load {load_ratio:.1f}x "
               f"({'meets' if load_ratio >= 5 else 'below'} the 5x goal).")
    return f"""## Best references: crds-fs engine vs crds 14.0.3

Measured by `python scripts/bench_bestrefs.py --write-docs` ({machine}; both sides in
fresh subprocesses of the same run, warm OS file cache, shared test data).  crds runs
offline (`CRDS_MODE=local`) with `getrecommendations`; crds-fs runs
`Context.best_references` with the same bad-files list, so both do the same work
(conditioning, all reftypes of the instrument, bad-file checks).  Per-header numbers are
steady state (contexts loaded, first lookups done); JWST crds numbers include its
"Failed determining reftypes" warning path, which is what crds does without the `jwst`
package.

{report}

Goals: per header >= 20x faster than crds, load >= 5x faster.  What makes the difference:
mappings are parsed with `ast.parse` and converted by a whitelist walker (no compile/exec,
no per-value object churn), Match columns are indexed at load time (exact values and `A|B`
alternatives in a dict of row bitmasks, so a header value costs one dict lookup per
column), Match outcomes are memoised per tuple of column values, UseAfter is a `bisect`,
parsed dates are shared between the rmaps of one lookup, and constant relevance/omit
expressions are decided at load time.

Where it stands: {verdict}

`ast.parse` of the 137 files alone (the "floor" row) takes {ast_share} of crds-fs' load
time and is only {floor_ratio} faster than crds' whole load, so the load goal leaves
{budget_ms:.0f} ms for everything else (reading, checksums, converting the trees to plain
data, building the indexed selectors); that part takes {rest_ms:.0f} ms now.  Already done
for it: the cyclic GC is paused while each mapping is parsed and built; the tree walker
handles Match rows inline (tuple-of-constant keys, selector-call values) and all-constant
dicts with C-level `map`/`zip`; the header checksum hashes the spans around
the `sha1sum` line instead of splitting the text into lines; per-value conditioning and
matcher classification are memoised during a build, and plain literal Match values are
indexed without the general classifier.  Nothing is deferred: "load fully"
parses, checks and builds every mapping, Match column indexes included.

Caveat on that split: the floor row runs `ast.parse` after the load with the GC running
over a full heap; inside the load (GC paused) the same parsing takes ~100-105 ms in a
fresh process, so the rest is really ~60 ms.  What bounds it: per 137 files that is
roughly conversion of ~62k constant nodes to
plain data (~22 ms, about 0.35 µs a node, mostly attribute reads of the `ast` objects),
selector construction with the Match column indexes (~27 ms; the indexes ~7 ms of it),
reading the files (~7 ms, in `crds_fs/bestrefs/sources.py`) and SHA-1 (~2.5 ms).  Reaching 5x
would need the trees walked for free or the Match indexes built lazily on first lookup
(which would move load errors such as a bad `BETWEEN` to lookup time); the mapping
language must go through `ast.parse` (no hand-written parser, no compile/exec).
"""


if __name__ == "__main__":
    sys.exit(main())
