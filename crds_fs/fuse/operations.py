"""mfusepy glue: translate FUSE calls into `MountSource` calls, errors into errno values.

No decisions are made here; what a path means lives in `crds_fs.namespace`.  The only code
beyond translation is about speed, because every call crosses from the kernel into Python:

* readdir answers "readdir plus" requests with full attributes and real offsets, so `ls -l`
  or `find` of 44k references costs no per-file LOOKUP round trip (libfuse only forwards
  attributes to the kernel for entries filled with offsets);
* reads of cached files hand libfuse the file descriptor (`read_buf`), so the bytes are
  copied (or spliced) by libfuse in C without the GIL, in parallel, never through Python;
* open() sets keep_cache: CRDS files are immutable, so pages read once stay in the
  kernel's cache across opens, and attribute/entry timeouts are long (set by the caller).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import mfusepy

from ..errors import CrdsFsError, MountError
from ..namespace import MountSource
from ..namespace.base import Caller, calling_as
from .mountinfo import find_mount

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# libfuse 3 flags (fuse.h, fuse_common.h)
FUSE_READDIR_PLUS = 1 << 0
FUSE_FILL_DIR_PLUS = 1 << 1
FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_CAP_SPLICE_WRITE = 1 << 7
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_SPLICE_MOVE = 1 << 8
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_CAP_PARALLEL_DIROPS = 1 << 18

#: largest read request the kernel sends (see fuse_options)
MAX_READ = 512 * 1024

def _libfuse3_function(name: str) -> Any:
    """Function *name* of the libfuse3 mapped into this process (the one mfusepy loaded),
    or None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            path = next((line[line.index("/"):].strip() for line in maps
                         if "libfuse3" in line and "/" in line), None)
        return getattr(ctypes.CDLL(path), name) if path else None
    except (OSError, AttributeError):
        return None


def _load_fuse_interrupted() -> Callable[[], bool] | None:
    """libfuse3's `fuse_interrupted()` from the very library mfusepy loaded, or None.

    Call it only once the FUSE session exists (from `init` on), see `init_with_config`.

    It says whether the request the calling FUSE thread is answering was interrupted: the
    kernel sends FUSE_INTERRUPT when the reader waiting for it gets a signal (Ctrl-C,
    SIGTERM, SIGKILL), libfuse marks the request.  mfusepy does not wrap it, so it is taken
    from the libfuse3 mapped into this process (dlopen of a loaded library returns the
    same instance, hence the same per-thread request context).
    """
    path = None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                if "libfuse3" in line and "/" in line:
                    path = line[line.index("/"):].strip()
                    break
    except OSError:
        return None
    if path is None:
        return None
    try:
        func = ctypes.CDLL(path).fuse_interrupted
    except (OSError, AttributeError):
        return None
    func.argtypes = []
    func.restype = ctypes.c_int
    return lambda: bool(func())


#: None where libfuse3 has no fuse_interrupted (then opens wait for their deadline)
fuse_interrupted = _load_fuse_interrupted()

#: libfuse's fuse_get_context() (its first field is the `struct fuse *`) and
#: fuse_invalidate_path(fuse, path) (libfuse >= 3.1): how a refreshed catalog reaches the
#: kernel's attribute and page caches
_fuse_get_context = _libfuse3_function("fuse_get_context")
_fuse_invalidate_path = _libfuse3_function("fuse_invalidate_path")
if _fuse_get_context is not None and _fuse_invalidate_path is not None:
    _fuse_get_context.restype = ctypes.POINTER(ctypes.c_void_p)
    _fuse_get_context.argtypes = []
    _fuse_invalidate_path.restype = ctypes.c_int
    _fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


class _BufVec(ctypes.Structure):
    """`struct fuse_bufvec` with its one inline `struct fuse_buf` (mfusepy declares a pointer)."""

    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", mfusepy.fuse_buf * 1),
    ]


