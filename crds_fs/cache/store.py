"""The file store: a CRDS cache layout on disk, written only by atomic, verified commits.

The cache directory is itself a CRDS cache (`mappings/<obs>/`, `references/<obs>/` flat,
`config/<obs>/`), so crds can use it directly with CRDS_PATH.  Files in progress live in
`tmp/` on the same filesystem and reach their final path only by `os.replace()` after their
size and sha1 were checked (the CernVM-FS commit protocol): a final path is either absent or
a complete, verified, read-only file, whatever crashes in between.

Per-name lock files in `tmp/` (flock, so they are per open file and work between threads,
processes and FileCache instances alike) make one process the downloader of a name; the
kernel drops the lock when its holder dies, so a killed download never wedges the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import pprint
import struct
import threading
from pathlib import Path
from typing import Any

from ..client.names import file_kind, is_safe_basename
from ..errors import ConfigError, UnknownFileError

log = logging.getLogger("crds_fs.cache")

#: Directory of each file kind in a CRDS cache layout.
KIND_DIRS = {"mapping": "mappings", "reference": "references", "config": "config"}
PART_SUFFIX = ".part"
#: per-name lock files of earlier crds-fs versions; removed by `clear_stale`
LOCK_SUFFIX = ".lock"
#: the file in tmp/ whose byte ranges are the name locks (`NameLock`)
LOCK_FILE = "locks"
#: Read-only: nothing may change a verified file in place (crds, the mount, a user).
FILE_MODE = 0o444
#: sync_file_range(2) flag: start writeback of the range's dirty pages, do not wait
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    """libc's sync_file_range (Linux), or None where it does not exist."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()


