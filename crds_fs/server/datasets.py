"""Dataset headers by ID for `crds-fs serve ROOT --datasets DIR`.

The real CRDS server answers `get_dataset_headers_by_id` from the archive's catalog of
matching parameters; a local mirror has no archive, but it can have a folder of raw
datasets.  This module turns such a folder into that catalog: every FITS/ASDF file under
DIR is one dataset whose ID is its archive-style name (``j8is01j0q_raw.fits`` ->
``J8IS01J0Q``, see crds_fs.bestrefs.headers.dataset_id).

Headers are read once (header units only, never data) and kept in a diskcache index keyed
by path, size and mtime, so a restarted server answers without opening a file and a changed
file is re-read.  Each request stats the folders (a file added, removed or renamed moves
its folder's mtime, and triggers a re-walk, stat only); files rewritten in place are noticed
by a full re-walk at most `rescan_interval` seconds apart.

Per-ID failures (unknown ID, unreadable file) are crds-style error *strings* in the answer,
never a whole-call error: one bad dataset must not hide the others.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from ..bestrefs import headers as ds
from ..config import default_cache_dir
from ..errors import DatasetError, ServiceError

log = logging.getLogger(__name__)

#: Preferred product when several files share one dataset ID (raw data first).
_SUFFIX_PREFERENCE = ("raw", "uncal", "asn")

#: Header keys that carry the observation date, in the order they are tried for `since`.
_DATE_KEYS = ("DATE-OBS", "META.OBSERVATION.DATE", "ROMAN.META.EXPOSURE.START_TIME",
              "TEXPSTRT", "EXPSTART")


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset file as indexed: its header union (all keys) or why it is unreadable."""

    path: str
    size: int
    mtime_ns: int
    dataset_id: str
    header: dict[str, str] | None
    error: str | None = None

    @property
    def instrument(self) -> str | None:
        return ds.find_instrument(self.header) if self.header else None


class DatasetIndex:
    """The datasets of one folder, indexed by ID; thread-safe, refreshed on demand."""

    def __init__(self, directory: Path, index_dir: Path, *, rescan_interval: float = 10.0) -> None:
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise DatasetError(
                f"datasets folder {directory} does not exist or is not a folder "
                "(crds-fs serve --datasets DIR)"
            )
        self.rescan_interval = rescan_interval
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        self.index = diskcache.Cache(str(index_dir))
        self._key = f"datasets:{self.directory}"
        self._lock = threading.RLock()
        self._records: dict[str, DatasetRecord] = {}
        self._by_id: dict[str, DatasetRecord] = {}
        self._last_scan = -1.0e9
        self._dirs: list[Path] = []
        self._dir_signature: tuple[int, ...] = ()
        stored = self.index.get(self._key)
        if isinstance(stored, dict):
            self._records = {rel: DatasetRecord(**fields) for rel, fields in stored.items()}
        self.refresh(force=True)

    def close(self) -> None:
        self.index.close()

    # --- indexing ---------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Re-walk the folder (stat only) when a folder changed (a file was added, removed
        or renamed: its folder's mtime moves) or an interval passed (in-place rewrites)."""
        with self._lock:
            now = time.monotonic()
            if (not force and now - self._last_scan < self.rescan_interval
                    and _signature(self._dirs) == self._dir_signature):
                return
            self._last_scan = now
            self._dirs = _folders(self.directory)
            self._dir_signature = _signature(self._dirs)
            records, read = self._scan()
            if records != self._records:
                self._records = records
                self._store()
                log.info("indexed datasets in %s: %d files (%d headers read)",
                         self.directory, len(records), read)
            self._by_id = _id_table(records.values())

    def _scan(self) -> tuple[dict[str, DatasetRecord], int]:
        records: dict[str, DatasetRecord] = {}
        read = 0
        for path in ds.find_dataset_files(self.directory):
            rel = str(path.relative_to(self.directory))
            try:
                stat = path.stat()
            except OSError:
                continue
            old = self._records.get(rel)
            if old and (old.size, old.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                records[rel] = old
                continue
            records[rel] = _read_record(path, stat)
            read += 1
        return records, read

    def _store(self) -> None:
        state = {rel: vars_of(record) for rel, record in self._records.items()}
        try:
            self.index.set(self._key, state)
        except Exception as exc:  # noqa: BLE001 - an unwritable index only costs re-reading
            log.warning("cannot update the datasets index %s: %s", self.index.directory, exc)

    # --- lookups ----------------------------------------------------------------------------

    def lookup(self, requested: str) -> DatasetRecord | None:
        """The dataset for a requested ID (any case, ``<a>:<b>`` forms), None if unknown."""
        self.refresh()
        for key in ds.id_candidates(requested):
            record = self._by_id.get(key)
            if record is not None:
                return record
        return None

    def records(self) -> list[DatasetRecord]:
        """Every indexed dataset with a readable header, sorted by ID."""
        self.refresh()
        unique = {record.path: record for record in self._by_id.values()}
        return sorted((r for r in unique.values() if r.header is not None),
                      key=lambda r: r.dataset_id)


def _folders(root: Path) -> list[Path]:
    """*root* and every non-hidden folder below it."""
    found = [root]
    for current, subdirs, _files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(current) / d for d in subdirs)
    return found


