"""`crds-fs sync`: fill a crds-fs cache ahead of time, in parallel, speaking crds' vocabulary.

What to fetch is decided as `crds sync` decides it (crds 14.0.3 `crds.sync`):

* contexts: `--contexts CTX...` (pmap names, or ``operational`` / ``edit`` / ``latest``),
  `--range A:B` (pmaps whose serial is in A..B), `--last N` (the newest N pmaps) or `--all`;
  default `CRDS_CONTEXT`, else the server's operational context;
* every mapping of those contexts (the server's `get_mapping_names` closure);
* with `fetch_references`, every reference they name (narrowed by instruments / reftypes),
  plus the GEIS data file (``.rNd``) of each GEIS header (``.rNh``), as crds does;
* with dataset files or IDs, only the best references of those datasets under each context.

How it is fetched is exactly how a mount fetches: through `FileCache.ensure` (the one
fetcher: single flight across threads and processes, size+sha1 verified, atomic commit,
recorded in the shared index), by `jobs` worker threads, biggest files first so the
transfer does not end on one large straggler.  A mount sharing the cache directory sees each
committed file at once (its index lookups go to the same SQLite index).

Interrupting (KeyboardInterrupt in the waiting thread, or `Syncer.stop()`) keeps everything
committed so far; files in flight are dropped (their temp files are removed by the next open
of the cache) and a rerun fetches only what is still missing.

`--check-files` re-checks cached files of the set (existence and size; sha1 too with
`check_sha1sum`, and always for mappings, as crds does); `repair_files` deletes the bad ones
and fetches them again.  `dry_run` changes nothing: mappings not cached are read into
memory (verified) only to learn the references they name.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bestrefs.headers import read_header
from .bestrefs.resolver import BestrefsResolver, cache_source
from .bestrefs.sources import callable_source
from .client.names import is_mapping
from .errors import ConfigError, CrdsFsError, DatasetError, VerificationError
from .hashing import sha1_file

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .cache import FileCache

log = logging.getLogger(__name__)

#: Parallel downloads by default (crds sync: 1).
DEFAULT_JOBS = 8
#: Upper bound of --jobs: each job holds a pooled HTTP connection and a thread.
MAX_JOBS = 64
#: Files per worker process before a sync spreads over several processes (one per core).
PROCESS_MIN_FILES = 256
#: Seconds between progress reports while downloads run.
TICK = 0.2
#: A mapping read into memory for a dry run may be at most this large.
MAX_PEEK_BYTES = 64 * 1024 * 1024
#: Symbolic context names and the server-info fields that resolve them (first one set).
SYMBOLIC = {"operational": ("operational_context",),
            "latest": ("latest_context", "operational_context"),
            "edit": ("edit_context",)}
_GEIS_HEADER = re.compile(r"^(.*\.r\d)h$")
_SERIAL = re.compile(r"^[a-z]+_(\d+)\.pmap$")


@dataclass(frozen=True)
class SyncRequest:
    """What to sync (the crds sync options); see the module doc."""

    contexts: tuple[str, ...] = ()
    range: tuple[int, int] | None = None
    last: int | None = None
    all: bool = False
    fetch_references: bool = False
    instruments: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    dataset_files: tuple[Path, ...] = ()
    dataset_ids: tuple[str, ...] = ()
    check_files: bool = False
    check_sha1sum: bool = False
    repair_files: bool = False

    def __post_init__(self) -> None:
        chosen = [bool(self.contexts), self.range is not None, self.last is not None, self.all]
        if sum(chosen) > 1:
            raise ConfigError("give only one of --contexts, --range, --last, --all")
        if self.range is not None and not 0 <= self.range[0] <= self.range[1]:
            raise ConfigError(f"--range {self.range[0]}:{self.range[1]}: need 0 <= MIN <= MAX")
        if self.last is not None and self.last < 1:
            raise ConfigError(f"--last {self.last}: need at least 1")
        if (self.instruments or self.types) and not self.fetch_references:
            raise ConfigError("--instruments / --types narrow --fetch-references; add it")
        if (self.instruments or self.types) and self.wants_datasets:
            raise ConfigError("--instruments / --types narrow --fetch-references, not the "
                              "references of --dataset-files / --dataset-ids")

    @property
    def wants_datasets(self) -> bool:
        return bool(self.dataset_files or self.dataset_ids)

    @property
    def checking(self) -> bool:
        return self.check_files or self.check_sha1sum or self.repair_files


@dataclass
class SyncReport:
    """What a sync did (or, dry run, would do); filled in as it goes, so it is complete up
    to the point of an interruption."""

    cache_dir: str = ""
    dry_run: bool = False
    contexts: list[str] = field(default_factory=list)
    #: every file of the request: name -> catalog size
    wanted: dict[str, int] = field(default_factory=dict)
    #: downloaded and committed now (dry run: would be downloaded)
    fetched: list[str] = field(default_factory=list)
    #: already cached (recorded in the index, or found on disk and verified)
    cached: list[str] = field(default_factory=list)
    #: failed --check-files and were fetched again (dry run: would be)
    repaired: list[str] = field(default_factory=list)
    #: name (file, dataset or context) -> what went wrong
    failed: dict[str, str] = field(default_factory=dict)
    #: wanted files not fetched because the sync was interrupted
    not_done: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def bytes_of(self, names: Iterable[str]) -> int:
        return sum(self.wanted.get(n, 0) for n in names)

    def to_json(self) -> dict[str, Any]:
        return {
            "cache_dir": self.cache_dir, "dry_run": self.dry_run, "contexts": self.contexts,
            "wanted": len(self.wanted), "wanted_bytes": self.bytes_of(self.wanted),
            "fetched": sorted(self.fetched), "fetched_bytes": self.bytes_of(self.fetched),
            "cached": len(self.cached), "repaired": sorted(self.repaired),
            "failed": dict(sorted(self.failed.items())), "not_done": sorted(self.not_done),
            "bytes_fetched": self.bytes_fetched, "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted, "ok": self.ok,
        }


#: ``progress(stage, files_done, files_total, bytes_done, bytes_total)``, called with
#: files_done=0 when a stage starts, every TICK seconds and after each file.
SyncProgress = Callable[[str, int, int, int, int], None]


class Interrupted(Exception):
    """The sync was stopped (Ctrl-C or `Syncer.stop()`); the report says how far it got."""


class Syncer:
    """Plans and runs syncs into one open `FileCache` (see the module doc)."""

    def __init__(self, cache: FileCache, *, jobs: int = DEFAULT_JOBS,
                 progress: SyncProgress | None = None, processes: int | None = 1) -> None:
        """*processes*: worker processes for big sets; 1 (the default): threads of this
        process only; None: one per core when there are `PROCESS_MIN_FILES` files per
        process (the CLI's choice).  More than one spawns processes, so a script calling
        this must guard its main code with ``if __name__ == "__main__":``."""
        if not 1 <= jobs <= MAX_JOBS:
            raise ConfigError(f"--jobs {jobs}: use 1 to {MAX_JOBS}")
        self.cache = cache
        self.jobs = jobs
        self.progress = progress
        self.processes = processes
        self.resolver = BestrefsResolver(cache)
        self._stop = threading.Event()
        self.report = SyncReport(cache_dir=str(cache.store.root))

    def stop(self) -> None:
        """Ask a running sync to stop after the files in flight (thread-safe)."""
        self._stop.set()

    # --- the whole run ----------------------------------------------------------------------

    def run(self, request: SyncRequest, *, dry_run: bool = False) -> SyncReport:
        """Sync *request* (or, *dry_run*, only find out what that would fetch).

        Never raises for a file: failures are in `report.failed`.  Raises ConfigError for
        a request that cannot be resolved (unknown context, bad option).
        """
        report = self.report
        report.dry_run = dry_run
        started = time.monotonic()
        try:
            contexts = self.contexts(request)
            report.contexts = contexts
            loader = self._loader(dry_run)
            mappings = self.mapping_closure(contexts, loader)
            self._sync("mappings", mappings, request, dry_run)
            loaded = self._load_contexts(contexts, loader)
            if request.wants_datasets:
                references = self.dataset_references(loaded, request)
            elif request.fetch_references:
                references = self.context_references(loaded, request)
            else:
                references = []
            self._sync("references", references, request, dry_run)
        except (KeyboardInterrupt, Interrupted):
            report.interrupted = True
        finally:
            report.seconds = time.monotonic() - started
            if report.interrupted:
                done = set(report.fetched) | set(report.cached) | set(report.failed)
                report.not_done = sorted(set(report.wanted) - done)
        return report

    # --- which contexts ---------------------------------------------------------------------

    def contexts(self, request: SyncRequest) -> list[str]:
        """The pmaps of *request*, sorted; ConfigError for unknown or unsupported names."""
        pmaps = sorted(n for n in self.cache.catalog.mappings() if n.endswith(".pmap"))
        obs = self.cache.observatory
        if request.contexts:
            found = {self._resolve_context(name, pmaps) for name in request.contexts}
            return sorted(found)
        if request.all:
            chosen = pmaps
        elif request.last is not None:
            chosen = pmaps[-request.last:]
        elif request.range is not None:
            low, high = request.range
            chosen = [p for p in pmaps if (m := _SERIAL.match(p)) and low <= int(m[1]) <= high]
            if not chosen:
                raise ConfigError(f"--range {low}:{high}: the {obs} catalog of "
                                  f"{self._server()} has no context with a serial in that "
                                  "range")
        else:
            return [self._resolve_context(self.cache.settings.context or "operational", pmaps)]
        if not chosen:
            raise ConfigError(f"the {obs} catalog of {self._server()} lists no contexts")
        return chosen

    def _resolve_context(self, name: str, pmaps: list[str]) -> str:
        obs = self.cache.observatory
        key = name.lower().removeprefix(f"{obs}-")
        if key in SYMBOLIC:
            info = self.cache.server_info
            value = next((info[f] for f in SYMBOLIC[key] if info.get(f)), None)
            if not value:
                raise ConfigError(f"{self._server()} names no {SYMBOLIC[key][0]} for '{name}'")
            name = str(value)
        if not name.endswith(".pmap"):
            raise ConfigError(
                f"'{name}': crds-fs sync takes pipeline contexts (*.pmap), 'operational' or "
                "'edit'; to sync part of a context use --instruments / --types")
        if name not in pmaps:
            raise ConfigError(f"context '{name}' is not in the {obs} catalog of "
                              f"{self._server()}; check the name")
        return name

    def _server(self) -> str:
        return self.cache.catalog.server_url or self.cache.settings.server_url

    # --- mappings and references ------------------------------------------------------------

    def _loader(self, dry_run: bool) -> Any:
        """The engine's mapping source: the cache itself (fetching and committing), or for a
        dry run the cached file else the verified text read into memory."""
        if not dry_run:
            return cache_source(self.cache)
        cache = self.cache
        peeked: dict[str, bytes] = {}

        def fetch(name: str) -> Any:
            path = cache.cached_path(name)
            if path is not None and path.exists():
                return path
            if name not in peeked:
                peeked[name] = self._peek(name)
            return peeked[name]

        identity = ("crds-fs-sync-dry-run", str(cache.store.root), cache.observatory)
        return callable_source(fetch, identity, f"{cache.observatory} mappings of "
                               f"{self._server()} (dry run)", cache.catalog.bad_files)

    def _peek(self, name: str) -> bytes:
        """The verified bytes of a small uncached file, not written anywhere (dry runs)."""
        fetcher = self.cache.fetcher
        info = fetcher.info(name)
        if info.size > MAX_PEEK_BYTES:
            raise DatasetError(f"{name} is {info.size} bytes: too large to be a mapping")
        url = self.cache.client.file_url(name, self.cache.observatory)
        response = fetcher.open_body(url)
        data = bytearray()
        try:
            from .client.rpc import iter_chunks  # requests: only when a dry run peeks

            for chunk in iter_chunks(response, 256 * 1024):
                data += chunk
                if len(data) > info.size:
                    break
        finally:
            response.close()
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        if len(data) != info.size or (info.sha1 and digest != info.sha1):
            raise VerificationError(f"{name} from {url} does not match the server catalog "
                                    f"(size {len(data)}/{info.size}, sha1 {digest}/{info.sha1})")
        return bytes(data)

    def mapping_closure(self, contexts: list[str], loader: Any) -> list[str]:
        """Every mapping of *contexts* (incl. themselves): the server's closure, else the
        local engine's (offline, or a server without get_mapping_names)."""
        names: set[str] = set()
        for context in contexts:
            try:
                names.update(self.resolver.mapping_names(context))
            except CrdsFsError as exc:
                log.info("get_mapping_names(%s) failed (%s); walking the context locally",
                         context, exc)
                names.update(loader.load_context(context).mapping_names())
        return sorted(names)

    def _load_contexts(self, contexts: list[str], loader: Any) -> dict[str, Any]:
        loaded: dict[str, Any] = {}
        for context in contexts:
            try:
                loaded[context] = loader.load_context(context)
            except CrdsFsError as exc:
                self.report.failed[context] = f"cannot load the context: {exc}"
        return loaded

    def context_references(self, loaded: Mapping[str, Any], request: SyncRequest) -> list[str]:
        """References named by the loaded contexts, narrowed by instruments / types, plus
        GEIS conjugates; ConfigError when a narrowing name matches nothing at all."""
        wanted_instruments = {i.lower() for i in request.instruments}
        wanted_types = {t.lower() for t in request.types}
        seen_instruments: set[str] = set()
        seen_types: set[str] = set()
        names: set[str] = set()
        for context in loaded.values():
            for instrument in context.instruments():
                if wanted_instruments and instrument not in wanted_instruments:
                    continue
                seen_instruments.add(instrument)
                for reftype, rmap in context.instrument(instrument).rmaps.items():
                    if wanted_types and reftype.lower() not in wanted_types:
                        continue
                    seen_types.add(reftype.lower())
                    names |= rmap.reference_names()
        unknown = sorted(wanted_instruments - seen_instruments)
        if unknown and loaded:
            raise ConfigError(f"--instruments {', '.join(unknown)}: not in "
                              f"{', '.join(loaded)}")
        unknown = sorted(wanted_types - seen_types)
        if unknown and loaded:
            scope = " for those instruments" if wanted_instruments else ""
            raise ConfigError(f"--types {', '.join(unknown)}: no such reference type in "
                              f"{', '.join(loaded)}{scope}")
        return self._with_conjugates(names)

    def _with_conjugates(self, names: Iterable[str]) -> list[str]:
        """*names* plus the GEIS data file of each GEIS header (crds sync's conjugates)."""
        found = set(names)
        for name in list(found):
            match = _GEIS_HEADER.match(name)
            if match:
                found.add(match[1] + "d")
        return sorted(found)

    def dataset_references(self, loaded: Mapping[str, Any], request: SyncRequest) -> list[str]:
        """Best references of the request's dataset files and IDs under every context;
        unreadable datasets, unknown IDs and failed lookups are named in `report.failed`."""
        names: set[str] = set()
        for context in loaded:
            headers = self._dataset_headers(context, request)
            if not headers:
                continue
            outcomes = self.resolver.best_references(context, headers)
            for label, outcome in outcomes.items():
                if outcome.error is not None:
                    self.report.failed[f"{label} ({context})"] = outcome.error
                    continue
                found = outcome.found()
                for reftype, value in sorted(outcome.bestrefs.items()):
                    if reftype not in found and "n/a" not in str(value).lower():
                        log.info("%s under %s: no %s (%s)", label, context, reftype, value)
                names.update(found.values())
        return self._with_conjugates(names)

    def _dataset_headers(self, context: str, request: SyncRequest) -> dict[str, dict[str, str]]:
        headers: dict[str, dict[str, str]] = {}
        failed = self.report.failed
        if request.dataset_files:
            parkeys = self.resolver.required_parkeys(context)
            for path in request.dataset_files:
                try:
                    headers[str(path)] = read_header(Path(path), parkeys)
                except (DatasetError, OSError) as exc:
                    failed[str(path)] = f"cannot read the dataset: {exc}"
        if request.dataset_ids:
            try:
                answer = self.cache.client.get_dataset_headers_by_id(
                    context, list(request.dataset_ids))
            except CrdsFsError as exc:
                for dataset in request.dataset_ids:
                    failed[dataset] = f"get_dataset_headers_by_id ({context}) failed: {exc}"
                return headers
            answer = answer if isinstance(answer, dict) else {}
            for dataset in request.dataset_ids:
                # crds sync: an association ID selects every member whose ID contains it
                keys = sorted(k for k in answer if dataset.upper() in str(k).upper())
                if not keys:
                    failed[dataset] = (f"the server {self._server()} knows no dataset "
                                       f"'{dataset}' (get_dataset_headers_by_id, {context})")
                for key in keys:
                    value = answer[key]
                    if isinstance(value, dict):
                        headers[str(key)] = {str(k): str(v) for k, v in value.items()}
                    else:
                        failed[str(key)] = f"no header from the server: {value}"
        return headers

    # --- one stage: check, then fetch -------------------------------------------------------

    def _sync(self, stage: str, names: list[str], request: SyncRequest, dry_run: bool) -> None:
        """Make every file of *names* present and verified (dry run: only classify)."""
        report = self.report
        catalog = self.cache.catalog
        todo: list[str] = []
        cached: list[str] = []
        for name in names:
            info = catalog.get(name)
            if info is None:
                report.failed[name] = (f"named by {', '.join(report.contexts)} but not in the "
                                       f"server catalog of {self._server()}")
                continue
            report.wanted[name] = info.size
            path = self.cache.cached_path(name)
            if path is not None and path.exists():
                cached.append(name)
            elif dry_run and _size_of(self.cache.local_path(name)) == info.size:
                cached.append(name)  # on disk but not indexed: adopted (hashed) when run
            else:
                todo.append(name)
        if request.checking:
            bad = self.check(cached, sha1=request.check_sha1sum, stage=stage)
            for name, problem in bad.items():
                if request.repair_files:
                    log.warning("repairing %s: %s", name, problem)
                    if not dry_run:
                        self.cache.store.remove(name)
                        self.cache.index.remove(name)
                    report.repaired.append(name)
                    todo.append(name)
                else:
                    report.failed[name] = f"check failed: {problem}; --repair-files fetches " \
                                          "it again"
            cached = [n for n in cached if n not in bad]
        report.cached.extend(cached)
        if dry_run:
            report.fetched.extend(todo)
            return
        self.fetch(stage, todo)

    def check(self, names: list[str], *, sha1: bool, stage: str = "checking") -> dict[str, str]:
        """{name: problem} for cached files that are missing, of the wrong size, or (with
        *sha1*, and always for mappings) of the wrong sha1.  Runs `jobs` hashes at once."""
        catalog = self.cache.catalog

        def problem(name: str) -> str | None:
            info = catalog.get(name)
            path = self.cache.local_path(name)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return f"{path} is missing"
            if info is None:
                return None
            if size != info.size:
                return f"{path} has {size} bytes, the catalog says {info.size}"
            if (sha1 or is_mapping(name)) and info.sha1:
                _size, digest = sha1_file(path)
                if digest != info.sha1:
                    return f"{path} has sha1 {digest}, the catalog says {info.sha1}"
            return None

        total = len(names)
        self._report(f"checking {stage}", 0, total, 0, 0)
        bad: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for done, (name, found) in enumerate(zip(names, pool.map(problem, names),
                                                     strict=True), start=1):
                if found is not None:
                    bad[name] = found
                self._report(f"checking {stage}", done, total, 0, 0)
                if self._stop.is_set():
                    raise Interrupted()
        return bad

    def fetch(self, stage: str, names: list[str]) -> None:
        """Download *names* with `jobs` parallel downloads, biggest first, into the report.

        Small sets run on threads of this process; big ones (`PROCESS_MIN_FILES` files per
        process) are spread over up to one process per core, so the per-file Python work
        (HTTP, index, hashing) is not serialised on one interpreter lock.  Every worker
        uses its own `FileCache` on the same directory (the fetcher's locks make that
        safe).  Workers never hold a half-committed file: a KeyboardInterrupt while
        waiting abandons the files in flight and propagates at once.
        """
        report = self.report
        if not names:
            return
        order = sorted(names, key=lambda n: (-report.wanted.get(n, 0), n))
        total_bytes = report.bytes_of(order)
        processes = self.processes_for(len(order))
        pool: _Pool = (_ProcessPool(self, order, processes) if processes > 1
                       else _ThreadPool(self, order))
        pending = set(order)
        committed = 0
        self._report(stage, 0, len(order), 0, total_bytes)
        pool.start()
        try:
            while pending:
                message = pool.get(TICK)
                if message is None:
                    if self._stop.is_set():
                        pool.request_stop()
                    if not pool.alive():
                        if self._stop.is_set():
                            raise Interrupted()
                        for name in sorted(pending):  # a worker process died
                            report.failed[name] = f"not fetched: {pool.why_dead()}"
                        break
                    moving = min(pool.moving_bytes(), total_bytes)
                    self._report(stage, len(order) - len(pending), len(order),
                                 max(moving, committed), total_bytes)
                    continue
                name, existed, error = message
                pending.discard(name)
                size = report.wanted.get(name, 0)
                if error is not None:
                    report.failed[name] = error
                elif existed:
                    report.cached.append(name)  # found on disk, verified and adopted
                else:
                    report.fetched.append(name)
                    report.bytes_fetched += size
                committed += size
                self._report(stage, len(order) - len(pending), len(order), committed,
                             total_bytes)
        except KeyboardInterrupt:
            self._stop.set()  # no new files; the ones in flight are abandoned
            pool.abandon()
            raise
        pool.join()

    def processes_for(self, files: int) -> int:
        """Worker processes for *files* downloads (1: threads of this process only)."""
        if self.processes is not None:
            return max(1, min(self.processes, self.jobs))
        return max(1, min(os.cpu_count() or 1, self.jobs, files // PROCESS_MIN_FILES))

    def _report(self, stage: str, done: int, total: int, nbytes: int, total_bytes: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total, nbytes, total_bytes)


# --- workers ----------------------------------------------------------------------------------

#: (name, existed before, error or None) for one file
_Result = tuple[str, bool, "str | None"]


def _fetch_one(cache: FileCache, name: str) -> _Result:
    """Ensure *name* (the fetcher's one download path); never raises for the file."""
    try:
        _path, fetched = cache.fetch(name)
        return name, not fetched, None
    except CrdsFsError as exc:
        return name, False, str(exc)
    except Exception as exc:  # noqa: BLE001 - one file's bug must not stop the rest
        log.exception("unexpected error fetching %s", name)
        return name, False, f"{type(exc).__name__}: {exc}"


class _Pool:
    """Workers fetching the names of one work list; their results come back by `get`."""

    def start(self) -> None:
        raise NotImplementedError

    def get(self, timeout: float) -> _Result | None:
        """The next file's result, or None when none came within *timeout* seconds."""
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def moving_bytes(self) -> int:
        """Bytes received so far by the workers (files in flight included)."""
        raise NotImplementedError

    def request_stop(self) -> None:
        """No new files; the ones in flight finish."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Stop now: files in flight are dropped (never committed half-way)."""
        raise NotImplementedError

    def join(self) -> None:
        raise NotImplementedError

    def why_dead(self) -> str:
        return "the workers stopped early"


class _ThreadPool(_Pool):
    """`jobs` daemon threads of this process, sharing its FileCache."""

    def __init__(self, syncer: Syncer, order: list[str]) -> None:
        self.syncer = syncer
        self.work: queue.SimpleQueue[str] = queue.SimpleQueue()
        for name in order:
            self.work.put(name)
        self.results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, daemon=True,
                                         name=f"crds-fs-sync-{i}")
                        for i in range(min(syncer.jobs, len(order)))]
        self.base = int(syncer.cache.fetcher.snapshot()["bytes"])

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        stop = self.syncer._stop
        while not stop.is_set():
            try:
                name = self.work.get_nowait()
            except queue.Empty:
                return
            result = _fetch_one(self.syncer.cache, name)
            if stop.is_set() and result[2] is not None:
                return  # abandoned at an interruption (the cache may be closing)
            self.results.put(result)

    def get(self, timeout: float) -> _Result | None:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return None

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads) or not self.results.empty()

    def moving_bytes(self) -> int:
        return int(self.syncer.cache.fetcher.snapshot()["bytes"]) - self.base

    def request_stop(self) -> None:
        self.syncer._stop.set()

    def abandon(self) -> None:
        self.syncer._stop.set()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()


