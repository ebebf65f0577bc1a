"""The compiled-context cache: parsed mappings kept on disk between processes.

Loading a context is mostly parsing (``ast.parse`` and the tree walk); the engine can take
the parse of a mapping from a :class:`~crds_fs.engine.context.CompiledStore` instead
(:mod:`crds_fs.engine.compiled` defines the bytes).  This module is that store on disk:

``<dir>/<format tag>-<engine fingerprint>/<sha1>``, one file per mapping text,
keyed by the SHA-1 of the text.  ``<dir>`` is ``$CRDS_FS_COMPILED_CACHE`` if set (``off``
disables the cache), else ``<crds-fs cache dir>/compiled`` (the mount's and API's
``--cache-dir``; for a plain folder of mappings the default cache home,
``$CRDS_FS_CACHE`` or ``~/.cache/crds-fs``).

* Safe: entries are plain data (marshal of dicts/tuples/strings built by the engine), with a
  digest checked before decoding; never pickle, nothing executed.
* Versioned: the folder name carries the format version, the Python version and a
  fingerprint of the engine's sources, so another engine never reads these entries
  (old folders are simply left behind; delete ``<dir>`` to reclaim them).
* Self-healing: a missing, truncated or altered entry is a miss; the engine parses the text
  again and the entry is rewritten (atomically: temporary file + rename, so readers never
  see half an entry).  Entries are packed and written after the load (by a background
  thread once loading has been quiet for a second, or at process exit), so building the
  cache does not slow the first load down.
* Never in the way: any I/O error (read-only or full disk) only costs the speed-up; it is
  logged once per cache folder.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..engine import compiled as engine_compiled

log = logging.getLogger(__name__)

ENV_VAR = "CRDS_FS_COMPILED_CACHE"
_OFF = ("off", "0", "no", "none", "false", "")

#: Largest entry read back (bytes): entries are ~0.8x the mapping text, itself bounded by
#: the engine's MAX_MAPPING_CHARS (16 Mi characters).
MAX_ENTRY_BYTES = 64 * 1024 * 1024

_KEY_CHARS = frozenset("0123456789abcdef")

#: Seconds without a newly queued entry before the background thread writes the queue.
WRITE_DELAY = 1.0


def _fingerprint() -> str:
    """A digest of the engine's sources (which define both the parsed and the built form):
    any edit to them, even without a FORMAT_VERSION bump, moves the cache to a new folder."""
    digest = hashlib.sha1(engine_compiled.FORMAT_TAG.encode("ascii"))
    base = Path(engine_compiled.__file__).parent
    try:
        modules = sorted(base.glob("*.py"))
        for module in modules:
            digest.update(module.name.encode("utf-8") + b"\0" + module.read_bytes())
    except OSError:  # e.g. a zipped install: fall back to the format tag alone
        pass
    return digest.hexdigest()[:12]


class CompiledCache:
    """On-disk :class:`~crds_fs.engine.context.CompiledStore` (thread- and process-safe)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory)
        self.folder = self.root / f"{engine_compiled.FORMAT_TAG}-{_fingerprint()}"
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.damaged = 0
        self._warned = False
        self._made = False
        self._pending: deque[tuple[Path, Callable[[], bytes]]] = deque()
        self._timer: threading.Timer | None = None
        self._timer_pid = 0
        self._last_put = 0.0
        self._atexit = False
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"CompiledCache({str(self.folder)!r})"

    def path(self, key: str) -> Path:
        """Where the entry of *key* (a SHA-1 hex) lives."""
        if len(key) != 40 or not set(key) <= _KEY_CHARS:
            raise ValueError(f"invalid compiled-cache key {key!r}")
        return self.folder / key

    def get(self, key: str) -> bytes | None:
        try:
            with open(self.path(key), "rb") as entry:
                data = entry.read(MAX_ENTRY_BYTES + 1)
        except (OSError, ValueError):
            self.misses += 1
            return None
        if len(data) > MAX_ENTRY_BYTES:
            self.misses += 1
            return None
        self.hits += 1
        return data

    def discard(self, key: str) -> None:
        """Forget a damaged entry (it is rewritten after the next parse)."""
        self.damaged += 1
        log.info("compiled-cache entry %s is damaged; rebuilding it", self.path(key))
        try:
            self.path(key).unlink()
        except OSError:
            pass

    def put(self, key: str, make: Callable[[], bytes]) -> None:
        """Queue the entry (``make()`` gives its bytes).  Queued entries are packed and
        written after the load, not during it: by a background thread once nothing has
        been queued for :data:`WRITE_DELAY` seconds (long-running mounts and servers), or
        when the process exits (the CLI, after it has printed its answers), whichever is
        first.
        """
        target = self.path(key)
        with self._lock:
            self._pending.append((target, make))
            self._last_put = time.monotonic()
            if self._timer is None or self._timer_pid != os.getpid():
                self._start_timer(WRITE_DELAY)
                if not self._atexit:
                    atexit.register(self.flush)
                    self._atexit = True

    def _start_timer(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._when_quiet)
        self._timer.daemon = True
        self._timer_pid = os.getpid()
        self._timer.start()

    def _when_quiet(self) -> None:
        """Write once no entry has been queued for WRITE_DELAY (the load is over)."""
        with self._lock:
            waited = time.monotonic() - self._last_put
            if self._pending and waited < WRITE_DELAY:
                self._start_timer(WRITE_DELAY - waited)
                return
        self.flush()

    def flush(self) -> None:
        """Pack and write every queued entry now, and wait for writes in progress in other
        threads (atomic writes; failures are logged once)."""
        while True:
            with self._lock:
                if not self._pending:
                    self._timer = None
                    while self._inflight:
                        self._idle.wait()
                    return
                target, make = self._pending.popleft()
                self._inflight += 1
            try:
                data = make()
                if len(data) <= MAX_ENTRY_BYTES:
                    self._write(target, data)
            except Exception:  # noqa: BLE001 - an entry that cannot be packed is not kept
                log.debug("compiled-cache entry %s not packable", target, exc_info=True)
            finally:
                with self._lock:
                    self._inflight -= 1
                    self._idle.notify_all()

    def _write(self, target: Path, data: bytes) -> None:
        """Write one entry atomically (temporary file in the same folder, then rename)."""
        temporary = f"{target.parent}/.{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            if not self._made:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._made = True
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except OSError as exc:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            with self._lock:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot write the compiled-context cache %s (%s); contexts "
                                "load without it (set %s=off to silence this or point it "
                                "to a writable folder)", self.folder, exc, ENV_VAR)
            return
        self.writes += 1


_CACHES: dict[str, CompiledCache] = {}
_CACHES_LOCK = threading.Lock()


def default_directory(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The compiled-cache folder: $CRDS_FS_COMPILED_CACHE, else ``<cache_dir>/compiled``
    (*cache_dir* defaulting to $CRDS_FS_CACHE or the per-user cache home); None = off."""
    configured = os.environ.get(ENV_VAR)
    if configured is not None:
        if configured.strip().lower() in _OFF:
            return None
        return Path(configured).expanduser()
    if cache_dir is None:
        from ..config import default_cache_dir

        cache_dir = os.environ.get("CRDS_FS_CACHE") or default_cache_dir()
    return Path(cache_dir) / "compiled"


def compiled_cache(cache_dir: str | os.PathLike[str] | None = None) -> CompiledCache | None:
    """The process-wide CompiledCache for :func:`default_directory` (None when off)."""
    directory = default_directory(cache_dir)
    if directory is None:
        return None
    key = str(directory)
    with _CACHES_LOCK:
        found = _CACHES.get(key)
        if found is None:
            found = _CACHES[key] = CompiledCache(directory)
        return found