def _signature(folders: list[Path]) -> tuple[int, ...]:
    stamps = []
    for folder in folders:
        try:
            stamps.append(folder.stat().st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


def vars_of(record: DatasetRecord) -> dict[str, Any]:
    """A record as plain data for the diskcache index (stable across code changes)."""
    return {"path": record.path, "size": record.size, "mtime_ns": record.mtime_ns,
            "dataset_id": record.dataset_id, "header": record.header, "error": record.error}


def _read_record(path: Path, stat: os.stat_result) -> DatasetRecord:
    """Index one file: its whole header union, or the error that makes it unusable."""
    try:
        header = ds.read_header(path, None, require_instrument=False)
        error = None
    except DatasetError as exc:
        header, error = None, str(exc)
        log.warning("datasets: %s", exc)
    return DatasetRecord(str(path), stat.st_size, stat.st_mtime_ns, ds.dataset_id(path),
                         header, error)


def _id_table(records: Iterable[DatasetRecord]) -> dict[str, DatasetRecord]:
    """ID -> record; each file is also reachable by its full upper-case name (J8IS01J0Q_RAW).

    When several products share an ID the raw one wins, so headers are those of the data
    the pipeline starts from.
    """
    table: dict[str, DatasetRecord] = {}
    for record in sorted(records, key=_preference):
        table.setdefault(record.dataset_id, record)
        table.setdefault(ds.dataset_name(record.path).upper(), record)
    return table


def _preference(record: DatasetRecord) -> tuple[int, int, str]:
    suffix = ds.dataset_name(record.path).rpartition("_")[2].lower()
    rank = _SUFFIX_PREFERENCE.index(suffix) if suffix in _SUFFIX_PREFERENCE else 99
    return (0 if record.header is not None else 1), rank, record.path


# --- RPC answers (called by crds_fs.server.methods as func(root, datasets_dir, *params)) --

_indexes: dict[Path, DatasetIndex] = {}
_indexes_lock = threading.Lock()


def index_for(datasets_dir: Path, index_dir: Path | None = None) -> DatasetIndex:
    """The (process-wide, shared) index of *datasets_dir*, created on first use.

    Its diskcache lives in *index_dir*, by default ``$CRDS_FS_DATASETS_INDEX`` or a folder
    per datasets directory under the user cache (the datasets folder may be read-only).
    """
    directory = Path(datasets_dir).resolve()
    with _indexes_lock:
        index = _indexes.get(directory)
        if index is None:
            index = DatasetIndex(directory, index_dir or default_index_dir(directory))
            _indexes[directory] = index
        return index


def default_index_dir(directory: Path) -> Path:
    """Where the datasets index of *directory* is kept when nobody says otherwise."""
    configured = os.environ.get("CRDS_FS_DATASETS_INDEX")
    if configured:
        return Path(configured)
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:16]
    return default_cache_dir() / "serve-datasets" / f"{directory.name}-{digest}"


