"""The `bestrefs/` dataset registry: which datasets a mount shows and their answers.

`BestrefsView` is the dataset side of the `bestrefs/` directory: which datasets exist
(a `--datasets` folder, names registered with `ln -s`, and any dataset ID the server
knows), their headers, and their answers under the current context, which follows the
server's operational context when asked to (polled in the background).  The answers come
from `crds_fs.bestrefs.resolver.BestrefsResolver`.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigError,
    CrdsFsError,
    DatasetError,
    NoSuchPathError,
    ServerUnreachableError,
    ServiceError,
)
from . import headers as ds

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..cache import FileCache

from .resolver import BestrefsResolver, Outcome

log = logging.getLogger(__name__)

#: Answers computed in one go when a dataset of the view is first needed (its neighbours
#: from the same folder ride along in the same RPC: `ls -l bestrefs/*/` costs one call).
DEFAULT_PREFETCH = 256
#: Seconds a filesystem call waits for dataset headers (CRDS_FS_HEADER_WAIT).
DEFAULT_HEADER_WAIT = 15.0
#: Threads reading dataset headers for one mount.
DEFAULT_HEADER_WORKERS = 4
#: Extra seconds a dataset's answer waits for its neighbours' headers once its own is
#: read (neighbours not ready by then are skipped: they get their own answer later).
NEIGHBOUR_GRACE = 2.0
#: Longest a call waits for the header libraries to load (once per process) on top of
#: the header wait.
READERS_WAIT = 120.0
_KEY = "bestrefs:"


# --- the datasets of the bestrefs/ view ---------------------------------------------------


@dataclass(frozen=True)
class ViewOptions:
    """How a mount's `bestrefs/` directory finds datasets and decides answers."""

    engine: str = "auto"
    #: folder whose dataset files appear as bestrefs/<file name without extension>/
    datasets: Path | None = None
    #: seconds between checks of the server's operational context (when following it)
    poll: float = 60.0
    #: follow the server's operational context (mounts started with --context operational)
    follow_operational: bool = False
    prefetch: int = DEFAULT_PREFETCH
    #: seconds a filesystem call waits for header reading before answering EIO (the
    #: reading goes on in the background and its result is kept for the next call)
    header_wait: float = DEFAULT_HEADER_WAIT
    #: threads reading dataset headers (never the FUSE threads themselves)
    header_workers: int = DEFAULT_HEADER_WORKERS

    @classmethod
    def from_env(cls) -> ViewOptions:
        """Options from CRDS_FS_BESTREFS_ENGINE / CRDS_FS_DATASETS / CRDS_FS_BESTREFS_POLL /
        CRDS_FS_HEADER_WAIT."""
        datasets = os.environ.get("CRDS_FS_DATASETS")
        return cls(engine=os.environ.get("CRDS_FS_BESTREFS_ENGINE") or "auto",
                   datasets=Path(datasets) if datasets else None,
                   poll=_env_seconds("CRDS_FS_BESTREFS_POLL", 60.0),
                   header_wait=_env_seconds("CRDS_FS_HEADER_WAIT", DEFAULT_HEADER_WAIT))


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


class HeaderTimeoutError(DatasetError):
    """Header reading did not finish within the wait of a filesystem call (EIO)."""


class HeaderWork:
    """Header reading on worker threads of its own, never on the threads answering FUSE.

    A FUSE thread that read a hostile file itself could hang with it (and one dataset's
    answer reads its neighbours' headers too); here callers wait for a job with a deadline
    and move on.  The same key (file version) is read by one job at a time, so a stuck file
    ties up at most one worker however often it is asked for.  Workers are daemon threads:
    a stuck one never keeps the process from exiting (SIGTERM, unmount).
    """

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, _Job]] = queue.PriorityQueue()
        self._jobs: dict[Any, _Job] = {}
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          name=f"crds-fs-headers-{n}")
                         for n in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Any, work: Callable[[], Any], *, urgent: bool = False) -> _Job:
        """The job computing *key* (an existing unfinished one, or a new one).

        *urgent* jobs (the dataset a call asks about) go before queued neighbours; a queued
        job asked for urgently is queued again in front (the worker skips the stale entry).
        """
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = _Job(key, work)
            elif not urgent or job.urgent or job.started:
                return job
            job.urgent = job.urgent or urgent
            self._queue.put((0 if urgent else 1, next(self._order), job))
            return job

    def _run(self) -> None:
        while True:
            job = self._queue.get()[2]
            with self._lock:
                if job.started:
                    continue
                job.started = True
            try:
                job.result = job.work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                job.error = exc
            finally:
                with self._lock:
                    self._jobs.pop(job.key, None)
                job.done.set()


