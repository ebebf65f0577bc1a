"""Best references for datasets, decided remotely or locally, cached, following the context.

Shared by the `bestrefs/` directory of a mount (crds_fs.namespace.bestrefs), the Python API
(crds_fs.api) and `crds-fs bestrefs`.  Two pieces:

* `BestrefsResolver` answers "which references for these headers under this context?",
  on the server (`get_best_references_by_header_map`, batched up to the server's
  `max_bestrefs_per_rpc`) or with the local engine over mappings fetched through the cache.
  `auto` means remote while the server is reachable and local otherwise, like crds'
  CRDS_MODE=auto.  Answers are stored in the cache's diskcache index keyed by context and
  the header values that matter (the reduced header), so they survive restarts and a
  header seen once is never asked about again.  Contexts are immutable, so such an answer
  never goes stale; a *new* context is simply a different key.
* `BestrefsView` is the dataset side of the `bestrefs/` directory: which datasets exist
  (a `--datasets` folder, names registered with `ln -s`, and any dataset ID the server
  knows), their headers, and their answers under the current context, which follows the
  server's operational context when asked to (polled in the background).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import datasets as ds
from .errors import (
    ConfigError,
    CrdsFsError,
    DatasetError,
    NoSuchPathError,
    ServerUnreachableError,
    ServiceError,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .cache import FileCache

log = logging.getLogger(__name__)

ENGINES = ("auto", "remote", "local")
#: Answers computed in one go when a dataset of the view is first needed (its neighbours
#: from the same folder ride along in the same RPC: `ls -l bestrefs/*/` costs one call).
DEFAULT_PREFETCH = 256
#: Used when the server does not advertise max_bestrefs_per_rpc.
DEFAULT_MAX_PER_RPC = 500
_KEY = "bestrefs:"


def is_reference_name(value: str) -> bool:
    """True for an answer that names a file (not ``NOT FOUND ...``, ``N/A`` or empty)."""
    text = value.strip()
    return bool(text) and not text.upper().startswith("NOT FOUND") and text.upper() not in (
        "N/A", "OMIT", "UNDEFINED")


# --- deciding best references -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one header got: per-reftype answers, or a whole-call error; and who decided."""

    bestrefs: dict[str, str]
    engine: str
    error: str | None = None

    def found(self) -> dict[str, str]:
        """{reftype: reference name} of the types that have a reference."""
        return {t: v for t, v in sorted(self.bestrefs.items()) if is_reference_name(v)}

    def to_state(self) -> dict[str, Any]:
        return {"bestrefs": self.bestrefs, "engine": self.engine, "error": self.error}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Outcome:
        return cls(dict(state["bestrefs"]), str(state["engine"]), state.get("error"))


