"""The built-in top-level directories: mappings/, references/, config/ and .crds-fs/.

mappings/<obs>/ and references/<obs>/ present the server catalog as a CRDS cache in "flat"
mode (crds-reference 3.2): stat and listings come from the catalog, and only open() fetches
bytes, through the cache layer.  config/<obs>/ holds what an unmodified crds reads from a
cache (3.3, 3.7) so that `CRDS_PATH=<mount> CRDS_READONLY_CACHE=1` works without a network.
"""

from __future__ import annotations

import json
import logging
import os
import pprint
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..cache.chunks import chunk_store
from ..client.payload import crds_encode
from ..client.rpc import advertised_url, url_field
from ..errors import (
    CacheFullError,
    CrdsFsError,
    DownloadError,
    NoSuchAttributeError,
    NoSuchPathError,
    OfflineError,
    OpenInterruptedError,
    ServerUnreachableError,
)
from .base import (
    XATTR_PREFIX,
    Attrs,
    BytesHandle,
    FileHandle,
    Handle,
    LazyBytes,
    Listing,
    MountEnv,
    Parts,
    Provider,
    is_write_open,
    missing_xattr,
)

log = logging.getLogger(__name__)

XATTR_SHA1 = XATTR_PREFIX + "sha1"
XATTR_CACHED = XATTR_PREFIX + "cached"
XATTR_URL = XATTR_PREFIX + "url"
#: "present/total" chunks of the file (a partly read big file: see crds_fs.cache.chunks)
XATTR_CHUNKS = XATTR_PREFIX + "chunks"
FILE_XATTRS = [XATTR_SHA1, XATTR_CACHED, XATTR_URL, XATTR_CHUNKS]
#: On demand only (not listed, so `getfattr -d` never hashes the whole cache): reading it
#: re-hashes the cached file; a bad copy is removed and fetched again.
XATTR_VERIFY = XATTR_PREFIX + "verify"
#: getxattr is asked twice per read (size, then value): one verification answers both
VERIFY_MEMO_SECONDS = 10.0


class ObservatoryDirProvider(Provider):
    """A provider whose directory holds exactly one subdirectory, the mount's observatory."""

    def subdir_count(self) -> int:
        return 1

    def getattr(self, parts: Parts) -> Attrs:
        if not parts:
            return self.env.dir_attrs(1)
        if parts[0] != self.env.observatory:
            raise NoSuchPathError(f"{self.path(parts)}: no such file or directory "
                                  f"(this mount serves {self.env.observatory})")
        if len(parts) == 1:
            return self.env.dir_attrs()
        if len(parts) == 2:
            return self.file_attrs(parts[1])
        raise NoSuchPathError(f"{self.path(parts)}: no such file or directory")

    def readdir(self, parts: Parts) -> Sequence[tuple[str, Attrs]]:
        self.dir_parts(parts)
        if not parts:
            return [(self.env.observatory, self.env.dir_attrs())]
        return Listing(self.names(), self.file_attrs)

    # subclasses
    def names(self) -> Sequence[str]:
        """Sorted file names of the observatory directory."""
        raise NotImplementedError

    def file_attrs(self, name: str) -> Attrs:
        raise NotImplementedError