class _Job:
    __slots__ = ("key", "work", "done", "result", "error", "created", "started", "urgent")

    def __init__(self, key: Any, work: Callable[[], Any]) -> None:
        self.key = key
        self.work = work
        self.created = time.monotonic()
        self.started = False
        self.urgent = False
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def wait(self, deadline: float) -> bool:
        return self.done.wait(max(0.0, deadline - time.monotonic()))

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(frozen=True)
class Dataset:
    """A directory of bestrefs/: a local file, or a dataset ID known to the server."""

    name: str
    path: Path | None = None
    dataset_id: str | None = None
    #: "folder", "registered" or "id"
    origin: str = "folder"


@dataclass(frozen=True)
class Answer:
    """Everything bestrefs/<name>/ shows."""

    dataset: Dataset
    context: str
    engine: str
    header: dict[str, str] = field(default_factory=dict)
    bestrefs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    missing_keywords: list[str] = field(default_factory=list)
    #: reftype -> reference for which the mount has a file (the symlinks)
    links: dict[str, str] = field(default_factory=dict)
    #: reftype -> reference the rules name but the mount's catalog lacks
    unavailable: dict[str, str] = field(default_factory=dict)

    def document(self, observatory: str) -> dict[str, Any]:
        """The bestrefs.json object."""
        return {
            "dataset": self.dataset.name,
            "dataset_id": self.dataset.dataset_id,
            "file": str(self.dataset.path) if self.dataset.path else None,
            "origin": self.dataset.origin,
            "observatory": observatory,
            "context": self.context,
            "engine": self.engine,
            "error": self.error,
            "bestrefs": dict(sorted(self.bestrefs.items())),
            "links": {t: f"../../references/{observatory}/{n}" for t, n in self.links.items()},
            "unavailable": self.unavailable,
            "missing_keywords": self.missing_keywords,
            "header": dict(sorted(self.header.items())),
        }

    def json_bytes(self, observatory: str) -> bytes:
        return (json.dumps(self.document(observatory), indent=2) + "\n").encode("utf-8")