class BestrefsResolver:
    """Best references for headers under one context, remote or local (thread-safe)."""

    def __init__(self, cache: FileCache, *, engine: str = "auto") -> None:
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        self.cache = cache
        self.engine = engine
        self.db = cache.index.db
        self._contexts: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: set after the server failed once: stop trying remote in auto mode for a while
        self._remote_down_until = 0.0

    # --- which engine -----------------------------------------------------------------------

    def use_remote(self) -> bool:
        """Remote when asked for, or in auto mode while the server answers."""
        if self.engine == "remote":
            return True
        if self.engine == "local":
            return False
        return bool(self.cache.online) and time.monotonic() >= self._remote_down_until

    def _server_failed(self, exc: Exception) -> None:
        log.warning("best references: server unreachable (%s); answering with the local "
                    "engine for the next 60 s", exc)
        self._remote_down_until = time.monotonic() + 60.0

    # --- mappings and the local engine ------------------------------------------------------

    def mapping_names(self, context: str) -> list[str]:
        """Every mapping of *context* (incl. itself): from the server when online, else from
        the local engine over what the cache holds."""
        key = f"{_KEY}mappings:{context}"
        names = self.db.get(key)
        if names is None and self.cache.online:
            try:
                names = list(self.cache.client.get_mapping_names(context))
                self.db.set(key, names)
            except ServerUnreachableError as exc:
                log.info("get_mapping_names(%s) failed (%s); using the local engine", context,
                         exc)
        if names is None:
            names = list(self.local_context(context).mapping_names())
        return names

    def local_context(self, context: str) -> Any:
        """The engine's Context for *context*, mappings read (and fetched) through the cache."""
        with self._lock:
            loaded = self._contexts.get(context)
            if loaded is None:
                loaded = cache_source(self.cache).load_context(context)
                self._contexts[context] = loaded
            return loaded

    def required_parkeys(self, context: str) -> Any:
        """`get_required_parkeys(context)`: from the server (stored; contexts are immutable)
        when remote, else from the local engine."""
        key = f"{_KEY}parkeys:{context}"
        stored = self.db.get(key)
        if stored is not None:
            return stored
        parkeys = None
        if self.use_remote():
            try:
                parkeys = self.cache.client.get_required_parkeys(context)
            except ServerUnreachableError as exc:
                if self.engine == "remote":
                    raise
                self._server_failed(exc)
        if parkeys is None:
            parkeys = self.local_context(context).required_parkeys()
        self.db.set(key, parkeys)
        return parkeys

    # --- answers ----------------------------------------------------------------------------

    def best_references(
        self, context: str, headers: Mapping[str, Mapping[str, str]],
        reftypes: Iterable[str] | None = None,
    ) -> dict[str, Outcome]:
        """{key: Outcome} for every header of *headers* ({key: header}) under *context*.

        Stored answers are reused; the rest are decided in batches (remote) or one by one
        (local).  A header's failure is its own Outcome.error, never an exception.
        """
        types = sorted({t.lower() for t in reftypes}) if reftypes is not None else None
        results: dict[str, Outcome] = {}
        todo: dict[str, tuple[str, Mapping[str, str]]] = {}
        for key, header in headers.items():
            answer_key = self.answer_key(context, header, types)
            stored = self.db.get(answer_key)
            if stored is not None:
                results[key] = Outcome.from_state(stored)
            else:
                todo[key] = (answer_key, header)
        if todo:
            computed = self._decide(context, {k: h for k, (_, h) in todo.items()}, types)
            for key, outcome in computed.items():
                results[key] = outcome
                if outcome.error is None:  # errors may be transient (offline, server down)
                    self.db.set(todo[key][0], outcome.to_state())
        return results

    def answer_key(self, context: str, header: Mapping[str, str],
                   reftypes: list[str] | None = None) -> str:
        """Index key of one answer: context, engine mode, reftypes asked, header values."""
        text = json.dumps([context, self.engine, reftypes, sorted(header.items())],
                          separators=(",", ":"))
        return f"{_KEY}answer:" + hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _decide(self, context: str, headers: dict[str, Mapping[str, str]],
                reftypes: list[str] | None) -> dict[str, Outcome]:
        if self.use_remote():
            try:
                return self._remote(context, headers, reftypes)
            except ServerUnreachableError as exc:
                if self.engine == "remote":
                    return {key: Outcome({}, "remote", str(exc)) for key in headers}
                self._server_failed(exc)
        return {key: self._local(context, header, reftypes) for key, header in headers.items()}

    def max_per_rpc(self) -> int:
        value = self.cache.server_info.get("max_bestrefs_per_rpc")
        try:
            return max(1, int(value))
        except (TypeError, ValueError):
            return DEFAULT_MAX_PER_RPC

    def _remote(self, context: str, headers: dict[str, Mapping[str, str]],
                reftypes: list[str] | None) -> dict[str, Outcome]:
        """Batched get_best_references_by_header_map; a batch refused as a whole is retried
        header by header so one bad header cannot hide the others' answers."""
        client = self.cache.client
        results: dict[str, Outcome] = {}
        keys = list(headers)
        step = self.max_per_rpc()
        for start in range(0, len(keys), step):
            batch = {key: dict(headers[key]) for key in keys[start: start + step]}
            answer: Any = {}
            if len(batch) > 1:
                try:
                    answer = client.get_best_references_by_header_map(context, batch, reftypes)
                except ServiceError as exc:
                    log.info("get_best_references_by_header_map refused the batch (%s); "
                             "asking header by header", exc)
            if not answer:
                for key, header in batch.items():
                    try:
                        answer[key] = client.get_best_references(context, header, reftypes)
                    except ServiceError as exc:
                        answer[key] = _service_message(exc)
            for key in batch:
                value = answer.get(key) if isinstance(answer, dict) else None
                results[key] = self._check_bad(context, _remote_outcome(value, key))
        return results

    def _check_bad(self, context: str, outcome: Outcome) -> Outcome:
        """crds' client-side bad-file checks for server answers (the server leaves them to
        clients): rules or a recommended reference on the bad files list fail the header
        unless CRDS_ALLOW_BAD_RULES / CRDS_ALLOW_BAD_REFERENCES."""
        if outcome.error is not None:
            return outcome
        settings = self.cache.settings
        error = bad_file_error(
            context, outcome.bestrefs, self.cache.catalog.bad_files,
            lambda: self.mapping_names(context),
            allow_bad_rules=settings.allow_bad_rules,
            allow_bad_references=settings.allow_bad_references,
        )
        return outcome if error is None else Outcome({}, outcome.engine, error)

    def _local(self, context: str, header: Mapping[str, str],
               reftypes: list[str] | None = None) -> Outcome:
        settings = self.cache.settings
        try:
            loaded = self.local_context(context)
            bestrefs = loaded.best_references(
                dict(header), reftypes, bad_files=self.cache.catalog.bad_files,
                allow_bad_references=settings.allow_bad_references,
                allow_bad_rules=settings.allow_bad_rules,
            )
        except CrdsFsError as exc:
            name = getattr(exc, "crds_name", type(exc).__name__)
            return Outcome({}, "local", f"{name}: {exc}")
        return Outcome(dict(bestrefs), "local")