class NameLock:
    """Exclusive, process-shared lock on one file name: a one-byte range of `tmp/locks`.

    Why not a lock file per name (flock on ``tmp/<name>.lock``, created and unlinked per
    download, as before): ext4 looks at every recently deleted inode of a block group when
    it allocates a new one, so thousands of short-lived lock files made each create slower
    than the last; in a sync of ~4,000 files that was a fifth of the client's CPU.  Open
    file description locks (``F_OFD_SETLK``) on one byte per name, at an offset hashed
    from the name (62 bits: a collision is never expected), keep flock's semantics: the
    lock belongs to this object's descriptor, so two threads (or two FileCaches) of one
    process exclude each other like two processes do, and the kernel drops the lock when
    the holder dies.  The lock file is created once and never removed.
    """

    #: struct flock on Linux (l_type, l_whence, pad, l_start, l_len, l_pid, pad)
    _FLOCK = struct.Struct("hh4xqqi4x")

    def __init__(self, lock_file: Path, name: str) -> None:
        self.path = lock_file
        self.name = name
        digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8)
        self.offset = int.from_bytes(digest.digest(), "big") >> 2
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never blocks."""
        if self._fd is not None:
            raise RuntimeError(f"the lock of {self.name} is already held by this object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        request = self._FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.offset, 1, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (closing its descriptor releases it)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None


class FileStore:
    """Paths of one observatory inside a cache dir, temp files, and the atomic commit."""

    def __init__(self, root: Path, observatory: str) -> None:
        self.root = Path(root)
        self.observatory = observatory
        self.tmp_dir = self.root / "tmp"
        self._dirs_lock = threading.Lock()
        self._unsynced_dirs: set[Path] = set()
        try:
            for sub in KIND_DIRS.values():
                (self.root / sub / observatory).mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cache directory {self.root} is not usable ({exc.strerror}); set CRDS_FS_CACHE "
                "to a writable directory"
            ) from None

    # --- paths ----------------------------------------------------------------------------

    @staticmethod
    def check_name(name: str) -> None:
        """Refuse names that could escape their directory (they come from users/servers)."""
        if not is_safe_basename(name):
            raise UnknownFileError(f"'{name}' is not a valid CRDS file name")

    def final_path(self, name: str) -> Path:
        """Where *name* lives in the CRDS layout: `<root>/<kind dir>/<obs>/<name>` (flat)."""
        self.check_name(name)
        return self.root / KIND_DIRS[file_kind(name)] / self.observatory / name

    def part_path(self, name: str) -> Path:
        """The one temp file of a download of *name* (one downloader at a time: the lock)."""
        return self.tmp_dir / (name + PART_SUFFIX)

    def lock(self, name: str) -> NameLock:
        return NameLock(self.tmp_dir / LOCK_FILE, name)

    # --- writing --------------------------------------------------------------------------

    def open_part(self, name: str, *, keep: bool = False) -> tuple[Path, int]:
        """Open the temp file of *name* for writing (truncated unless *keep*); call under lock."""
        path = self.part_path(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if keep else os.O_TRUNC)
        return path, os.open(path, flags, 0o600)

    @staticmethod
    def start_writeback(fd: int, offset: int, length: int) -> None:
        """Ask the kernel to start writing bytes [offset, offset+length) of *fd* to disk now.

        Only an early start, not a durability point: `commit()` still fsyncs the whole file
        before the rename, so crash safety does not depend on this.  Issued while a download
        is still streaming, it overlaps the disk writes with the transfer, so the final fsync
        finds little left to do (on the benchmark machine it took the fsync of 256 MiB from
        ~80 ms of waiting to almost nothing) and dirty pages never pile up to the point where
        the kernel throttles the writer.  A no-op where sync_file_range does not exist.
        """
        if _sync_file_range is not None:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def commit(self, part: Path, fd: int, name: str) -> Path:
        """fsync the verified temp file, make it read-only and rename it into place.

        The bytes are on disk before the rename, so after a crash the file is either at its
        final path whole, or not there at all.  The directory is not fsynced per file (it
        was, at ~25 ms a file under load, the slowest step of a sync of small files): a
        rename lost in a crash only means a missing file, which the index notices and
        fetches again.  `sync_dirs()` (at close) makes the renames so far durable.
        """
        final = self.final_path(name)
        os.fsync(fd)
        os.fchmod(fd, FILE_MODE)
        os.replace(part, final)
        with self._dirs_lock:
            self._unsynced_dirs.add(final.parent)
        return final

    def sync_dirs(self) -> None:
        """fsync the directories that got files since the last call (errors are logged:
        at worst a crash loses those renames, and the files are fetched again)."""
        with self._dirs_lock:
            dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        for path in sorted(dirs):
            try:
                _fsync_dir(path)
            except OSError as exc:
                log.warning("could not fsync the cache directory %s: %s", path, exc)

    @staticmethod
    def discard(part: Path) -> None:
        """Remove a temp file (failed or abandoned download)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)

    def remove(self, name: str) -> bool:
        """Delete a committed file (eviction, or a final file that failed re-verification)."""
        try:
            os.unlink(self.final_path(name))
            return True
        except FileNotFoundError:
            return False

    def remove_unused(self, name: str) -> bool | None:
        """Delete a committed file unless some process has it open as a Reader.

        Readers hold a shared flock on their descriptor (see `lock_shared`); an exclusive
        non-blocking flock here fails while any of them, in any process, holds one.
        Returns True (removed), False (in use: kept) or None (already gone).
        """
        path = self.final_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            try:
                os.unlink(path)
            except FileNotFoundError:
                return None
            return True
        finally:
            os.close(fd)

    @staticmethod
    def lock_shared(fd: int) -> None:
        """Mark *fd* (a Reader's) as in use, so `remove_unused` in any process skips it."""
        fcntl.flock(fd, fcntl.LOCK_SH)

    def disk_space(self) -> tuple[int, int]:
        """(free bytes for unprivileged writers, total bytes) of the cache's filesystem."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def write_config(self, server_info: dict[str, Any]) -> None:
        """Write `config/<obs>/server_config` and `ref_cache_subdir_mode` like crds does.

        With them the cache dir works as CRDS_PATH for crds itself (CRDS_READONLY_CACHE=1,
        section 3.7 of the reference): crds needs server_config (a Python literal) and must
        be told the layout is flat.  Written atomically, only when the content changed.
        """
        config = self.root / KIND_DIRS["config"] / self.observatory
        info = {k: v for k, v in server_info.items() if k != "download_metadata"}
        for name, text in (("server_config", pprint.pformat(info) + "\n"),
                           ("ref_cache_subdir_mode", "flat\n")):
            path = config / name
            try:
                if path.read_text() == text:
                    continue
            except (FileNotFoundError, UnicodeDecodeError):
                pass
            temp = self.tmp_dir / f"config-{name}-{os.getpid()}-{threading.get_ident()}"
            try:
                temp.write_text(text)
                os.replace(temp, path)
            except OSError as exc:  # a convenience for crds users: never fail open for it
                log.warning("could not write %s: %s", path, exc)
                self.discard(temp)

    # --- maintenance ----------------------------------------------------------------------

    def clear_stale(self) -> int:
        """Delete temp files of downloads whose process is gone; returns how many.

        Only `tmp/` is listed (it holds just the downloads in progress), never the big
        mappings/references directories.  A name whose lock is held belongs to a live
        download (here or in another process) and is left alone.  Per-name lock files of
        older versions (``<name>.lock``) are removed when nobody holds them.
        """
        removed = 0
        try:
            entries = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.endswith(LOCK_SUFFIX):
                _remove_unlocked(self.tmp_dir / entry)
        for name in {e[: -len(PART_SUFFIX)] for e in entries if e.endswith(PART_SUFFIX)}:
            lock = self.lock(name)
            if not lock.try_acquire():
                continue
            try:
                if self.part_path(name).exists():
                    self.discard(self.part_path(name))
                    log.info("removed the temp file of an interrupted download of %s", name)
                    removed += 1
            finally:
                lock.release()
        return removed


def _remove_unlocked(path: Path) -> None:
    """Unlink an old-style lock file unless some process holds its flock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError:
        pass  # held: an older crds-fs is downloading that name right now
    finally:
        os.close(fd)


def file_stamp(st: os.stat_result) -> str:
    """'inode:mtime_ns' of a cached file: changes when the file is rewritten or replaced
    (crds-fs never writes a committed file), so a different stamp means "hash it again"."""
    return f"{st.st_ino}:{st.st_mtime_ns}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
