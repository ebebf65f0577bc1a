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

Safety: a file is checked when it is opened, not only when it is listed, because the folder
can change between rescans (a served file replaced by a symlink to /etc/shadow with the
folder's mtime put back, or by a FIFO).  `ServedRoot.open_served` opens with O_NOFOLLOW and
O_NONBLOCK (a FIFO never blocks), then checks on the open descriptor that it is a regular
file inside ROOT; hashing and downloads read only through such descriptors, so no open
can block under the store lock.  (A rescan still hashes changed regular files while
holding it; a single file found changed on request is re-hashed outside it.)
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import diskcache

from ..bestrefs.sources import read_server_config
from ..client.names import FileKind, file_kind, is_safe_basename
from ..config import parse_size
from ..errors import ConfigError
from ..hashing import DEFAULT_CHUNK_SIZE, Digests, digest_stream

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
#: flags of every open of a served file: never follow a final symlink, never block
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: where Linux shows the path an open descriptor really refers to
_FD_DIR = "/proc/self/fd"
#: bounds of the manifest chunk size (CRDS_FS_SERVE_CHUNK_SIZE): small enough for tests,
#: never so small that a manifest of a 5 GB file gets huge (64 KiB -> 80k entries)
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 256 << 20


def configured_chunk_size() -> int:
    """Manifest chunk size from CRDS_FS_SERVE_CHUNK_SIZE (default 8 MiB), bounded."""
    text = os.environ.get("CRDS_FS_SERVE_CHUNK_SIZE", "").strip()
    size = parse_size(text, what="CRDS_FS_SERVE_CHUNK_SIZE") if text else DEFAULT_CHUNK_SIZE
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"CRDS_FS_SERVE_CHUNK_SIZE={text!r} must be between 64K and 256M")
    return size


class NotServableError(OSError):
    """A served name no longer refers to a regular file inside ROOT (symlink out, FIFO, ...)."""