def bad_file_error(context: str, bestrefs: Mapping[str, Any], bad_files: frozenset[str],
                   mapping_names: Callable[[], Iterable[str]], *, allow_bad_rules: bool,
                   allow_bad_references: bool) -> str | None:
    """crds' client-side bad-file verdict on a server's answer (None: the answer stands).

    A server leaves these checks to its clients, so every remote path (the resolver,
    `crds-fs bestrefs --remote`) applies this one.  *mapping_names* is only called when
    bad files exist and bad rules are not allowed (it may cost an RPC).
    """
    if not bad_files:
        return None
    if not allow_bad_rules:
        rules = sorted(set(mapping_names()) & bad_files)
        if rules:
            return (f"CrdsBadRulesError: Final context {context!r} is marked as "
                    f"scientifically invalid based on: {rules}")
    if not allow_bad_references:
        for reftype, name in sorted(bestrefs.items()):
            if isinstance(name, str) and name in bad_files:
                return (f"CrdsBadReferenceError: Recommended reference {name!r} of type "
                        f"{reftype!r} is designated scientifically invalid.")
    return None


def _service_message(exc: ServiceError) -> str:
    message = getattr(exc, "server_message", None) or str(exc)
    name = getattr(exc, "remote_name", None)
    return f"{name}: {message}" if name else str(message)


def _remote_outcome(value: Any, key: str) -> Outcome:
    if isinstance(value, dict):
        return Outcome({str(t).lower(): str(v) for t, v in value.items()}, "remote")
    if isinstance(value, str):
        return Outcome({}, "remote", value)
    if isinstance(value, list | tuple) and len(value) == 2:
        ok, refs = value  # CRDS servers answer [True, {type: name}] or [False, "message"]
        if ok and isinstance(refs, dict):
            return Outcome({str(t).lower(): str(v) for t, v in refs.items()}, "remote")
        if not ok:
            return Outcome({}, "remote", str(refs).removeprefix("FAILED: "))
    return Outcome({}, "remote", f"the server returned no answer for '{key}'")