def translate(func: F) -> F:
    """Turn CrdsFsError into FuseOSError(errno); unexpected exceptions into EIO, logged."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CrdsFsError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODATA, errno.EOPNOTSUPP):
                log.debug("%s%r: %s", func.__name__, args[1:3], exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        except OSError:
            raise
        except Exception:
            log.exception("crds-fs bug in %s%r; answering EIO", func.__name__, args[1:3])
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def caller() -> Caller:
    """uid, gid and pid of the process whose request is being answered (libfuse's
    fuse_get_context); the namespace decides what that caller may do."""
    uid, gid, pid = mfusepy.fuse_get_context()
    return Caller(uid, gid, pid)


def fill_stat(st: Any, attrs: dict[str, Any]) -> None:
    """Copy namespace attributes into a c_stat (faster than mfusepy.set_st_attrs)."""
    st.st_mode = attrs["st_mode"]
    st.st_nlink = attrs.get("st_nlink", 1)
    st.st_size = attrs.get("st_size", 0)
    st.st_blocks = attrs.get("st_blocks", 0)
    st.st_blksize = attrs.get("st_blksize", 0)
    st.st_uid = attrs.get("st_uid", 0)
    st.st_gid = attrs.get("st_gid", 0)
    for key in ("st_atime", "st_mtime", "st_ctime"):
        spec = getattr(st, key + "spec")
        spec.tv_sec, spec.tv_nsec = divmod(int(attrs.get(key, 0)), 10**9)


class CrdsOperations(mfusepy.Operations):
    """The FUSE operations of one mount, each a call of the `MountSource`."""

    use_ns = True

    def __init__(
        self,
        source: MountSource,
        *,
        on_init: Callable[[], None] | None = None,
        on_destroy: Callable[[], None] | None = None,
        readahead_kb: int = 0,
    ) -> None:
        self.source = source
        self.on_init = on_init
        self.on_destroy = on_destroy
        #: kernel readahead to set for the mount once it is up (0: leave the default)
        self.readahead_kb = readahead_kb
        #: must equal the max_read mount option (libfuse refuses a mismatch); see run_fuse
        self.max_read = 0
        #: set once the kernel has talked to us: the mount was up
        self.initialized = False
        #: libfuse's `struct fuse *` while mounted (for invalidate)
        self._fuse: int | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.max_read = self.max_read
            # Always send attributes with listings (not only for the first chunk), and let
            # libfuse splice file data straight from the cache file into /dev/fuse.
            conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
            # Files never change: no attribute check before every cached read.
            conn.want &= ~FUSE_CAP_AUTO_INVAL_DATA
            for cap in (FUSE_CAP_READDIRPLUS, FUSE_CAP_SPLICE_WRITE, FUSE_CAP_SPLICE_MOVE,
                        FUSE_CAP_PARALLEL_DIROPS):
                if conn.capable & cap:
                    conn.want |= cap
            log.debug("FUSE connection: protocol %d.%d, capable %#x, want %#x, max_write %d, "
                     "max_read %d, max_readahead %d", conn.proto_major, conn.proto_minor,
                     conn.capable, conn.want, conn.max_write, conn.max_read, conn.max_readahead)
        self.initialized = True
        if _fuse_get_context is not None and _fuse_invalidate_path is not None:
            self._fuse = _fuse_get_context()[0]  # valid in init: libfuse set the context
            self.source.invalidate = self.invalidate
        if fuse_interrupted is not None:
            # only now: before fuse_new() libfuse's per-thread context key does not exist
            # and fuse_interrupted() would crash; after it, other threads just get 0
            self.source.env.interrupted = fuse_interrupted
        mountpoint = self.source.env.mountpoint
        if self.readahead_kb and mountpoint:
            threading.Thread(target=set_readahead, args=(mountpoint, self.readahead_kb),
                             name="crds-fs-readahead", daemon=True).start()
        if self.on_init is not None:
            self.on_init()

    def invalidate(self, paths: Any) -> int:
        """Make the kernel forget cached attributes and pages of *paths* (files a refresh
        removed or changed); paths it never looked up are skipped.  Returns how many it
        knew.  Never call it from a FUSE request about the same file (libfuse's rule)."""
        fuse, known = self._fuse, 0
        for path in paths:
            if fuse is not None and _fuse_invalidate_path(fuse, path.encode()) == 0:
                known += 1
        return known

    def destroy(self, path: str) -> None:
        self._fuse = None
        self.source.close()
        if self.on_destroy is not None:
            self.on_destroy()

    # --- reading ------------------------------------------------------------------------

    @translate
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self.source.getattr(path)

    @translate
    def readdir(self, path: str, fh: int) -> list[Any]:
        # Used only if CrdsFUSE's offset-aware readdir is bypassed.
        entries = [(".", self.source.getattr(path), 0), ("..", None, 0)]
        return entries + [(name, attrs, 0) for name, attrs in self.source.readdir(path)]

    @translate
    def listing(self, path: str) -> Any:
        return self.source.readdir(path)

    @translate
    def open(self, path: str, fi: Any) -> int:
        opened = self.source.open(path, fi.flags)
        fi.fh = opened.fh
        fi.keep_cache = int(opened.keep_cache)
        fi.direct_io = int(opened.direct_io)
        return 0

    @translate
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return self.source.read(path, size, offset, fi.fh)

    @translate
    def readinto(self, fh: int, buffer: memoryview, offset: int) -> int:
        return self.source.readinto(fh, buffer, offset)

    @translate
    def read_fd(self, fh: int, size: int) -> int | None:
        return self.source.read_fd(fh, size)

    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: Any) -> int:
        # Present so mfusepy registers the callback; CrdsFUSE.read_buf does the work.
        raise mfusepy.FuseOSError(errno.ENOSYS)

    @translate
    def release(self, path: str, fi: Any) -> int:
        self.source.release(path, fi.fh)
        return 0

    @translate
    def readlink(self, path: str) -> str:
        return self.source.readlink(path)

    @translate
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.source.getxattr(path, name)

    @translate
    def listxattr(self, path: str) -> list[str]:
        return self.source.listxattr(path)

    @translate
    def access(self, path: str, amode: int) -> int:
        self.source.access(path, amode)
        return 0

    @translate
    def statfs(self, path: str) -> dict[str, int]:
        return self.source.statfs()

    # --- writing (the namespace refuses with EROFS unless a provider allows it) ----------

    @translate
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        opened = self.source.create(path, mode)
        if fi is not None:
            fi.fh = opened.fh
        return 0

    @translate
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return self.source.write(path, data, offset, fi.fh)

    @translate
    def mkdir(self, path: str, mode: int) -> int:
        self.source.mkdir(path, mode)
        return 0

    @translate
    def rmdir(self, path: str) -> int:
        self.source.rmdir(path)
        return 0

    @translate
    def unlink(self, path: str) -> int:
        with calling_as(caller()):
            self.source.unlink(path)
        return 0

    @translate
    def symlink(self, target: str, source: str) -> int:
        # mfusepy passes (link path, link content)
        with calling_as(caller()):
            self.source.symlink(target, source)
        return 0

    @translate
    def link(self, target: str, source: str) -> int:
        self.source.setattr("link", target)
        return 0

    @translate
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.source.setattr("mknod", path)
        return 0

    @translate
    def rename(self, old: str, new: str) -> int:
        self.source.rename(old, new)
        return 0

    @translate
    def chmod(self, path: str, mode: int) -> int:
        self.source.setattr("chmod", path)
        return 0

    @translate
    def chown(self, path: str, uid: int, gid: int) -> int:
        self.source.setattr("chown", path)
        return 0

    @translate
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self.source.setattr("truncate", path)
        return 0

    @translate
    def utimens(self, path: str, times: Any = None) -> int:
        self.source.setattr("utimens", path)
        return 0

    @translate
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.source.setxattr(path, name, value)
        return 0

    @translate
    def removexattr(self, path: str, name: str) -> int:
        self.source.removexattr(path, name)
        return 0


class CrdsFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with offset-aware "readdir plus" and fd-based reads.

    Instantiating it mounts and runs the loop until unmounted (mfusepy's design).
    """

    operations: CrdsOperations

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                       fip: Any, flags: int) -> int:
        decoded = "/" if path is None else path.decode(self.encoding, self.errors)
        listing = self.operations.listing(decoded)
        plus = bool(flags & FUSE_READDIR_PLUS)
        fill_flags = FUSE_FILL_DIR_PLUS if plus else 0
        st = mfusepy.c_stat()
        # index 0 is ".", 1 is "..", entry i of the listing is index i + 2; the offset
        # passed back for an entry is the index of the next one.
        for index in range(offset, len(listing) + 2):
            if index < 2:
                name = "." if index == 0 else ".."
                if filler(buf, name.encode(), None, index + 1, 0) != 0:
                    return 0
                continue
            name, attrs = listing[index - 2]
            if plus:
                fill_stat(st, attrs)
            else:
                st.st_mode = attrs["st_mode"]
            if filler(buf, name.encode(self.encoding, self.errors), st, index + 1,
                      fill_flags) != 0:
                break
        return 0

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        address = ctypes.cast(buf, ctypes.c_void_p).value
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        return self.operations.readinto(fip.contents.fh, view, offset)

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        """Give libfuse the cache file's descriptor and position; it copies in C.

        libfuse frees the returned bufvec with free(), so it is allocated with malloc.
        Handles without a descriptor (generated files) get a malloc'ed memory buffer.
        """
        fh = fip.contents.fh
        fd = self.operations.read_fd(fh, size)
        vec_ptr = _libc.malloc(ctypes.sizeof(_BufVec))
        if not vec_ptr:
            return -errno.ENOMEM
        vec = _BufVec.from_address(vec_ptr)
        vec.count, vec.idx, vec.off = 1, 0, 0
        entry = vec.buf[0]
        if fd is not None:
            entry.size, entry.flags = size, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK
            entry.mem, entry.fd, entry.pos = None, fd, offset
        else:
            mem = _libc.malloc(max(size, 1))
            if not mem:
                _libc.free(ctypes.c_void_p(vec_ptr))
                return -errno.ENOMEM
            view = memoryview((ctypes.c_char * size).from_address(mem)).cast("B")
            try:
                count = self.operations.readinto(fh, view, offset)
            except BaseException:
                _libc.free(ctypes.c_void_p(mem))
                _libc.free(ctypes.c_void_p(vec_ptr))
                raise
            entry.size, entry.flags, entry.mem, entry.fd, entry.pos = count, 0, mem, -1, 0
        ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = vec_ptr
        return 0


def mount_device(mountpoint: str) -> str | None:
    """'major:minor' of the FUSE mount at *mountpoint* (from /proc/self/mountinfo)."""
    entry = find_mount(mountpoint)
    return entry.device if entry is not None and entry.fstype.startswith("fuse") else None


def set_readahead(mountpoint: str, kb: int, timeout: float = 10.0) -> bool:
    """Raise the kernel readahead of the mount (its bdi in sysfs); needs root.

    The FUSE default of 128 KiB makes the kernel ask for a large file in 128 KiB pieces;
    a few MiB lets it ask for 1 MiB requests, several in flight, which roughly doubles the
    first-read throughput.  The kernel only adapts readahead to sequential access, so random
    access (FITS memmap) does not pay for it.  Failure (not root) only costs speed.
    """
    deadline = time.monotonic() + timeout
    device = None
    while device is None and time.monotonic() < deadline:
        device = mount_device(mountpoint)
        if device is None:
            time.sleep(0.05)
    if device is None:
        log.debug("mount %s not found in mountinfo; readahead left as is", mountpoint)
        return False
    knob = f"/sys/class/bdi/{device}/read_ahead_kb"
    try:
        # The kernel caps readahead when it processes libfuse's INIT reply, which happens
        # after the init callback: a stat answered by the mount proves that is done.
        os.stat(mountpoint)
        with open(knob, "w", encoding="ascii") as out:
            out.write(str(int(kb)))
    except OSError as exc:
        log.debug("cannot set %s to %d: %s (readahead left as is)", knob, kb, exc)
        return False
    log.debug("readahead of %s set to %d KiB", mountpoint, kb)
    return True


def fuse_options(*, attr_timeout: float = 86400.0, negative_timeout: float = 5.0,
                 max_threads: int = 64, auto_unmount: bool = True,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mount options: kernel caching on (files are immutable), enough worker threads.

    Negative entries are cached only briefly: an ENOENT from the catalog costs nothing to
    recompute, while a long negative cache would hide a dataset ID or a reftype link that
    appears later under bestrefs/ (e.g. after a context change).

    max_threads matters: libfuse's default of 10 would let ten slow downloads block every
    other call (stat, ls) of the mount.
    """
    options: dict[str, Any] = {
        "fsname": "crds-fs",
        "subtype": "crds-fs",
        # a read-only mount, as /proc/mounts and mount(8) show it (the kernel refuses writes)
        "ro": True,
        "attr_timeout": attr_timeout,
        "entry_timeout": attr_timeout,
        "negative_timeout": negative_timeout,
        "max_threads": max_threads,
        # 512 KiB reads: the largest whose splice pipe fits the default pipe-max-size
        # (1 MiB), so libfuse moves file pages into the reply without copying them through
        # a malloc'ed buffer (1 MiB requests silently fall back to pread + writev).
        "max_read": MAX_READ,
    }
    if auto_unmount:
        options["auto_unmount"] = True
    options.update(extra or {})
    return options


def run_fuse(operations: CrdsOperations, mountpoint: str, **options: Any) -> None:
    """Mount *operations* at *mountpoint* and serve until unmounted or signalled.

    libfuse installs SIGINT/SIGTERM/SIGHUP handlers that end the loop and unmount cleanly.
    """
    operations.max_read = int(options.get("max_read") or 0)
    try:
        CrdsFUSE(operations, os.fspath(mountpoint), raw_fi=True, foreground=True,
                 nothreads=False, **options)
    except RuntimeError as exc:
        if operations.initialized:
            # libfuse reports status 8 when a signal (SIGTERM, SIGINT) ended the loop; the
            # mount was up and has been taken down cleanly.
            log.info("FUSE loop for %s ended (libfuse status %s: a signal, or the libfuse "
                     "error logged just above)", mountpoint, exc)
            return
        raise MountError(
            f"libfuse could not mount or serve {mountpoint} (status {exc}); its own message "
            "is in the mount log"
        ) from None
