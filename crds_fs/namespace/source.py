"""`MountSource`: every filesystem call of a mount, as plain Python, without FUSE.

It splits a path, hands the call to the provider of the first component and keeps the
table of open handles.  The FUSE glue is a thin translation of this class, and tests call it
directly.  Every failure is a `CrdsFsError` subclass whose `.errno` is what the caller of
the filesystem sees.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..bestrefs.resolver import is_context_alias
from ..errors import (
    AccessDeniedError,
    ConfigError,
    IsADirError,
    NoSuchPathError,
    NotASymlinkError,
    ReadOnlyError,
)
from .base import Attrs, Handle, MountEnv, Parts, Provider, missing_xattr
from .registry import build_providers, provider_factories

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..cache import FileCache
    from .refresh import Refresher

log = logging.getLogger(__name__)

#: mtime shown when the server publishes no context history (2000-01-01T00:00:00Z).
FALLBACK_EPOCH_NS = 946_684_800 * 10**9


class OpenFile:
    """What open() returns: the handle number and the kernel caching flags for it."""

    __slots__ = ("fh", "keep_cache", "direct_io")

    def __init__(self, fh: int, keep_cache: bool, direct_io: bool) -> None:
        self.fh = fh
        self.keep_cache = keep_cache
        self.direct_io = direct_io


def split_path(path: str) -> Parts:
    """'/a/b' -> ('a', 'b'); '/' -> ()."""
    stripped = path.strip("/")
    return tuple(stripped.split("/")) if stripped else ()


def catalog_epoch_ns(server_info: dict[str, Any]) -> int:
    """A fixed time for every path of the mount, stable across remounts.

    CRDS files are immutable and carry no dates of their own; the newest entry of the
    server's context history changes only when a new context is delivered, so times stay
    put for tools that compare them (rsync, make) and move when the catalog does.
    """
    history = server_info.get("context_history")
    stamps: list[int] = []
    if isinstance(history, list):
        for entry in history:
            if isinstance(entry, (list, tuple)) and entry:
                stamp = _parse_time(entry[0])
                if stamp is not None:
                    stamps.append(stamp)
    return max(stamps) if stamps else FALLBACK_EPOCH_NS


def _parse_time(value: Any) -> int | None:
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 10**9


class MountSource:
    """The mounted tree of one FileCache (one observatory, one context)."""

    def __init__(
        self,
        cache: FileCache,
        *,
        context: str | None = None,
        mountpoint: str | None = None,
        providers: dict[str, Provider] | None = None,
    ) -> None:
        self.cache = cache
        self.started = time.time()
        self.context = resolve_context(cache, context)
        #: the mount follows the server's operational context (moved on refresh)
        self.follow = context in (None, "", "operational", "latest")
        #: the mount's Refresher (crds_fs.namespace.refresh.attach), if any
        self.refresher: Refresher | None = None
        #: drops the kernel's cached attributes/pages of paths; returns how many it knew
        #: (the FUSE glue installs it once mounted)
        self.invalidate: Callable[[Iterable[str]], int] = lambda paths: 0
        self.env = MountEnv(
            cache=cache,
            observatory=cache.observatory,
            context=self.context,
            epoch_ns=catalog_epoch_ns(cache.server_info),
            mountpoint=mountpoint,
            status=self.status,
        )
        self.providers = providers if providers is not None else build_providers(self.env)
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self._total_size: int | None = None
        self.counters = {"opens": 0, "open_errors": 0, "reads": 0, "bytes_read": 0}

    # --- routing ------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[Provider, Parts]:
        parts = split_path(path)
        provider = self.providers.get(parts[0]) if parts else None
        if provider is None:
            raise NoSuchPathError(f"{path}: no such file or directory")
        return provider, parts[1:]

    def catalog_replaced(self, context: str) -> None:
        """After the cache's catalog was swapped (the refresher): move to *context*, new
        times, config/<obs>/ regenerated, bestrefs/ on the same context."""
        env = self.env
        env.epoch_ns = catalog_epoch_ns(self.cache.server_info)
        env.context = self.context = context
        self._total_size = None
        factory = provider_factories().get("config")
        if "config" in self.providers and factory is not None:
            fresh = factory(env)
            if fresh is not None:
                fresh.name = "config"
                self.providers["config"] = fresh
        for provider in list(self.providers.values()):
            view = getattr(provider, "view", None)
            if self.follow and view is not None and hasattr(view, "set_context"):
                view.set_context(context)

    def root_attrs(self) -> Attrs:
        return self.env.dir_attrs(len(self.providers))

    # --- reading ------------------------------------------------------------------------

    def getattr(self, path: str) -> Attrs:
        """stat() of *path*, from the catalog only (no download, no network)."""
        if path == "/":
            return self.root_attrs()
        provider, parts = self._route(path)
        return provider.getattr(parts)

    def readdir(self, path: str) -> Sequence[tuple[str, Attrs]]:
        """Entries of the directory *path* (without '.' and '..'), with their attributes."""
        if path == "/":
            return [(name, self.providers[name].getattr(())) for name in sorted(self.providers)]
        provider, parts = self._route(path)
        return provider.readdir(parts)

    def open(self, path: str, flags: int) -> OpenFile:
        """Open *path* for reading; a cached-file open may download it first (bounded)."""
        if path == "/":
            raise IsADirError("/: is a directory")
        provider, parts = self._route(path)
        try:
            handle = provider.open(parts, flags)
        except ReadOnlyError:
            raise
        except Exception:
            self._count("open_errors")
            raise
        fh = next(self._fh)
        self._handles[fh] = handle
        self._count("opens")
        return OpenFile(fh, handle.keep_cache, handle.direct_io)

    def handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise NoSuchPathError(f"file handle {fh} is not open") from None

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = self.handle(fh).read(size, offset)
        self._count("reads", len(data))
        return data

    def readinto(self, fh: int, buffer: memoryview, offset: int) -> int:
        """Read into *buffer* (the glue's zero-copy path); returns the byte count."""
        count = self.handle(fh).readinto(buffer, offset)
        self._count("reads", count)
        return count

    def read_fd(self, fh: int, size: int) -> int | None:
        """The descriptor the glue may read *size* bytes of *fh* from itself (counted as a
        read), or None when the handle has none (then use readinto)."""
        fd = self.handle(fh).fileno()
        if fd is not None:
            self._count("reads", size)
        return fd

    def release(self, path: str, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.release()

    def readlink(self, path: str) -> str:
        if path == "/":
            raise NotASymlinkError("/: not a symbolic link")
        provider, parts = self._route(path)
        return provider.readlink(parts)

    def getxattr(self, path: str, name: str) -> bytes:
        if path == "/":
            raise missing_xattr("/", name)
        provider, parts = self._route(path)
        return provider.getxattr(parts, name)

    def listxattr(self, path: str) -> list[str]:
        if path == "/":
            return []
        provider, parts = self._route(path)
        return provider.listxattr(parts)

    def access(self, path: str, mode: int) -> None:
        """access(2) by the modes shown: the path must exist, writing is EROFS, and only
        directories can be searched (no CRDS file is executable)."""
        attrs = self.getattr(path)
        if mode & os.W_OK:
            raise ReadOnlyError(f"{path}: the crds-fs mount is read-only")
        if mode & os.X_OK and not attrs["st_mode"] & 0o111:
            raise AccessDeniedError(f"{path}: not executable")

    def statfs(self) -> dict[str, int]:
        """Sizes df shows: the catalog's total size, nothing free (read-only)."""
        catalog = self.cache.catalog
        if self._total_size is None:
            self._total_size = sum(
                entry.size for name in catalog.mappings() + catalog.references()
                if (entry := catalog.get(name)) is not None
            )
        total = self._total_size
        block = 4096
        return {
            "f_bsize": block, "f_frsize": block, "f_blocks": (total + block - 1) // block,
            "f_bfree": 0, "f_bavail": 0, "f_files": len(catalog), "f_ffree": 0,
            "f_favail": 0, "f_namemax": 255,
        }

    # --- writing: providers decide, the built-in ones refuse with EROFS ------------------

    def _provider_for_write(self, operation: str, path: str) -> tuple[Provider, Parts]:
        parts = split_path(path)
        provider = self.providers.get(parts[0]) if parts else None
        if provider is None or len(parts) < 2:
            raise ReadOnlyError(f"{operation} {path}: the crds-fs mount is read-only")
        return provider, parts[1:]

    def create(self, path: str, mode: int) -> OpenFile:
        provider, parts = self._provider_for_write("create", path)
        handle = provider.create(parts, mode)
        fh = next(self._fh)
        self._handles[fh] = handle
        return OpenFile(fh, handle.keep_cache, handle.direct_io)

    def mkdir(self, path: str, mode: int) -> None:
        provider, parts = self._provider_for_write("mkdir", path)
        provider.mkdir(parts, mode)

    def rmdir(self, path: str) -> None:
        provider, parts = self._provider_for_write("rmdir", path)
        provider.rmdir(parts)

    def unlink(self, path: str) -> None:
        provider, parts = self._provider_for_write("unlink", path)
        provider.unlink(parts)

    def symlink(self, path: str, target: str) -> None:
        provider, parts = self._provider_for_write("symlink", path)
        provider.symlink(parts, target)

    def rename(self, old: str, new: str) -> None:
        provider, parts = self._provider_for_write("rename", old)
        new_provider, new_parts = self._provider_for_write("rename", new)
        if new_provider is not provider:
            raise ReadOnlyError(f"rename {old} -> {new}: crosses top-level directories")
        provider.rename(parts, new_parts)

    def setattr(self, operation: str, path: str) -> None:
        """chmod, chown, truncate, utimens."""
        provider, parts = self._provider_for_write(operation, path)
        provider.setattr(operation, parts)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        provider, parts = self._provider_for_write("setxattr", path)
        provider.setxattr(parts, name, value)

    def removexattr(self, path: str, name: str) -> None:
        provider, parts = self._provider_for_write("removexattr", path)
        provider.removexattr(parts, name)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        raise ReadOnlyError(f"write {path}: the crds-fs mount is read-only")

    # --- status -------------------------------------------------------------------------

    def _count(self, what: str, nbytes: int = 0) -> None:
        with self._lock:
            self.counters[what] += 1
            if nbytes:
                self.counters["bytes_read"] += nbytes

    def status(self) -> dict[str, Any]:
        """Mount facts, I/O counters and the cache's own stats (for .crds-fs/stats)."""
        cache = self.cache
        catalog = cache.catalog
        with self._lock:
            io = dict(self.counters)
        io["open_handles"] = len(self._handles)
        try:
            cache_stats: Any = cache.stats()
        except Exception as exc:  # stats must never break the stats file itself
            cache_stats = {"error": str(exc)}
        return {
            "mount": {
                "mountpoint": self.env.mountpoint,
                "pid": os.getpid(),
                "observatory": self.env.observatory,
                "context": self.context,
                "server": cache.client.server_url,  # incl. a discovered /<obs>
                "servers": _servers_status(cache),  # failover state: which one is in use
                "online": bool(cache.online),
                "cache_dir": str(cache.settings.cache_dir),
                "started": datetime.fromtimestamp(self.started, UTC).isoformat(),
                "uptime_s": round(time.time() - self.started, 3),
                "catalog_files": len(catalog),
                "mappings": len(catalog.mappings()),
                "references": len(catalog.references()),
                "follows_operational": self.follow,
            },
            "io": io,
            "cache": cache_stats,
            "refresh": (self.refresher.status() if self.refresher is not None
                        else {"interval_s": 0, "checks": 0, "last": None}),
        }

    def close(self) -> None:
        """Release every open handle and stop refreshing (at unmount)."""
        if self.refresher is not None:
            self.refresher.stop()
        for fh in list(self._handles):
            self.release("", fh)


def _servers_status(cache: FileCache) -> Any:
    """The client's failover state (servers, the one in use, proxy), or None."""
    status = getattr(cache.client, "servers_status", None)
    try:
        return status() if status is not None else None
    except Exception as exc:  # stats must never break the stats file itself
        return {"error": str(exc)}


def resolve_context(cache: FileCache, context: str | None) -> str:
    """The mount's context: the one named (checked against the catalog) or the operational."""
    if is_context_alias(context, cache.observatory):  # also hst-operational, as crds
        name = cache.operational_context()
        if cache.catalog.get(name) is None:
            raise ConfigError(
                f"the operational context {name} of {cache.settings.server_url} is not in its "
                f"{cache.observatory} catalog, so its mappings cannot be read: fix the "
                "server (its server_config names rules it does not serve) or mount with "
                "--context NAME")
        return name
    name = str(context)
    if not name.endswith(".pmap") and name + ".pmap" in cache.catalog:
        name += ".pmap"
    if name not in cache.catalog or cache.catalog.kind(name) != "mapping":
        raise ConfigError(
            f"context {context!r} is not a mapping in the {cache.observatory} catalog of "
            f"{cache.settings.server_url}; use a .pmap name the server lists, or 'operational'"
        )
    return name
