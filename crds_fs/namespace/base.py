"""Building blocks of the mounted tree: attributes, open-file handles, providers.

The namespace decides what every path of a mount means without knowing about FUSE, so it
can be tested with plain function calls (the idea behind ratarmount's "mount sources").
A `Provider` owns one top-level directory (`mappings/`, `config/`, ...); the `MountSource`
routes each call to the provider named by the first path component.

Attributes are plain dicts in the shape mfusepy expects (`st_mode`, `st_size`, times in
nanoseconds because the glue sets `use_ns`).  CRDS files are immutable, so every attribute is
derived from the catalog alone and never from the cache folder: `ls -l` of 44k references
costs no disk scan and no network.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from ..errors import (
    IsADirError,
    NoSuchAttributeError,
    NoSuchPathError,
    NotADirError,
    NotASymlinkError,
    ReadOnlyError,
    UnsupportedAttributeError,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..cache import FileCache

Attrs = dict[str, Any]
Parts = tuple[str, ...]

FILE_MODE = stat.S_IFREG | 0o444
DIR_MODE = stat.S_IFDIR | 0o555
#: Preferred I/O size reported to programs (cp, Python's buffered I/O use st_blksize):
#: large requests mean fewer trips through the FUSE loop.
IO_BLOCK_SIZE = 1 << 20
#: Prefix of the extended attributes this mount publishes.
XATTR_PREFIX = "user.crds."

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass
class MountEnv:
    """What every provider of one mount shares: the cache, the context, fixed stamps."""

    cache: FileCache
    observatory: str
    context: str
    #: mtime/ctime of every path, in ns; fixed per catalog so remounts show the same times
    epoch_ns: int
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    mountpoint: str | None = None
    #: returns the mount's live status (filled in by MountSource for `.crds-fs/stats`)
    status: Callable[[], dict[str, Any]] = field(default=lambda: {})
    #: True when the filesystem request being answered by the calling thread was
    #: interrupted (its reader got a signal); the FUSE glue installs libfuse's
    #: fuse_interrupted().  Long waits (downloads in open) poll it and give up.
    interrupted: Callable[[], bool] = field(default=lambda: False)

    def file_attrs(self, size: int) -> Attrs:
        """Attributes of a read-only regular file of *size* bytes."""
        t = self.epoch_ns
        return {
            "st_mode": FILE_MODE, "st_nlink": 1, "st_size": size,
            "st_blocks": (size + 511) // 512, "st_blksize": IO_BLOCK_SIZE,
            "st_uid": self.uid, "st_gid": self.gid,
            "st_atime": t, "st_mtime": t, "st_ctime": t,
        }

    def dir_attrs(self, subdirs: int = 0) -> Attrs:
        """Attributes of a read-only directory with *subdirs* subdirectories (for st_nlink)."""
        t = self.epoch_ns
        return {
            "st_mode": DIR_MODE, "st_nlink": 2 + subdirs, "st_size": 0,
            "st_uid": self.uid, "st_gid": self.gid,
            "st_atime": t, "st_mtime": t, "st_ctime": t,
        }


# --- who is calling ---------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The process behind a filesystem call (FUSE tells uid, gid and pid of each request)."""

    uid: int
    gid: int
    pid: int


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("crds_fs_caller",
                                                                         default=None)


@contextlib.contextmanager
def calling_as(caller: Caller | None) -> Iterator[None]:
    """Run namespace calls on behalf of *caller* (set by the FUSE glue per request)."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


def current_caller() -> Caller | None:
    """The caller of the filesystem call being answered; None outside FUSE (the mount's
    own process, tests calling the namespace directly)."""
    return _caller.get()


def may_change_mount(env: MountEnv) -> bool:
    """Whether the current caller may change the mount's state (register datasets).

    Only the mount's owner (the daemon's uid) and root may: with `-o allow_other` other
    users see the mount, but letting them make the daemon read files on its own authority
    would make it a confused deputy.
    """
    caller = current_caller()
    return caller is None or caller.uid in (env.uid, 0)


def is_write_open(flags: int) -> bool:
    """True when open(2) *flags* ask for anything but reading."""
    return bool(flags & _WRITE_FLAGS)


class Listing(Sequence[tuple[str, Attrs]]):
    """A directory listing that builds each entry's attributes only when asked for.

    The FUSE glue pages through big listings (44k references) by offset; holding 44k
    attribute dicts would cost ~20 MB per listing, the names alone are shared with the
    catalog.
    """

    def __init__(self, names: Sequence[str], attrs_of: Callable[[str], Attrs]) -> None:
        self._names = names
        self._attrs_of = attrs_of

    def __len__(self) -> int:
        return len(self._names)

    @overload
    def __getitem__(self, index: int) -> tuple[str, Attrs]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, Attrs]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [(name, self._attrs_of(name)) for name in self._names[index]]
        name = self._names[index]
        return name, self._attrs_of(name)

    def __iter__(self) -> Iterator[tuple[str, Attrs]]:
        for name in self._names:
            yield name, self._attrs_of(name)

    def names(self) -> Sequence[str]:
        """The names only (cheap)."""
        return self._names


# --- open files -----------------------------------------------------------------------------


class Handle:
    """An open file of the mount.

    `keep_cache` tells the kernel it may keep cached pages across opens (CRDS files never
    change); `direct_io` makes the kernel pass every read through, for generated files
    whose size may change between stat and read.
    """

    keep_cache = True
    direct_io = False

    def read(self, size: int, offset: int) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Read into *buffer* at *offset*; returns the byte count (0 at end of file)."""
        data = self.read(len(buffer), offset)
        buffer[: len(data)] = data
        return len(data)

    def fileno(self) -> int | None:
        """A kernel fd holding the bytes, when there is one (lets the glue splice)."""
        return None

    def release(self) -> None:
        """Free what the handle holds; called once when the last descriptor closes."""