class BestrefsView:
    """Datasets and their answers for one mount's `bestrefs/` (thread-safe)."""

    def __init__(self, cache: FileCache, *, context: str, options: ViewOptions,
                 mountpoint: str | None = None) -> None:
        self.cache = cache
        self.options = options
        self.mountpoint = os.path.realpath(mountpoint) if mountpoint else None
        self.observatory = cache.observatory
        self.resolver = BestrefsResolver(cache, engine=options.engine)
        self.db = cache.index.db
        self._context = context
        self._lock = threading.RLock()
        self._answers: dict[tuple[str, str], tuple[Any, Answer]] = {}
        self._headers: dict[tuple[str, Any], dict[str, str] | DatasetError] = {}
        self._work = HeaderWork(options.header_workers)
        self._missing_ids: dict[str, float] = {}
        self._folder: dict[str, Path] = {}
        self._folder_scanned = -1.0e9
        self._prefetched: set[str] = set()
        self._registered_key = f"{_KEY}registered:{self.observatory}"
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if options.datasets is not None and not Path(options.datasets).is_dir():
            raise ConfigError(f"--datasets {options.datasets}: not a folder")
        if options.datasets is not None or self.registered():
            # astropy/asdf set-up takes seconds: not inside the first filesystem call's wait
            threading.Thread(target=ds.warm_up, daemon=True,
                             name="crds-fs-headers-warm-up").start()
        if options.follow_operational and cache.online:
            self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                            name="crds-fs-bestrefs-context")
            self._poller.start()

    def close(self) -> None:
        self._stop.set()

    # --- context ----------------------------------------------------------------------------

    @property
    def context(self) -> str:
        return self._context

    def set_context(self, context: str) -> None:
        """Switch to *context*; answers of the old one are dropped from memory at once."""
        with self._lock:
            if context != self._context:
                log.info("bestrefs/: context %s -> %s", self._context, context)
                self._context = context
                self._answers.clear()
                self._missing_ids.clear()

    def check_context(self) -> str:
        """Ask the server for its operational context now and follow it."""
        context = self.cache.client.get_default_context(self.observatory)
        if isinstance(context, str) and context:
            self.set_context(context)
        return self._context

    #: set by the mount's refresher (crds_fs.namespace.refresh), which moves the context
    #: together with the catalog: this view's own poll then stops
    driven = False

    def _poll_loop(self) -> None:
        while not self._stop.wait(max(0.2, self.options.poll)) and not self.driven:
            try:
                self.check_context()
            except CrdsFsError as exc:
                log.info("bestrefs/: cannot check the operational context: %s", exc)

    # --- which datasets exist -----------------------------------------------------------------

    def folder_datasets(self) -> dict[str, Path]:
        """name -> file for the --datasets folder (re-walked at most once a second)."""
        folder = self.options.datasets
        if folder is None:
            return {}
        now = time.monotonic()
        if now - self._folder_scanned >= 1.0:
            found: dict[str, Path] = {}
            for path in ds.find_dataset_files(folder):
                name = ds.dataset_name(path)
                if name in found:
                    log.info("bestrefs/: %s hidden by %s (same name)", path, found[name])
                    continue
                found[name] = path.resolve()
            self._folder, self._folder_scanned = found, now
        return self._folder

    def registered(self) -> dict[str, Path]:
        """name -> file registered with `ln -s FILE MOUNT/bestrefs/NAME` (persisted)."""
        stored = self.db.get(self._registered_key) or {}
        return {name: Path(path) for name, path in stored.items()}

    def local_names(self) -> list[str]:
        """What `ls bestrefs/` shows: folder datasets and registered ones."""
        return sorted({*self.folder_datasets(), *self.registered()})

    def lookup(self, name: str) -> Dataset | None:
        """The dataset behind bestrefs/<name>: local file first, then a server dataset ID."""
        folder = self.folder_datasets()
        if name in folder:
            return Dataset(name, folder[name], ds.dataset_id(folder[name]), "folder")
        registered = self.registered()
        if name in registered:
            return Dataset(name, registered[name], ds.dataset_id(registered[name]), "registered")
        if name.startswith(".") or not ds.is_valid_id(name):
            return None
        for path in list(folder.values()) + list(registered.values()):
            if ds.dataset_id(path) == name.upper():
                return Dataset(name, path, ds.dataset_id(path), "folder")
        if self._id_header(name) is None:
            return None
        return Dataset(name, None, name.upper(), "id")

    def register(self, name: str, target: str) -> Path:
        """Remember *target* (a dataset file) as bestrefs/<name>; returns the resolved file."""
        if not name or name.startswith(".") or "/" in name or not ds.is_valid_id(name):
            raise ConfigError(f"bestrefs/{name}: not a usable dataset name "
                              "(letters, digits and . _ : + - only, not starting with '.')")
        path = self._register_target(target)
        if name in self.folder_datasets():
            raise FileExistsDatasetError(
                f"bestrefs/{name} already exists: it comes from the --datasets folder")
        with self._lock:
            stored = dict(self.db.get(self._registered_key) or {})
            if name in stored:
                raise FileExistsDatasetError(f"bestrefs/{name} is already registered "
                                             f"(-> {stored[name]}); rm it first")
            stored[name] = str(path)
            self.db.set(self._registered_key, stored)
            self._drop(name)
        log.info("bestrefs/: registered %s -> %s", name, path)
        return path

    def forget(self, name: str) -> bool:
        """Unregister bestrefs/<name>; False when it was not registered."""
        with self._lock:
            stored = dict(self.db.get(self._registered_key) or {})
            if stored.pop(name, None) is None:
                return False
            self.db.set(self._registered_key, stored)
            self._drop(name)
        log.info("bestrefs/: forgot %s", name)
        return True

    def _drop(self, name: str) -> None:
        for key in [k for k in self._answers if k[1] == name]:
            del self._answers[key]

    def _register_target(self, target: str) -> Path:
        if not os.path.isabs(target):
            if self.mountpoint is None:
                raise ConfigError(f"ln -s {target}: use an absolute path to the dataset file")
            target = os.path.join(self.mountpoint, "bestrefs", target)
        path = Path(os.path.realpath(target))
        if self.mountpoint and path.is_relative_to(self.mountpoint):
            raise ConfigError(f"ln -s {target}: the dataset must live outside the mount")
        if not path.is_file():
            raise NoSuchPathError(f"ln -s {target}: no such dataset file")
        return path

    # --- headers ------------------------------------------------------------------------------

    def _id_header(self, name: str) -> dict[str, str] | None:
        """Header of dataset ID *name* under the current context from the server (stored),
        None when unknown (remembered for one poll interval)."""
        context = self._context
        key = f"{_KEY}idheader:{context}:{name.upper()}"
        stored = self.db.get(key)
        if stored is not None:
            return stored
        missing_since = self._missing_ids.get(name.upper())
        if missing_since is not None and time.monotonic() - missing_since < self.options.poll:
            return None
        if not self.cache.online:
            return None
        try:
            answer = self.cache.client.get_dataset_headers_by_id(context, [name])
        except (ServiceError, ServerUnreachableError) as exc:
            log.info("bestrefs/%s: dataset ID lookup failed: %s", name, exc)
            self._missing_ids[name.upper()] = time.monotonic()
            return None
        header = answer.get(name) if isinstance(answer, dict) else None
        if not isinstance(header, dict):
            log.info("bestrefs/%s: %s", name, header or "unknown dataset ID")
            self._missing_ids[name.upper()] = time.monotonic()
            return None
        header = {str(k).upper(): str(v) for k, v in header.items()}
        self.db.set(key, header)
        return header

    def _file_header(self, path: Path, context: str, *,
                     urgent: bool = False) -> dict[str, str] | _Job:
        """Header of a local dataset limited to the context's parameters (memoised per file
        version), or the job reading it; raises DatasetError."""
        try:
            stat = path.stat()
        except OSError as exc:
            raise DatasetError(f"dataset file {path} is gone: {exc.strerror}") from None
        version = (str(path), stat.st_size, stat.st_mtime_ns)
        key = (context, version)
        cached = self._headers.get(key)
        if cached is None:
            stored_key = f"{_KEY}fileheader:{context}:{path}:{stat.st_size}:{stat.st_mtime_ns}"
            cached = self.db.get(stored_key)
            if cached is not None:
                self._remember(key, cached)
        if cached is None:
            parkeys = self.resolver.required_parkeys(context)
            return self._work.submit(
                key, lambda: self._read_header(key, path, parkeys, stored_key), urgent=urgent)
        if isinstance(cached, DatasetError):
            raise cached
        return cached

    def _read_header(self, key: tuple[str, Any], path: Path, parkeys: Any,
                     stored_key: str) -> dict[str, str]:
        """On a header worker: read, then remember (errors too, per file version)."""
        try:
            header = ds.read_header(path, parkeys)
        except DatasetError as exc:
            log.warning("bestrefs/: %s", exc)
            self._remember(key, exc)
            raise
        self.db.set(stored_key, header, expire=30 * 86400)
        self._remember(key, header)
        return header

    def _remember(self, key: tuple[str, Any], value: dict[str, str] | DatasetError) -> None:
        if len(self._headers) > 10000:
            self._headers.clear()
        self._headers[key] = value

    def _stamp(self, dataset: Dataset) -> Any:
        if dataset.path is None:
            return None
        try:
            stat = dataset.path.stat()
            return (str(dataset.path), stat.st_size, stat.st_mtime_ns)
        except OSError:
            return (str(dataset.path), -1, -1)

    # --- answers ------------------------------------------------------------------------------

    def answer(self, dataset: Dataset) -> Answer:
        """The answer for *dataset* under the current context (computed once, then cached)."""
        context = self._context
        stamp = self._stamp(dataset)
        cached = self._answers.get((context, dataset.name))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # Headers are gathered without the lock (a slow file must not hold up calls about
        # other datasets); deciding, and storing the answers, happens under it.
        batch = [dataset, *self._neighbours(dataset, context)]
        headers, failed = self._gather(context, batch)
        with self._lock:
            cached = self._answers.get((context, dataset.name))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            self._prefetch_mappings(context)
            batch = [d for n, d in enumerate(batch) if (d.name in headers or d.name in failed)
                     and (n == 0 or (context, d.name) not in self._answers)]
            for answer in self._compute(context, batch, headers, failed):
                if context == self._context:
                    self._answers[(context, answer.dataset.name)] = (
                        self._stamp(answer.dataset), answer)
                if answer.dataset.name == dataset.name:
                    result = answer
            return result

    def _gather(self, context: str, batch: list[Dataset]
                ) -> tuple[dict[str, dict[str, str]], dict[str, Answer]]:
        """Headers of *batch* ({name: header}) and answers of those that failed.

        The first dataset is the one asked for: its header is waited for up to
        `ViewOptions.header_wait` (then HeaderTimeoutError, EIO); neighbours only while it
        is read plus `NEIGHBOUR_GRACE` — a neighbour not ready by then is left out.
        """
        headers: dict[str, dict[str, str]] = {}
        failed: dict[str, Answer] = {}
        jobs: dict[str, tuple[Dataset, _Job]] = {}
        for number, dataset in enumerate(batch):
            try:
                found = self._header(dataset, context, urgent=number == 0)
            except CrdsFsError as exc:
                failed[dataset.name] = Answer(dataset, context, self._engine_name(),
                                              error=str(exc))
                continue
            if isinstance(found, _Job):
                jobs[dataset.name] = (dataset, found)
            else:
                headers[dataset.name] = found
        wanted = batch[0]
        deadline = time.monotonic() + self.options.header_wait
        if wanted.name in jobs and not self._wait_for(jobs[wanted.name][1], wanted, deadline):
            path = wanted.path
            log.warning("bestrefs/%s: reading the header of %s takes longer than %.1f s "
                        "(CRDS_FS_HEADER_WAIT); answering EIO, reading goes on", wanted.name,
                        path, self.options.header_wait)
            raise HeaderTimeoutError(
                f"bestrefs/{wanted.name}: reading the header of {path} takes longer than "
                f"{self.options.header_wait:g} s (CRDS_FS_HEADER_WAIT); try again later")
        for name, (dataset, job) in jobs.items():
            # a neighbour gets NEIGHBOUR_GRACE from when its reading was asked for: one
            # asked for long ago (a stuck file) is not waited for again
            until = min(deadline, job.created + NEIGHBOUR_GRACE)
            if name != wanted.name and not job.wait(until):
                log.debug("bestrefs/: %s not read yet; answered on its own later", dataset.path)
                continue
            try:
                headers[name] = job.value()
            except CrdsFsError as exc:
                failed[name] = Answer(dataset, context, self._engine_name(), error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad file must not break the mount
                log.exception("bestrefs/: reading the header of %s failed", dataset.path)
                failed[name] = Answer(dataset, context, self._engine_name(),
                                      error=f"{type(exc).__name__}: {exc}")
        return headers, failed

    def _wait_for(self, job: _Job, dataset: Dataset, deadline: float) -> bool:
        """Wait for *job* until *deadline*; time the process spends loading astropy/asdf
        (seconds, once, whatever the file; at most READERS_WAIT) does not count."""
        started = time.monotonic()
        while not job.wait(min(deadline, time.monotonic() + 0.5)):
            now = time.monotonic()
            loading = (dataset.path is not None and not ds.readers_ready(dataset.path)
                       and now - started < READERS_WAIT)
            if loading:
                deadline = now + self.options.header_wait
            elif now >= deadline:
                return False
        return True

    def _prefetch_mappings(self, context: str) -> None:
        """Cache the context's mappings in the background (once per context) while the
        server answers, so the local engine can take over when it goes away."""
        if context in self._prefetched or not self.cache.online:
            return
        self._prefetched.add(context)

        def fetch() -> None:
            try:
                names = self.resolver.mapping_names(context)
                for name in names:
                    if self._stop.is_set():
                        return
                    self.cache.ensure(name)
                log.info("bestrefs/: cached the %d mappings of %s for offline use",
                         len(names), context)
            except CrdsFsError as exc:
                log.info("bestrefs/: could not cache the mappings of %s: %s", context, exc)

        threading.Thread(target=fetch, daemon=True, name="crds-fs-bestrefs-mappings").start()

    def _neighbours(self, dataset: Dataset, context: str) -> list[Dataset]:
        """Other local datasets without an answer yet, decided in the same batch."""
        if dataset.origin == "id" or not self.resolver.use_remote():
            return []
        others: list[Dataset] = []
        for name in self.local_names():
            if len(others) >= self.options.prefetch - 1:
                break
            if name == dataset.name or (context, name) in self._answers:
                continue
            other = self.lookup(name)
            if other is not None:
                others.append(other)
        return others

    def _compute(self, context: str, batch: Iterable[Dataset],
                 headers: dict[str, dict[str, str]], failed: dict[str, Answer]) -> list[Answer]:
        answers: list[Answer] = []
        try:
            outcomes = self.resolver.best_references(context, headers) if headers else {}
        except Exception as exc:  # noqa: BLE001 - one bad answer must not break the mount
            log.exception("bestrefs/: deciding best references under %s failed", context)
            error = f"{type(exc).__name__}: {exc}"
            outcomes = {name: Outcome({}, self._engine_name(), error) for name in headers}
        for dataset in batch:
            if dataset.name in failed:
                answers.append(failed[dataset.name])
                continue
            outcome = outcomes[dataset.name]
            answers.append(self._make_answer(dataset, context, headers[dataset.name], outcome))
        return answers

    def _engine_name(self) -> str:
        return "remote" if self.resolver.use_remote() else "local"

    def _header(self, dataset: Dataset, context: str, *,
                urgent: bool = False) -> dict[str, str] | _Job:
        if dataset.path is not None:
            return self._file_header(dataset.path, context, urgent=urgent)
        header = self._id_header(dataset.name)
        if header is None:
            raise DatasetError(f"dataset ID {dataset.name} is not known to the server "
                               f"{self.cache.settings.server_url}")
        return header

    def _make_answer(self, dataset: Dataset, context: str, header: dict[str, str],
                     outcome: Outcome) -> Answer:
        links: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        for reftype, name in outcome.found().items():
            if name in self.cache.catalog:
                links[reftype] = name
            else:
                unavailable[reftype] = name
        missing: list[str] = []
        if outcome.error is None and dataset.path is not None:
            try:
                parkeys = self.resolver.required_parkeys(context)
                needed = ds.needed_keys_for(parkeys, ds.find_instrument(header))
                if needed is not None and not any(
                        "." in k for k in needed.difference(ds.INSTRUMENT_KEYS)):
                    missing = ds.missing_keys(header, needed)
            except CrdsFsError:
                missing = []
        return Answer(dataset, context, outcome.engine, header, outcome.bestrefs,
                      outcome.error, missing, links, unavailable)


class FileExistsDatasetError(DatasetError):
    """A bestrefs/ name that is already taken."""

    errno = errno.EEXIST


__all__ = ["Answer", "BestrefsView", "Dataset", "FileExistsDatasetError", "HeaderTimeoutError",
           "HeaderWork", "ViewOptions"]
