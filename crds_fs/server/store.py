"""The served folder: which files exist, with size and sha1, kept fresh cheaply.

`crds-fs serve` publishes a catalog (size + sha1 of every file) that must always describe
the bytes actually on disk, because clients verify downloads against it.  Hashing a large
reference set takes minutes, so digests are kept in a diskcache index keyed by
(size, mtime) and recomputed only for files that changed.  The folder may be read-only
(shared data), so the index lives elsewhere (`--index`).

Freshness: every request stats the handful of directories (a new or removed file changes
its directory's mtime); every `rescan_interval` seconds all files are re-stat'ed too
(catching in-place rewrites); a single file is re-stat'ed whenever it is served or asked
about by name.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import diskcache

from ..bestrefs.sources import read_server_config
from ..client.names import FileKind, file_kind, is_safe_basename
from ..errors import ConfigError
from ..hashing import sha1_file

log = logging.getLogger(__name__)

#: cache-layout directory name -> kind of the files in it
DIR_KINDS: dict[str, FileKind] = {
    "mappings": "mapping",
    "references": "reference",
    "config": "config",
}
KIND_DIRS: dict[FileKind, str] = {kind: name for name, kind in DIR_KINDS.items()}
#: seconds between "hashing ..." progress lines while a folder is being (re)hashed
PROGRESS_INTERVAL = 5.0


class FileRecord(NamedTuple):
    """One served file as last seen on disk."""

    #: absolute path (a str: 44k Path objects cost a second to build)
    path: str
    size: int
    mtime_ns: int
    sha1: str


@dataclass
class _Folder:
    """One directory of the layout, e.g. ROOT/references/hst (plus instrument subfolders)."""

    kind: FileKind
    observatory: str
    path: Path
    signature: tuple[int, ...] = ()
    files: dict[str, FileRecord] = field(default_factory=dict)
    #: instrument subfolders seen at the last listing (references only)
    subdirs: list[Path] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"dir:{KIND_DIRS[self.kind]}/{self.observatory}"


class ServedRoot:
    """A CRDS cache-layout folder as the server sees it; thread-safe."""

    def __init__(self, root: Path, index_dir: Path, *, rescan_interval: float = 10.0,
                 progress_interval: float = PROGRESS_INTERVAL) -> None:
        """*progress_interval*: seconds between progress log lines while hashing (the first
        start of a server over terabytes hashes for a long time)."""
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"served folder {root} does not exist or is not a folder")
        self.rescan_interval = rescan_interval
        self.progress_interval = progress_interval
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        self.index = diskcache.Cache(str(index_dir))
        self._lock = threading.RLock()
        self._folders: dict[tuple[FileKind, str], _Folder] = {}
        self._top_signature: tuple[int, ...] = ()
        self._last_full = 0.0
        self._configs: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}
        self._misplaced: set[tuple[Path, str]] = set()
        #: incremented whenever any served file appears, disappears or changes
        self.generation = 0
        started = time.monotonic()
        self.refresh(full=True)
        log.info("serving %s: %d files in %s (%.2fs)", self.root,
                 sum(len(f.files) for f in self._folders.values()),
                 ", ".join(self.observatories) or "no observatory folders",
                 time.monotonic() - started)

    def close(self) -> None:
        self.index.close()

    # --- discovery and freshness ------------------------------------------------------------

    @property
    def observatories(self) -> list[str]:
        """Observatories with at least one layout folder, sorted."""
        return sorted({obs for _, obs in self._folders})

    def refresh(self, *, full: bool = False) -> None:
        """Bring the file table up to date (cheap unless something changed)."""
        with self._lock:
            now = time.monotonic()
            full = full or now - self._last_full >= self.rescan_interval
            self._discover()
            for folder in list(self._folders.values()):
                if full or _signature(folder) != folder.signature:
                    self._rescan(folder)
            if full:
                self._last_full = now

    def _discover(self) -> None:
        """Find observatory folders (ROOT/<kind>/<obs>/); only re-list when ROOT changed."""
        tops = [self.root / name for name in DIR_KINDS]
        signature = tuple(_mtime(p) for p in [self.root, *tops])
        if signature == self._top_signature:
            return
        self._top_signature = signature
        present: set[tuple[FileKind, str]] = set()
        for top in tops:
            for entry in _scandir(top):
                if entry.is_dir() and is_safe_basename(entry.name) and self._inside(entry.path):
                    key = (DIR_KINDS[top.name], entry.name)
                    present.add(key)
                    if key not in self._folders:
                        self._folders[key] = self._load_folder(*key, Path(entry.path))
        for key in set(self._folders) - present:
            del self._folders[key]
            self.generation += 1

    def _load_folder(self, kind: FileKind, obs: str, path: Path) -> _Folder:
        folder = _Folder(kind, obs, path)
        stored = self.index.get(folder.key)
        if isinstance(stored, dict):
            folder.files = {name: FileRecord(*record) for name, record in stored.items()}
        return folder

    def _inside(self, path: str | Path) -> bool:
        """True when *path* (after resolving symlinks) is within the served root."""
        return Path(os.path.realpath(path)).is_relative_to(self.root)

    def _rescan(self, folder: _Folder) -> None:
        """Re-list *folder*; hash only files whose size or mtime changed."""
        files: dict[str, FileRecord] = {}
        dir_mtime = _mtime(folder.path)  # taken first: a change while listing shows next time
        listing, folder.subdirs = self._list_files(folder)
        changed = []
        for name, path, stat in listing:
            old = folder.files.get(name)
            if old and old.path == path and (old.size, old.mtime_ns) == (stat.st_size,
                                                                      stat.st_mtime_ns):
                files[name] = old
            else:
                changed.append((name, path, stat))
        progress = _HashProgress(folder.path, changed, self.progress_interval)
        for name, path, stat in changed:
            try:
                files[name] = FileRecord(path, stat.st_size, stat.st_mtime_ns, sha1_file(path)[1])
            except OSError as exc:
                log.warning("cannot read %s, not serving it: %s", path, exc)
            progress.advance(stat.st_size)
        hashed = progress.files_done
        folder.signature = (dir_mtime, *(_mtime(p) for p in folder.subdirs))
        if files != folder.files:
            folder.files = files
            self.generation += 1
            self._store(folder)
            log.info("indexed %s: %d files (%d hashed)", folder.path, len(files), hashed)

    def _list_files(
        self, folder: _Folder
    ) -> tuple[list[tuple[str, str, os.stat_result]], list[Path]]:
        """(name, path, stat) of the folder's regular files, plus one level of subfolders
        for references (crds' "instrument" cache mode); the first name found wins."""
        found: dict[str, tuple[str, str, os.stat_result]] = {}
        subdirs = []
        for entry in _scandir(folder.path):
            if not is_safe_basename(entry.name) or not self._fits_folder(folder, entry.name):
                continue
            if entry.is_symlink() and not self._inside(entry.path):
                log.warning("not serving %s: it points outside %s", entry.path, self.root)
                continue
            try:
                if entry.is_file():
                    found.setdefault(entry.name, (entry.name, entry.path, entry.stat()))
                elif entry.is_dir() and folder.kind == "reference" and not entry.is_symlink():
                    subdirs.append(Path(entry.path))
            except OSError:
                continue
        for sub in sorted(subdirs):
            for entry in _scandir(sub):
                if (is_safe_basename(entry.name) and entry.name not in found
                        and self._fits_folder(folder, entry.name)
                        and not entry.is_symlink() and entry.is_file()):
                    found[entry.name] = (entry.name, entry.path, entry.stat())
        return list(found.values()), subdirs

    def _fits_folder(self, folder: _Folder, name: str) -> bool:
        """True when *name*'s kind (crds decides it from the name) is its folder's kind.

        Clients build a file's URL from its name (a .rmap from mapping_url, anything else
        from reference_url), so a file in the wrong folder would be listed but 404: it is
        skipped, with one warning per file.
        """
        if folder.kind == "config" or file_kind(name) == folder.kind:
            return True
        if (folder.path, name) not in self._misplaced:
            self._misplaced.add((folder.path, name))
            log.warning("not serving %s/%s: a %s file does not belong in %s/ (crds would "
                        "look for it under %s/); move it there", folder.path, name,
                        file_kind(name), KIND_DIRS[folder.kind], KIND_DIRS[file_kind(name)])
        return False

    def _store(self, folder: _Folder) -> None:
        state = {name: tuple(record) for name, record in folder.files.items()}
        try:
            self.index.set(folder.key, state)
        except Exception as exc:  # an unwritable index only costs re-hashing next start
            log.warning("cannot update the index %s: %s", self.index.directory, exc)

    # --- lookups ----------------------------------------------------------------------------

    def files(self, observatory: str, kind: FileKind) -> dict[str, FileRecord]:
        """All files of one kind for *observatory* (a snapshot; do not modify)."""
        folder = self._folders.get((kind, observatory))
        return folder.files if folder else {}

    def names(self, observatory: str, kind: FileKind) -> list[str]:
        return sorted(self.files(observatory, kind))

    def find(self, observatory: str, name: str) -> tuple[FileKind, FileRecord] | None:
        """Kind and fresh record of *name* in any folder of *observatory* (None: unknown)."""
        for kind in ("mapping", "reference", "config"):
            record = self.file(observatory, kind, name)  # type: ignore[arg-type]
            if record is not None:
                return kind, record  # type: ignore[return-value]
        return None

    def file(self, observatory: str, kind: FileKind, name: str) -> FileRecord | None:
        """Fresh record of one file: re-stat'ed now and re-hashed if it changed."""
        with self._lock:
            folder = self._folders.get((kind, observatory))
            record = folder.files.get(name) if folder else None
            if folder is None or record is None:
                return None
            try:
                stat = os.stat(record.path)
            except OSError:
                self._rescan(folder)
                return folder.files.get(name)
            if (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns):
                return record
            try:
                fresh = FileRecord(record.path, stat.st_size, stat.st_mtime_ns,
                                   sha1_file(record.path)[1])
            except OSError:
                return None
            folder.files = {**folder.files, name: fresh}
            self.generation += 1
            self._store(folder)
            return fresh

    def read_text(self, observatory: str, kind: FileKind, name: str) -> str | None:
        record = self.file(observatory, kind, name)
        if record is None:
            return None
        with open(record.path, encoding="utf-8") as handle:
            return handle.read()

    def server_config(self, observatory: str) -> dict[str, Any] | None:
        """ROOT/config/<obs>/server_config parsed as a Python literal (None if absent/bad)."""
        record = self.file(observatory, "config", "server_config")
        if record is None:
            return None
        stamp = (record.size, record.mtime_ns)
        cached = self._configs.get(observatory)
        if cached and cached[0] == stamp:
            return cached[1]
        value: dict[str, Any] | None
        try:
            value = read_server_config(record.path)
        except ConfigError as exc:
            log.warning("ignoring it: %s", exc)
            value = None
        self._configs[observatory] = (stamp, value)
        return value


class _HashProgress:
    """Logs "hashing FOLDER: n/N files, x/X GB" every *interval* seconds of a long hash.

    Quick rescans (the common case) log nothing; a first start over a large mirror says
    how far it is instead of being silent for hours.
    """

    def __init__(self, folder: Path, todo: list[tuple[str, str, os.stat_result]],
                 interval: float) -> None:
        self.folder = folder
        self.interval = interval
        self.files_total = len(todo)
        self.bytes_total = sum(stat.st_size for _, _, stat in todo)
        self.files_done = 0
        self.bytes_done = 0
        self.started = self.last = time.monotonic()

    def advance(self, size: int) -> None:
        self.files_done += 1
        self.bytes_done += size
        now = time.monotonic()
        if now - self.last >= self.interval and self.files_done < self.files_total:
            self.last = now
            rate = self.bytes_done / max(now - self.started, 1e-9)
            left = (self.bytes_total - self.bytes_done) / rate if rate else 0.0
            log.info("hashing %s: %d/%d files, %s/%s (%s/s, about %.0fs left)", self.folder,
                     self.files_done, self.files_total, _gb(self.bytes_done),
                     _gb(self.bytes_total), _gb(rate), left)


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError:
        return []


def _signature(folder: _Folder) -> tuple[int, ...]:
    """mtimes of a folder and of its known instrument subfolders (a few stats)."""
    return (_mtime(folder.path), *(_mtime(p) for p in folder.subdirs))