class BytesHandle(Handle):
    """Generated content fixed at open time (config files, stats)."""

    def __init__(self, data: bytes, *, volatile: bool = False) -> None:
        self.data = data
        if volatile:
            self.keep_cache = False
            self.direct_io = True

    def read(self, size: int, offset: int) -> bytes:
        return self.data[offset: offset + size]


class FileHandle(Handle):
    """A cached CRDS file, read with pread on a descriptor kept open until release.

    Made from a `cache.Reader`, which pins the file against eviction until released.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.fd = reader.fileno()
        self.name = reader.name

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [buffer], offset)

    def fileno(self) -> int | None:
        return self.fd

    def release(self) -> None:
        self.fd = -1
        self.reader.close()


# --- providers ------------------------------------------------------------------------------


class Provider:
    """One top-level directory of the mount.

    *parts* are the path components below the provider's own directory (`()` is the
    directory itself).  Everything is read-only unless a subclass says otherwise: the
    mutating methods all refuse with EROFS, naming the path, so a provider such as the
    future `bestrefs/` can opt in to exactly the operations it supports.
    """

    #: top-level directory name
    name = ""

    def __init__(self, env: MountEnv) -> None:
        self.env = env

    # reading
    def getattr(self, parts: Parts) -> Attrs:
        raise NotImplementedError

    def readdir(self, parts: Parts) -> Sequence[tuple[str, Attrs]]:
        raise NotImplementedError

    def subdir_count(self) -> int:
        """How many subdirectories the provider's own directory has (for st_nlink)."""
        return 0

    def open(self, parts: Parts, flags: int) -> Handle:
        raise NoSuchPathError(f"{self.path(parts)}: no such file")

    def readlink(self, parts: Parts) -> str:
        self.getattr(parts)
        raise NotASymlinkError(f"{self.path(parts)}: not a symbolic link")

    def getxattr(self, parts: Parts, name: str) -> bytes:
        self.getattr(parts)
        raise missing_xattr(self.path(parts), name)

    def listxattr(self, parts: Parts) -> list[str]:
        self.getattr(parts)
        return []

    # writing: refused unless a provider overrides
    def refuse(self, operation: str, parts: Parts) -> ReadOnlyError:
        """The EROFS error for *operation* on *parts* (returned so callers can raise it)."""
        return ReadOnlyError(
            f"{operation} {self.path(parts)}: the crds-fs mount is read-only "
            "(CRDS files are immutable; copy a file out to modify it)"
        )

    def create(self, parts: Parts, mode: int) -> Handle:
        raise self.refuse("create", parts)

    def mkdir(self, parts: Parts, mode: int) -> None:
        raise self.refuse("mkdir", parts)

    def rmdir(self, parts: Parts) -> None:
        raise self.refuse("rmdir", parts)

    def unlink(self, parts: Parts) -> None:
        raise self.refuse("unlink", parts)

    def symlink(self, parts: Parts, target: str) -> None:
        raise self.refuse("symlink", parts)

    def rename(self, parts: Parts, new_parts: Parts) -> None:
        raise self.refuse("rename", parts)

    def setattr(self, operation: str, parts: Parts) -> None:
        """chmod/chown/truncate/utimens."""
        raise self.refuse(operation, parts)

    def setxattr(self, parts: Parts, name: str, value: bytes) -> None:
        raise self.refuse("setxattr", parts)

    def removexattr(self, parts: Parts, name: str) -> None:
        raise self.refuse("removexattr", parts)

    # helpers
    def path(self, parts: Parts) -> str:
        """The mount-relative path of *parts*, for messages."""
        return "/".join((self.name, *parts))

    def file_parts(self, parts: Parts) -> Parts:
        """*parts* if they name a file here (getattr succeeds and is not a dir), else raise."""
        attrs = self.getattr(parts)
        if stat.S_ISDIR(attrs["st_mode"]):
            raise IsADirError(f"{self.path(parts)}: is a directory")
        return parts

    def dir_parts(self, parts: Parts) -> Parts:
        attrs = self.getattr(parts)
        if not stat.S_ISDIR(attrs["st_mode"]):
            raise NotADirError(f"{self.path(parts)}: not a directory")
        return parts


def missing_xattr(path: str, name: str) -> Exception:
    """ENOTSUP outside the user.* namespace (so `ls -l` stops asking), else ENODATA."""
    if not name.startswith("user."):
        return UnsupportedAttributeError(
            f"{path}: extended attribute namespace of {name!r} is not supported"
        )
    return NoSuchAttributeError(f"{path}: no extended attribute {name!r}")


class LazyBytes:
    """Content generated once on first use, thread-safe (sizes must be exact for stat)."""

    def __init__(self, build: Callable[[], bytes]) -> None:
        self._build = build
        self._value: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
                value = self._value
        return value