def _parkeys_for(root: Path, context: str) -> Any:
    """Required parameters of *context* (pmap form) from the engine; None when unknown, in
    which case whole headers are returned rather than failing every ID."""
    try:
        from . import bestrefs
        return bestrefs.get_required_parkeys(Path(root), context)
    except Exception as exc:  # noqa: BLE001 - headers are still useful without filtering
        log.warning("datasets: required parameters of %s unavailable (%s); "
                    "returning whole headers", context, exc)
        return None


def get_dataset_headers_by_id(
    root: Path, datasets_dir: Path, context: Any, dataset_ids: Any, datasets_since: Any = None
) -> dict[str, Any]:
    """``{id: header}`` for the requested IDs; per-ID failures are ``NOT FOUND ...`` strings.

    Headers hold the context's required parameters for the dataset's instrument (as the
    archive returns them).  `datasets_since` is accepted for compatibility; IDs asked for
    by name are answered whatever their date.
    """
    index = index_for(datasets_dir)
    ids = _check_ids("get_dataset_headers_by_id", dataset_ids)
    parkeys = _parkeys_for(root, str(context))
    answer: dict[str, Any] = {}
    for requested in ids:
        record = index.lookup(requested)
        if record is None:
            answer[requested] = (
                f"NOT FOUND dataset '{requested}' is not among the datasets served from "
                f"{index.directory}"
            )
        elif record.header is None:
            answer[requested] = f"NOT FOUND {record.error}"
        else:
            answer[requested] = _limited(record.header, parkeys)
    return answer


def get_dataset_ids(
    root: Path, datasets_dir: Path, context: Any, instrument: Any = None,
    datasets_since: Any = None,
) -> list[str]:
    """IDs (``<id>:<id>``, crds' product:exposure form) of the served datasets of
    *instrument* (any case; empty/None = all), observed on or after *datasets_since*."""
    index = index_for(datasets_dir)
    wanted = str(instrument).upper() if instrument else None
    since = str(datasets_since) if datasets_since else None
    ids = []
    for record in index.records():
        if wanted and record.instrument != wanted:
            continue
        if since and not _observed_since(record.header or {}, since):
            continue
        ids.append(f"{record.dataset_id}:{record.dataset_id}")
    return ids


def get_best_references_by_ids(
    root: Path, datasets_dir: Path, context: Any, dataset_ids: Any, reftypes: Any = None,
    include_headers: Any = False,
) -> dict[str, Any]:
    """``{id: {reftype: answer}}`` for served datasets (per-ID errors as strings); with
    *include_headers* each value is ``{"header": ..., "bestrefs": ...}``."""
    from . import bestrefs

    headers = get_dataset_headers_by_id(root, datasets_dir, context, dataset_ids)
    found = {key: value for key, value in headers.items() if isinstance(value, dict)}
    answers = bestrefs.get_best_references_by_header_map(Path(root), str(context), found,
                                                         reftypes) if found else {}
    result: dict[str, Any] = {}
    for key, header in headers.items():
        value = answers.get(key, header) if isinstance(header, dict) else header
        result[key] = {"header": header, "bestrefs": value} if include_headers else value
    return result


def _check_ids(method: str, dataset_ids: Any) -> list[str]:
    if not isinstance(dataset_ids, list) or not all(isinstance(i, str) for i in dataset_ids):
        raise ServiceError(
            f"{method}: dataset_ids must be a list of strings, got {type(dataset_ids).__name__}"
        )
    return dataset_ids


def _limited(
    header: dict[str, str], parkeys: Mapping[str, Iterable[str]] | Iterable[str] | None
) -> dict[str, str]:
    needed = ds.needed_keys_for(parkeys, ds.find_instrument(header))
    if needed is None:
        return dict(header)
    if any("." in key for key in needed.difference(ds.INSTRUMENT_KEYS)):
        # JWST contexts match on model paths: keep the FITS keywords standing for them.
        needed = ds.with_fits_aliases(needed, header)
    return {key: value for key, value in header.items() if key in needed}


def _observed_since(header: Mapping[str, str], since: str) -> bool:
    """True unless the header's observation date is known and earlier than *since*."""
    for key in _DATE_KEYS:
        value = header.get(key)
        if value and value.upper() != "UNDEFINED":
            return value.replace("T", " ") >= since.replace("T", " ")
    return True