class FileRecord(NamedTuple):
    """One served file as last seen on disk."""

    #: absolute path (a str: 44k Path objects cost a second to build)
    path: str
    size: int
    mtime_ns: int
    sha1: str
    #: chunk manifest computed in the same pass as sha1 (0 / () in indexes of older versions)
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: str, mtime_ns: int, digests: Digests) -> FileRecord:
        return cls(path, digests.size, mtime_ns, digests.sha1, digests.chunk_size,
                   digests.chunks)


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
                 progress_interval: float = PROGRESS_INTERVAL,
                 chunk_size: int | None = None) -> None:
        """*progress_interval*: seconds between progress log lines while hashing (the first
        start of a server over terabytes hashes for a long time).  *chunk_size*: of the
        chunk manifests (default CRDS_FS_SERVE_CHUNK_SIZE, else 8 MiB)."""
        self.chunk_size = chunk_size or configured_chunk_size()
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
                files[name] = self._hash_path(path)
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

    def _hash_path(self, path: str) -> FileRecord:
        fd = self.open_served(path)
        try:
            stat = os.fstat(fd)
            digests = _hash_fd(fd, self.chunk_size)
        finally:
            os.close(fd)
        return FileRecord.of(path, stat.st_mtime_ns, digests)

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
        """Fresh record of one file: re-checked now and re-hashed if it changed.

        Fast path (file info for thousands of names): an lstat showing the same regular
        file (not a symlink, same size and mtime) returns the record as is; anything else
        goes through `open_file`'s checks.  Bytes are only ever read through `open_file`.
        """
        with self._lock:
            folder = self._folders.get((kind, observatory))
            record = folder.files.get(name) if folder else None
        if record is None:
            return None
        try:
            seen = os.lstat(record.path)
        except OSError:
            seen = None
        if (seen is not None and stat_mod.S_ISREG(seen.st_mode)
                and (seen.st_size, seen.st_mtime_ns) == (record.size, record.mtime_ns)):
            return record
        opened = self.open_file(observatory, kind, name)
        if opened is None:
            return None
        os.close(opened[1])
        return opened[0]

    def open_file(self, observatory: str, kind: FileKind,
                  name: str) -> tuple[FileRecord, int, os.stat_result] | None:
        """(fresh record, open read-only fd, its fstat) of one served file, or None.

        The descriptor is the checked file itself (see `open_served`); the caller closes it.
        A file whose size or mtime changed is re-hashed through that descriptor, outside
        the store lock.
        """
        with self._lock:
            folder = self._folders.get((kind, observatory))
            record = folder.files.get(name) if folder else None
            if folder is None or record is None:
                return None
        try:
            fd = self.open_served(record.path)
        except FileNotFoundError:
            with self._lock:
                self._rescan(folder)
                record = folder.files.get(name)
            if record is None:
                return None
            try:
                fd = self.open_served(record.path)
            except OSError as exc:
                log.warning("not serving %s: %s", record.path, exc)
                return None
        except OSError as exc:
            log.warning("not serving %s: %s", record.path, exc)
            return None
        try:
            fresh = self._fresh_record(folder, name, record, fd)
        except OSError as exc:
            os.close(fd)
            log.warning("cannot read %s, not serving it: %s", record.path, exc)
            return None
        return fresh, fd, os.fstat(fd)

    def _fresh_record(self, folder: _Folder, name: str, record: FileRecord,
                      fd: int) -> FileRecord:
        """*record*, re-hashed from *fd* when the open file's size or mtime differ."""
        stat = os.fstat(fd)
        if (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns):
            return record
        fresh = FileRecord.of(record.path, stat.st_mtime_ns, _hash_fd(fd, self.chunk_size))
        with self._lock:
            if folder.files.get(name) == record:
                folder.files = {**folder.files, name: fresh}
                self.generation += 1
                self._store(folder)
        return fresh

    def manifest(self, observatory: str, name: str) -> FileRecord | None:
        """Fresh record of *name* with its chunk manifest (None: not served).

        Manifests are computed with the sha1 when a file is hashed; a record from an index
        written before manifests existed (or with another chunk size) is hashed again now,
        through a checked descriptor, once.
        """
        found = self.find(observatory, name)
        if found is None:
            return None
        kind, record = found
        if record.chunk_size == self.chunk_size and record.chunks:
            return record
        opened = self.open_file(observatory, kind, name)
        if opened is None:
            return None
        record, fd, stat = opened
        try:
            if record.chunk_size == self.chunk_size and record.chunks:
                return record
            fresh = FileRecord.of(record.path, stat.st_mtime_ns, _hash_fd(fd, self.chunk_size))
        finally:
            os.close(fd)
        with self._lock:
            folder = self._folders.get((kind, observatory))
            if folder is not None and folder.files.get(name) == record:
                folder.files = {**folder.files, name: fresh}
                if fresh.sha1 != record.sha1 or fresh.size != record.size:
                    self.generation += 1
                self._store(folder)
        return fresh

    def open_served(self, path: str) -> int:
        """A read-only descriptor of *path*, which must be a regular file inside ROOT.

        Opened with O_NOFOLLOW|O_NONBLOCK, so a FIFO or device opens at once (and is refused
        by fstat) and a symlink is not followed blindly: a symlink is resolved and followed
        only when its target is inside ROOT (mirrors use them).  Whatever was opened, the
        path the descriptor really has (/proc/self/fd) must be under ROOT.
        Raises NotServableError (an OSError) for anything else.
        """
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            real = os.path.realpath(path)  # a symlink: allowed if its target is inside ROOT
            if not Path(real).is_relative_to(self.root):
                raise NotServableError(f"it points outside {self.root}") from None
            fd = os.open(real, _OPEN_FLAGS)
        try:
            mode = os.fstat(fd).st_mode
            if not stat_mod.S_ISREG(mode):
                raise NotServableError(f"it is not a regular file ({_kind_of(mode)})")
            try:
                opened = os.readlink(f"{_FD_DIR}/{fd}")
            except OSError:  # no /proc: fall back to resolving the name
                opened = os.path.realpath(path)
            if not Path(opened).is_relative_to(self.root):
                raise NotServableError(f"it is opened as {opened}, outside {self.root}")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_text(self, observatory: str, kind: FileKind, name: str) -> str | None:
        record = self.file(observatory, kind, name)
        if record is None:
            return None
        return self.read_served_text(record.path)

    def read_served_text(self, path: str, limit: int | None = None) -> str:
        """Text of the served file *path* (opened safely, see `open_served`).

        With *limit*, at most limit + 1 bytes are read, so a caller checking the length
        sees an oversized file without reading it all.  Raises OSError (NotServableError
        included) or UnicodeDecodeError.
        """
        with os.fdopen(self.open_served(path), "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
        return data.decode("utf-8")

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


def _hash_fd(fd: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Digests:
    """Size, sha1 and chunk manifest of an open file from its start; *fd* stays open."""
    with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
        handle.seek(0)
        return digest_stream(handle, chunk_size)  # type: ignore[arg-type]


def _kind_of(mode: int) -> str:
    for test, kind in ((stat_mod.S_ISFIFO, "a FIFO"), (stat_mod.S_ISDIR, "a directory"),
                       (stat_mod.S_ISSOCK, "a socket"), (stat_mod.S_ISCHR, "a device"),
                       (stat_mod.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return f"mode {mode:o}"


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