class CatalogProvider(ObservatoryDirProvider):
    """`mappings/<obs>/` or `references/<obs>/`: every catalog file of one kind."""

    def __init__(self, env: MountEnv, kind: str) -> None:
        super().__init__(env)
        self.kind = kind
        self.name = kind + "s"
        self._verified: dict[str, tuple[tuple[int, ...], float, bytes]] = {}

    def names(self) -> Sequence[str]:
        catalog = self.env.cache.catalog
        return catalog.mappings() if self.kind == "mapping" else catalog.references()

    def _info(self, name: str) -> Any:
        catalog = self.env.cache.catalog
        info = catalog.get(name)
        if info is None or catalog.kind(name) != self.kind:
            raise NoSuchPathError(
                f"{self.name}/{self.env.observatory}/{name}: not in the {self.env.observatory} "
                f"catalog of {self.env.cache.settings.server_url}"
            )
        return info

    def file_attrs(self, name: str) -> Attrs:
        return self.env.file_attrs(self._info(name).size)

    def open(self, parts: Parts, flags: int) -> Handle:
        self.file_parts(parts)
        if is_write_open(flags):
            raise self.refuse("open for writing", parts)
        name = parts[1]
        cache = self.env.cache
        partial = self._open_partial(name)
        if partial is not None:
            return partial
        try:
            reader = cache.open_reader(name, cancelled=self.env.interrupted,
                                       deadline=open_deadline(cache))
        except (OfflineError, ServerUnreachableError) as exc:
            log.error("cannot open %s: not cached and the CRDS server %s is unreachable: %s",
                      self.path(parts), cache.settings.server_url, exc)
            raise
        except OpenInterruptedError as exc:
            log.info("open of %s given up: %s", self.path(parts), exc)
            raise
        except (DownloadError, CacheFullError) as exc:  # the fetcher logged it, once
            log.debug("cannot open %s: %s", self.path(parts), exc)
            raise
        except CrdsFsError as exc:
            log.error("cannot open %s: %s", self.path(parts), exc)
            raise
        except OSError as exc:
            log.error("cannot open %s: its cached copy in %s is unreadable (%s)",
                      self.path(parts), cache.local_path(name), exc)
            raise
        return FileHandle(reader)

    def _open_partial(self, name: str) -> Handle | None:
        """A chunk-by-chunk handle of an uncached big file when the server publishes chunk
        manifests (verified random access), else None: the whole-file path below."""
        cache = self.env.cache
        if not cache.settings.partial_reads or cache.is_cached(name):
            return None
        store = chunk_store(cache)
        try:
            partial = store.open(name)
        except (CrdsFsError, OSError) as exc:
            log.warning("cannot read %s in chunks (%s); downloading it whole", name, exc)
            return None
        if partial is None:
            return None
        return PartialHandle(cache, store, partial, self.env.interrupted)

    def getxattr(self, parts: Parts, name: str) -> bytes:
        if len(parts) < 2:  # directories carry no crds attributes
            return super().getxattr(parts, name)
        self.getattr(parts)
        file = parts[1]
        if name == XATTR_SHA1:
            return self._info(file).sha1.encode()
        if name == XATTR_CACHED:
            return self._cached_state(file)[0].encode()
        if name == XATTR_CHUNKS:
            _state, present, total = self._cached_state(file)
            return f"{present}/{total}".encode()
        if name == XATTR_URL:
            return file_url(self.env, file).encode()
        if name == XATTR_VERIFY:
            return self._verify(file)
        raise missing_xattr(self.path(parts), name)

    def _cached_state(self, file: str) -> tuple[str, int, int]:
        """("yes" | "partial" | "no", chunks present, chunks total) of a catalog file."""
        cache = self.env.cache
        store = chunk_store(cache)
        size = self._info(file).size
        if cache.is_cached(file):
            total = store.total_chunks(size)
            return "yes", total, total
        state = store.state(file)
        if state is not None and state[0] > 0:
            return "partial", state[0], state[1]
        return "no", 0, state[1] if state is not None else store.total_chunks(size)

    def _verify(self, file: str) -> bytes:
        """`user.crds.verify`: re-hash the cached copy now.

        The kernel asks twice (size, then value); the answer is memoised for a few seconds
        per state of the cached file (inode, size, mtime, ctime), so both calls agree and
        any change to the file (a repair, a write, even with its times restored) asks anew.
        """
        cache = self.env.cache
        try:
            st = os.stat(cache.local_path(file))
            state: tuple[int, ...] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            state = ()
        now = time.monotonic()
        memo = self._verified.get(file)
        if memo is not None and memo[0] == state and now - memo[1] < VERIFY_MEMO_SECONDS:
            return memo[2]
        answer = cache.verify(file, cancelled=self.env.interrupted,
                              deadline=open_deadline(cache)).encode()
        self._verified = {k: v for k, v in self._verified.items()
                          if now - v[1] < VERIFY_MEMO_SECONDS}
        self._verified[file] = (state, now, answer)
        return answer

    def listxattr(self, parts: Parts) -> list[str]:
        self.getattr(parts)
        return list(FILE_XATTRS) if len(parts) == 2 else []


class PartialHandle(Handle):
    """An uncached big file read chunk by chunk; every byte served was verified first.

    Pins the name like a Reader (so once the file is complete and committed it is not
    evicted while open).  Reads have no descriptor for the glue until the file is complete
    (each read goes through `PartialFile.readinto`, which fetches and verifies the chunks
    it touches); afterwards the data file's descriptor is handed out as for cached files.
    """

    def __init__(self, cache: Any, store: Any, partial: Any,
                 interrupted: Callable[[], bool] | None) -> None:
        self.cache = cache
        self.store = store
        self.partial = partial
        self.name = partial.name
        self.interrupted = interrupted
        cache._pin(self.name)
        self._released = False

    def read(self, size: int, offset: int) -> bytes:
        buffer = bytearray(max(0, min(size, self.partial.size - offset)))
        count = self.readinto(memoryview(buffer), offset)
        return bytes(buffer[:count])

    def readinto(self, buffer: memoryview, offset: int) -> int:
        try:
            return self.partial.readinto(buffer, offset, self.interrupted)
        except CrdsFsError as exc:
            log.debug("read of %s at %d failed: %s", self.name, offset, exc)
            raise

    def fileno(self) -> int | None:
        partial = self.partial
        return partial.fd if partial.complete and partial.fd >= 0 else None

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.store.release(self.partial)
        self.cache._unpin(self.name)


def open_deadline(cache: Any) -> float | None:
    """time.monotonic() by which an open must be answered (CRDS_FS_OPEN_DEADLINE), or None."""
    seconds = float(getattr(cache.settings, "open_deadline", 0) or 0)
    return time.monotonic() + seconds if seconds > 0 else None