def cache_source(cache: FileCache) -> Any:
    """The engine's mapping source over the cache: mappings are fetched (verified) on first
    use and built ones are shared process-wide per cache folder."""
    from .sources import callable_source

    identity = ("crds-fs-cache", str(cache.store.root), cache.observatory)
    return callable_source(cache.ensure, identity,
                           f"crds-fs cache {cache.store.root} ({cache.observatory})",
                           cache.catalog.bad_files)


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

    @classmethod
    def from_env(cls) -> ViewOptions:
        """Options from CRDS_FS_BESTREFS_ENGINE / CRDS_FS_DATASETS / CRDS_FS_BESTREFS_POLL."""
        datasets = os.environ.get("CRDS_FS_DATASETS")
        try:
            poll = float(os.environ.get("CRDS_FS_BESTREFS_POLL") or 60.0)
        except ValueError:
            raise ConfigError("CRDS_FS_BESTREFS_POLL must be a number of seconds") from None
        return cls(engine=os.environ.get("CRDS_FS_BESTREFS_ENGINE") or "auto",
                   datasets=Path(datasets) if datasets else None, poll=poll)


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
        self._missing_ids: dict[str, float] = {}
        self._folder: dict[str, Path] = {}
        self._folder_scanned = -1.0e9
        self._prefetched: set[str] = set()
        self._registered_key = f"{_KEY}registered:{self.observatory}"
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if options.datasets is not None and not Path(options.datasets).is_dir():
            raise ConfigError(f"--datasets {options.datasets}: not a folder")
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

    def _poll_loop(self) -> None:
        while not self._stop.wait(max(0.2, self.options.poll)):
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

    def _file_header(self, path: Path, context: str) -> dict[str, str]:
        """Header of a local dataset limited to the context's parameters (memoised per file
        version); raises DatasetError."""
        try:
            stat = path.stat()
        except OSError as exc:
            raise DatasetError(f"dataset file {path} is gone: {exc.strerror}") from None
        key = (context, (str(path), stat.st_size, stat.st_mtime_ns))
        cached = self._headers.get(key)
        if cached is None:
            stored_key = f"{_KEY}fileheader:{context}:{path}:{stat.st_size}:{stat.st_mtime_ns}"
            cached = self.db.get(stored_key)
        if cached is None:
            try:
                cached = ds.read_header(path, self.resolver.required_parkeys(context))
                self.db.set(stored_key, cached, expire=30 * 86400)
            except DatasetError as exc:
                cached = exc
            if len(self._headers) > 10000:
                self._headers.clear()
            self._headers[key] = cached
        if isinstance(cached, DatasetError):
            raise cached
        return cached

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
        with self._lock:
            cached = self._answers.get((context, dataset.name))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            batch = [dataset, *self._neighbours(dataset, context)]
            self._prefetch_mappings(context)
            for answer in self._compute(context, batch):
                if context == self._context:
                    self._answers[(context, answer.dataset.name)] = (
                        self._stamp(answer.dataset), answer)
                if answer.dataset.name == dataset.name:
                    result = answer
            return result

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

    def _compute(self, context: str, batch: Iterable[Dataset]) -> list[Answer]:
        headers: dict[str, dict[str, str]] = {}
        answers: list[Answer] = []
        failed: dict[str, Answer] = {}
        pending: list[Dataset] = []
        for dataset in batch:
            try:
                headers[dataset.name] = self._header(dataset, context)
                pending.append(dataset)
            except CrdsFsError as exc:
                failed[dataset.name] = Answer(dataset, context, self._engine_name(),
                                              error=str(exc))
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

    def _header(self, dataset: Dataset, context: str) -> dict[str, str]:
        if dataset.path is not None:
            return self._file_header(dataset.path, context)
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


__all__ = [
    "Answer", "BestrefsResolver", "BestrefsView", "Dataset", "ENGINES", "Outcome",
    "ViewOptions", "is_reference_name",
]