class _ProcessPool(_Pool):
    """Spawned worker processes, each with its own FileCache on the same directory and
    `jobs / processes` threads; names come from one shared queue, biggest first."""

    def __init__(self, syncer: Syncer, order: list[str], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        threads = max(1, -(-syncer.jobs // processes))
        self.work: Any = context.Queue()
        for name in order:
            self.work.put(name)
        for _ in range(processes * threads):
            self.work.put(None)  # one end marker per worker thread
        self.results: Any = context.Queue()
        self.stop = context.Event()
        cache = syncer.cache
        self.procs = [context.Process(
            target=_process_main, name=f"crds-fs-sync-{i}", daemon=True,
            args=(i, cache.settings, cache.observatory, threads, self.work, self.results,
                  self.stop)) for i in range(processes)]
        self.bytes = [0] * processes
        self.fatal: list[str] = []

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def get(self, timeout: float) -> _Result | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.results.get(timeout=max(0.001, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if message[0] == "file":
                return message[1], message[2], message[3]
            if message[0] == "bytes":
                self.bytes[message[1]] = message[2]
            elif message[0] == "fatal":
                self.fatal.append(message[1])
            if time.monotonic() >= deadline:
                return None

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs) or not self.results.empty()

    def moving_bytes(self) -> int:
        return sum(self.bytes)

    def why_dead(self) -> str:
        codes = ", ".join(str(p.exitcode) for p in self.procs)
        return "; ".join(self.fatal) or f"the worker processes exited (status {codes})"

    def request_stop(self) -> None:
        self.stop.set()

    def abandon(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.terminate()  # files in flight are dropped; commits are atomic
        for proc in self.procs:
            proc.join(10)
        # names nobody will read any more must not hold up this process's exit
        self.work.cancel_join_thread()
        self.results.cancel_join_thread()

    def join(self) -> None:
        for proc in self.procs:
            proc.join(60)
            if proc.is_alive():
                proc.terminate()


def _process_main(index: int, settings: Any, observatory: str, threads: int, work: Any,
                  results: Any, stop: Any) -> None:
    """A worker process: fetch names from *work* with *threads* threads until end markers.

    Ctrl-C is the parent's to handle (it stops or terminates us), so SIGINT is ignored;
    if the parent dies (SIGKILL, SIGTERM) we exit at once too: files in flight are dropped
    (their temp files are removed by the next open), committed ones stay.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    from .cache import FileCache

    try:
        cache = FileCache.open(settings, observatory=observatory)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(("fatal", f"worker process {index}: cannot open the cache: {exc}"))
        return

    def run() -> None:
        while not stop.is_set():
            name = work.get()
            if name is None:
                return
            results.put(("file", *_fetch_one(cache, name)))

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    try:
        for thread in workers:
            while thread.is_alive():
                thread.join(TICK)
                if parent is not None and not parent.is_alive():
                    os._exit(1)
                results.put(("bytes", index, int(cache.fetcher.snapshot()["bytes"])))
    finally:
        results.put(("bytes", index, int(cache.fetcher.snapshot()["bytes"])))
        cache.close()


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def parse_range(text: str) -> tuple[int, int]:
    """``A:B`` -> (A, B) (crds' --range syntax); ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--range {text!r}: expected MIN:MAX, e.g. 720:729")
    return int(match[1]), int(match[2])


__all__ = ["DEFAULT_JOBS", "SyncProgress", "SyncReport", "SyncRequest", "Syncer",
           "parse_range"]