def file_url(env: MountEnv, name: str) -> str:
    """Download URL of *name* as the server info advertises it (crds-reference 2.1).

    Computed from the stored server info, never by asking the server, so the xattr works
    offline too.
    """
    url = advertised_url(env.cache.server_info, name, env.observatory)
    if url is None:
        raise NoSuchAttributeError(
            f"{name}: the server info advertises no {url_field(name)} for {env.observatory}")
    return url


# --- config/<obs>/ --------------------------------------------------------------------------


class ConfigProvider(ObservatoryDirProvider):
    """`config/<obs>/`: server_config, bad_files.txt and ref_cache_subdir_mode for crds."""

    name = "config"

    def __init__(self, env: MountEnv) -> None:
        super().__init__(env)
        self.files: dict[str, LazyBytes] = {
            "bad_files.txt": LazyBytes(self._bad_files),
            "ref_cache_subdir_mode": LazyBytes(lambda: b"flat\n"),
            "server_config": LazyBytes(self._server_config),
        }

    def names(self) -> Sequence[str]:
        return sorted(self.files)

    def file_attrs(self, name: str) -> Attrs:
        content = self.files.get(name)
        if content is None:
            raise NoSuchPathError(f"config/{self.env.observatory}/{name}: no such file")
        return self.env.file_attrs(len(content.get()))

    def open(self, parts: Parts, flags: int) -> Handle:
        self.file_parts(parts)
        if is_write_open(flags):
            raise self.refuse("open for writing", parts)
        return BytesHandle(self.files[parts[1]].get())

    def _bad_files(self) -> bytes:
        bad = self.env.cache.server_info.get("bad_files_list") or []
        return "".join(f"{name}\n" for name in bad).encode()

    def _server_config(self) -> bytes:
        started = time.perf_counter()
        info = server_config(self.env)
        text = pprint.pformat(info, width=100) + "\n"
        log.debug("config/%s/server_config built in %.3fs (%d bytes)", self.env.observatory,
                  time.perf_counter() - started, len(text))
        return text.encode()


def server_config(env: MountEnv) -> dict[str, Any]:
    """The server info a crds cache would hold for this mount (crds-reference 1.6, 3.3).

    `operational_context` is the mount's context, so crds without an explicit context
    uses what the mount was asked to serve; `download_metadata` carries the whole catalog
    so crds never needs the server to verify anything.
    """
    cache = env.cache
    catalog = cache.catalog
    info: dict[str, Any] = dict(cache.server_info)
    info.pop("download_metadata", None)
    records = {}
    for name in catalog.mappings() + catalog.references():
        entry = catalog.get(name)
        records[name] = {"sha1sum": entry.sha1 or "none", "size": str(entry.size)}
    info.update(
        observatory=env.observatory,
        operational_context=env.context,
        bad_files_list=list(info.get("bad_files_list") or []),
        mappings=list(catalog.mappings()),
        force_remote_mode=0,
        last_synced=str(info.get("last_synced") or _stamp(env.epoch_ns)),
        download_metadata=crds_encode(records),
        server=cache.settings.server_url,
        status="cache",
        connected=False,
    )
    info.setdefault("edit_context", env.context)
    info.setdefault("versions_context", "")
    info.setdefault("context_history", [])
    return _plain(info)


def _stamp(epoch_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_ns / 1e9))


def _plain(value: Any) -> Any:
    """Only Python literals (dict/list/str/int/float/bool/None) so crds' literal_eval works."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# --- .crds-fs/ --------------------------------------------------------------------------------


class ControlProvider(Provider):
    """`.crds-fs/stats`: a JSON snapshot of the mount and the cache, made at each open."""

    name = ".crds-fs"

    def __init__(self, env: MountEnv) -> None:
        super().__init__(env)
        self.files: dict[str, Callable[[], bytes]] = {"stats": self._stats}

    def getattr(self, parts: Parts) -> Attrs:
        if not parts:
            return self.env.dir_attrs()
        if len(parts) == 1 and parts[0] in self.files:
            return self.env.file_attrs(len(self.files[parts[0]]()))
        raise NoSuchPathError(f"{self.path(parts)}: no such file")

    def readdir(self, parts: Parts) -> Sequence[tuple[str, Attrs]]:
        self.dir_parts(parts)
        return [(name, self.getattr((name,))) for name in sorted(self.files)]

    def open(self, parts: Parts, flags: int) -> Handle:
        self.file_parts(parts)
        if is_write_open(flags):
            raise self.refuse("open for writing", parts)
        return BytesHandle(self.files[parts[0]](), volatile=True)

    def _stats(self) -> bytes:
        return (json.dumps(self.env.status(), indent=1, sort_keys=True, default=str)
                + "\n").encode()


def register_builtin_providers() -> None:
    """Register the four built-in directories (idempotent)."""
    from .registry import is_registered, register_provider

    builtins: dict[str, Callable[[MountEnv], Provider]] = {
        "mappings": lambda env: CatalogProvider(env, "mapping"),
        "references": lambda env: CatalogProvider(env, "reference"),
        "config": ConfigProvider,
        ".crds-fs": ControlProvider,
    }
    for name, factory in builtins.items():
        if not is_registered(name):
            register_provider(name, factory)
