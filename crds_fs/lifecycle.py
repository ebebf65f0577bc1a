"""The cache's lifecycle: pins, status, verify (the scrub), prune.

Operators keep one cache for weeks and share it between a mount, `crds-fs sync` and the
Python API, so everything here works on an open `FileCache` and changes the cache only the
way those users expect:

* **pins** (`pin_context`) record a context's closure (its mappings, and with
  ``references=True`` its references) in the cache index (key ``pins:<obs>``); the
  eviction of every process sharing the cache skips those names (it reads the pins'
  generation counter on each trim).  Pinning downloads nothing: `crds-fs sync --pin` fills
  the cache, the pin keeps it filled.
* **status** (`cache_status`) counts from the index (no walk, no hashing, no network).
* **verify** (`verify_cache`) re-hashes every cached file against the catalog.  A bad copy
  is moved to ``<cache>/quarantine/<obs>/`` (or deleted) and dropped from the index under
  the name's download lock, so a mount using the same cache sees it as not cached at its
  next open and fetches it again (a reader that already has it open keeps its descriptor).
* **prune** (`prune_cache`) removes every mapping and reference that none of the contexts
  kept (nor any pin) needs.  A file open through a mount or a Reader in any process is
  never removed (the Readers' shared flock, `FileStore.remove_unused`).

Closures come from the server (`get_mapping_names` / `get_reference_names`, stored in the
index: contexts are immutable), else from the local engine over cached mappings.  When a
closure cannot be computed (offline and a mapping is not cached) pin and prune fail before
changing anything: pruning with half a closure would delete what a context needs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client.names import file_kind, is_safe_basename
from .errors import CrdsFsError, ServerUnreachableError, ServiceError, UnknownFileError
from .progress import Progress, report

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .cache import FileCache

log = logging.getLogger("crds_fs.cache")

#: Bad copies found by `verify_cache(repair=True)` go here (per observatory), unless deleted.
QUARANTINE_DIR = "quarantine"
#: Bytes read per block while re-hashing (progress is reported every block).
HASH_BLOCK = 4 << 20
#: Rmaps larger than this are not scanned when `cache_status` looks for the instrument of
#: a reference whose name does not say it (old-style HST names); the file counts as "?".
MAX_RMAP_SCAN = 4 << 20
#: Where a context's reference closure is stored in the index (contexts never change).
_REFS_KEY = "lifecycle:references:"
#: Aliases of "the server's operational context".
_OPERATIONAL = ("", "operational", "latest")
_QUOTED = re.compile(r"""['"]([A-Za-z0-9][A-Za-z0-9_.\-]*)['"]""")


# --- which cache -----------------------------------------------------------------------------


def cache_defaults(cache_dir: Path) -> tuple[str | None, str | None]:
    """(observatory last used, server its catalog came from) of the cache at *cache_dir*,
    read from its index; (None, None) when it has none yet.  Lets maintenance commands
    work on a cache without being told again which server filled it."""
    from .cache.index import open_db
    from .client.catalog import index_key

    index = Path(cache_dir) / "index"
    if not index.is_dir():
        return None, None
    db = open_db(index)
    try:
        observatory = db.get("meta:observatory")
        state = db.get(index_key(observatory)) if observatory else None
        server = state.get("server_url") if isinstance(state, dict) else None
        return (str(observatory) if observatory else None, str(server) if server else None)
    finally:
        db.close()


# --- contexts and closures -------------------------------------------------------------------


def resolve_context(cache: FileCache, context: str | None) -> str:
    """*context*, or the operational one for None/'operational'/'latest'; it must be a
    mapping the catalog knows (UnknownFileError otherwise, naming the server)."""
    name = str(context or "").strip()
    if name in _OPERATIONAL or name == f"{cache.observatory}-operational":
        name = cache.operational_context()
    if cache.catalog.get(name) is None or file_kind(name) != "mapping":
        raise UnknownFileError(
            f"{name!r} is not a mapping in the {cache.observatory} catalog of "
            f"{cache.catalog.server_url or cache.settings.server_url}: give a context "
            "such as hst_1234.pmap, or 'operational'")
    return name


def context_closure(cache: FileCache, context: str, *,
                    references: bool = True) -> tuple[list[str], list[str]]:
    """(mapping names, reference names) of *context* (references only when asked).

    From the server while online, else the local engine over the cached mappings (which
    reads them through the cache: offline, every one must be cached, else OfflineError).
    """
    from .bestrefs.resolver import BestrefsResolver

    resolver = BestrefsResolver(cache)
    try:
        mappings = sorted(set(resolver.mapping_names(context)))
    except CrdsFsError as exc:
        raise type(exc)(f"cannot list the mappings of {context}: {exc}") from None
    refs: list[str] = []
    if references:
        refs = _reference_names(cache, resolver, context)
    return mappings, refs


def _reference_names(cache: FileCache, resolver: Any, context: str) -> list[str]:
    key = _REFS_KEY + context
    stored = cache.index.db.get(key)
    if isinstance(stored, list):
        return stored
    names: list[str] | None = None
    if cache.online:
        try:
            names = sorted({str(n) for n in cache.client.get_reference_names(context)})
        except (ServerUnreachableError, ServiceError) as exc:
            log.info("get_reference_names(%s) failed (%s); using the local engine", context,
                     exc)
    if names is None:
        try:
            names = sorted(resolver.local_context(context).reference_names())
        except CrdsFsError as exc:
            raise type(exc)(f"cannot list the references of {context}: {exc}") from None
    with contextlib.suppress(OSError, sqlite3.Error):
        cache.index.db.set(key, names)
    return names


# --- pins ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One pinned context: the names it keeps from eviction."""

    context: str
    references: bool
    names: tuple[str, ...]
    pinned_at: float

    def to_record(self) -> dict[str, Any]:
        return {"context": self.context, "references": self.references,
                "names": list(self.names), "pinned_at": self.pinned_at}

    @classmethod
    def from_record(cls, context: str, record: dict[str, Any]) -> Pin:
        return cls(str(record.get("context", context)), bool(record.get("references")),
                   tuple(str(n) for n in record.get("names", ())),
                   float(record.get("pinned_at", 0.0)))


def pin_context(cache: FileCache, context: str | None, *, references: bool = False) -> Pin:
    """Keep *context*'s mappings (and with *references* its references) from eviction.

    Recorded in the cache index, so it survives restarts and holds for every process
    sharing the cache; pinning again replaces the pin (e.g. to add references).  Nothing
    is downloaded.  Returns the pin.
    """
    name = resolve_context(cache, context)
    mappings, refs = context_closure(cache, name, references=references)
    pin = Pin(name, references, tuple(sorted({*mappings, *refs})), time.time())
    cache.index.set_pin(name, pin.to_record())
    log.info("pinned %s in the cache %s: %d mappings%s", name, cache.store.root,
             len(mappings), f", {len(refs)} references" if references else "")
    return pin


def unpin_context(cache: FileCache, context: str) -> bool:
    """Drop the pin of *context* ('operational' = the current one); False if not pinned."""
    name = str(context).strip()
    if cache.index.remove_pin(name):
        return True
    if name in _OPERATIONAL:
        return cache.index.remove_pin(resolve_context(cache, name))
    return False


def list_pins(cache: FileCache) -> list[Pin]:
    """Every pin of the cache's observatory, by context name."""
    return [Pin.from_record(ctx, rec) for ctx, rec in sorted(cache.index.pins().items())]


# --- status ----------------------------------------------------------------------------------


def instrument_of(name: str, observatory: str) -> str | None:
    """The instrument a CRDS name states (``hst_acs_...``, ``jwst_nircam_...``), else None
    (contexts, old-style HST reference names such as ``n3o1022cj_drk.fits``)."""
    parts = name.split("_")
    if len(parts) >= 3 and parts[0] == observatory and not parts[1].isdigit():
        return parts[1]
    return None


def cache_status(cache: FileCache, *, mounts: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Size, counts by kind and instrument, quota, pins and hit rate (JSON-able).

    Counted from the index (no directory walk, no hashing, no network); *mounts* are the
    `.crds-fs/stats` of mounts using this cache, reported with it.
    """
    entries = cache.index.entries()
    kinds: dict[str, dict[str, int]] = {}
    instruments: dict[str, dict[str, int]] = {}
    unnamed: dict[str, int] = {}
    for name, entry in entries.items():
        kind = file_kind(name)
        _add(kinds, kind, entry.size)
        instrument = instrument_of(name, cache.observatory)
        if instrument is None and kind == "reference":
            unnamed[name] = entry.size
        else:
            _add(instruments, instrument or "-", entry.size)
    for name, instrument in _instruments_from_rmaps(cache, entries, set(unnamed)).items():
        _add(instruments, instrument, unnamed.pop(name))
    for size in unnamed.values():
        _add(instruments, "?", size)
    count, size = cache.index.totals()
    try:
        free, disk = cache.store.disk_space()
    except OSError:
        free = disk = 0
    mounts = list(mounts)
    limit = cache.max_bytes or next(
        (int(m.get("cache", {}).get("max_bytes") or 0) for m in mounts
         if m.get("cache", {}).get("max_bytes")), 0)
    hits, misses = cache.lookups()
    pins = []
    for pin in list_pins(cache):
        cached = [n for n in pin.names if n in entries]
        pins.append({"context": pin.context, "references": pin.references,
                     "files": len(pin.names), "cached_files": len(cached),
                     "cached_bytes": sum(entries[n].size for n in cached),
                     "pinned_at": pin.pinned_at})
    return {
        "cache_dir": str(cache.store.root),
        "observatory": cache.observatory,
        "server": cache.catalog.server_url or cache.settings.server_url,
        "files": count,
        "bytes": size,
        "by_kind": dict(sorted(kinds.items())),
        "by_instrument": dict(sorted(instruments.items())),
        "quota": {
            "max_bytes": limit,
            "used_fraction": round(size / limit, 4) if limit else None,
            "min_free_bytes": cache.min_free_bytes(disk) if disk else 0,
            "min_free_setting": cache.settings.cache_min_free,
            "disk_free_bytes": free,
            "disk_bytes": disk,
        },
        "pins": pins,
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "quarantined_files": _count_files(quarantine_dir(cache)),
        "mounts": [m.get("mount", {}) | {"cache": m.get("cache", {})} for m in mounts],
    }


def _add(table: dict[str, dict[str, int]], key: str, size: int) -> None:
    row = table.setdefault(key, {"files": 0, "bytes": 0})
    row["files"] += 1
    row["bytes"] += size


def _instruments_from_rmaps(cache: FileCache, entries: dict[str, Any],
                            wanted: set[str]) -> dict[str, str]:
    """{reference: instrument} for references whose names say nothing, found by scanning
    the cached rmaps (named ``<obs>_<instrument>_<type>_NNNN.rmap``) for quoted names.
    Only an estimate for counting: rmaps over MAX_RMAP_SCAN bytes are skipped."""
    found: dict[str, str] = {}
    if not wanted:
        return found
    for name, entry in entries.items():
        if not name.endswith(".rmap") or entry.size > MAX_RMAP_SCAN:
            continue
        instrument = instrument_of(name, cache.observatory)
        if instrument is None:
            continue
        try:
            text = cache.local_path(name).read_text(errors="replace")
        except OSError:
            continue
        for token in _QUOTED.findall(text):
            if token in wanted and token not in found:
                found[token] = instrument
        if len(found) == len(wanted):
            break
    return found


def _count_files(directory: Path) -> int:
    try:
        return sum(len(files) for _root, _dirs, files in os.walk(directory))
    except OSError:
        return 0


# --- files on disk ---------------------------------------------------------------------------


def quarantine_dir(cache: FileCache) -> Path:
    return cache.store.root / QUARANTINE_DIR / cache.observatory


def cached_files(cache: FileCache) -> dict[str, Path]:
    """{name: final path} of every mapping and reference of the observatory on disk or in
    the index (a maintenance walk: the mount itself never lists these directories)."""
    names: set[str] = set(cache.index.names())
    for kind in ("mapping", "reference"):
        directory = cache.store.root / f"{kind}s" / cache.observatory
        try:
            with os.scandir(directory) as listing:
                for item in listing:
                    if (is_safe_basename(item.name) and file_kind(item.name) == kind
                            and item.is_file(follow_symlinks=False)):
                        names.add(item.name)
        except FileNotFoundError:
            continue
    return {n: cache.local_path(n) for n in sorted(names)
            if is_safe_basename(n) and file_kind(n) in ("mapping", "reference")}


# --- verify ----------------------------------------------------------------------------------


@dataclass
class BadFile:
    """One cached file whose content is not what the catalog says."""

    name: str
    path: str
    size: int
    sha1: str
    expected_size: int
    expected_sha1: str
    #: "" (reported only), "quarantined to PATH", "deleted"; then "; fetched again" or
    #: "; fetch failed: WHY" when a fetch was tried
    action: str = ""
    repaired: bool = False


@dataclass
class VerifyReport:
    """What `verify_cache` found and did."""

    checked: int = 0
    ok: int = 0
    bytes: int = 0
    bad: list[BadFile] = field(default_factory=list)
    #: recorded in the index but gone from disk: forgotten (fetched again on next use)
    missing: list[str] = field(default_factory=list)
    #: on disk but not in the catalog: cannot be checked, left alone
    unknown: list[str] = field(default_factory=list)
    #: being downloaded (or checked) by another process right now: skipped
    busy: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return sum(1 for b in self.bad if b.repaired)

    @property
    def remaining_bad(self) -> int:
        """Bad copies still in the cache (a quarantined or deleted one is not)."""
        return sum(1 for b in self.bad if not b.action)

    @property
    def unrepaired(self) -> int:
        """Bad files not replaced by a good copy (still bad, or removed and not fetched)."""
        return sum(1 for b in self.bad if not b.repaired)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(repaired=self.repaired, remaining_bad=self.remaining_bad)
        return data


def verify_cache(cache: FileCache, *, repair: bool = False, delete: bool = False,
                 fetch: bool = True, progress: Progress | None = None) -> VerifyReport:
    """Re-hash every cached mapping and reference against the catalog (size and sha1).

    Good files get their index record refreshed (size, sha1, stamp).  Bad ones are only
    reported unless *repair*: then each is moved to `quarantine_dir` (*delete*: removed),
    dropped from the index, and with *fetch* downloaded again (verified, as any download).
    *progress* hears ``(bytes done, bytes total, name)``.  Safe while a mount uses the
    cache: see the module doc.
    """
    result = VerifyReport()
    files = cache_files_with_sizes(cache)
    total = sum(size for _path, size in files.values())
    done = 0
    report(progress, 0, total)
    for name, (path, size) in files.items():
        info = cache.catalog.get(name)
        if size < 0:
            if cache.index.get(name) is not None:
                cache.forget(name)
                result.missing.append(name)
            continue
        if info is None:
            result.unknown.append(name)
            done += size
            report(progress, done, total, name)
            continue
        try:
            got_size, sha1 = _hash(path, lambda n, base=done, item=name: report(
                progress, base + n, total, item))
        except FileNotFoundError:  # removed meanwhile (evicted, pruned): nothing to check
            cache.forget(name)
            result.missing.append(name)
            continue
        done += size
        report(progress, done, total, name)
        result.checked += 1
        result.bytes += got_size
        if got_size == info.size and (not info.sha1 or sha1 == info.sha1):
            result.ok += 1
            _record_good(cache, name, path, got_size, sha1)
            continue
        bad = BadFile(name, str(path), got_size, sha1, info.size, info.sha1)
        result.bad.append(bad)
        log.warning("cached %s at %s is bad: %d bytes, sha1 %s; the catalog says %d bytes, "
                    "sha1 %s", name, path, got_size, sha1, info.size, info.sha1)
        if repair and not _remove_bad(cache, bad, delete=delete):
            result.busy.append(name)
            continue
        if repair and fetch:
            try:
                cache.ensure(name)
            except CrdsFsError as exc:
                bad.action += f"; fetch failed: {exc}"
            else:
                bad.action += "; fetched again"
                bad.repaired = True
    return result


def cache_files_with_sizes(cache: FileCache) -> dict[str, tuple[Path, int]]:
    """{name: (path, size on disk or -1 when gone)} of `cached_files`."""
    found: dict[str, tuple[Path, int]] = {}
    for name, path in cached_files(cache).items():
        try:
            found[name] = (path, os.stat(path, follow_symlinks=False).st_size)
        except FileNotFoundError:
            found[name] = (path, -1)
    return found


def _hash(path: Path, step: Any) -> tuple[int, str]:
    """(size, sha1) of *path*, calling step(bytes so far) after every block."""
    import hashlib

    digest = hashlib.sha1(usedforsecurity=False)
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
            step(size)
    return size, digest.hexdigest()


def _record_good(cache: FileCache, name: str, path: Path, size: int, sha1: str) -> None:
    """Refresh the index record of a file just verified (adopting one it did not know)."""
    from .cache.store import file_stamp

    try:
        stamp = file_stamp(os.stat(path))
        entry = cache.index.get(name)
        if entry is None or entry.sha1 != sha1 or entry.size != size:
            cache.index.add(name, size, sha1, stamp=stamp)
        elif entry.stamp != stamp:
            cache.index.set_stamp(name, stamp)
    except (OSError, sqlite3.Error) as exc:
        log.warning("could not record the verified %s in the cache index %s: %s", name,
                    cache.index.directory, exc)


def _remove_bad(cache: FileCache, bad: BadFile, *, delete: bool) -> bool:
    """Quarantine (or delete) a bad copy and drop it from the index, under the name's
    download lock so no download of it commits in between; False when another process
    holds that lock (it is replacing the file right now)."""
    lock = cache.store.lock(bad.name)
    if not lock.try_acquire():
        return False
    try:
        path = Path(bad.path)
        if delete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            bad.action = "deleted"
        else:
            target_dir = quarantine_dir(cache)
            target_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            target = target_dir / f"{bad.name}.{stamp}"
            try:
                os.replace(path, target)
                bad.action = f"quarantined to {target}"
            except FileNotFoundError:
                bad.action = "deleted"  # someone else removed it meanwhile
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                os.unlink(path)  # quarantine on another filesystem: do not copy bad data
                bad.action = "deleted"
        cache.forget(bad.name)
        return True
    finally:
        lock.release()


# --- prune -----------------------------------------------------------------------------------


@dataclass
class PruneReport:
    """What `prune_cache` removed (or, in a dry run, would remove)."""

    contexts: list[str]
    pinned: list[str]
    kept: int = 0
    removed: list[tuple[str, int]] = field(default_factory=list)
    #: open through a mount or Reader (here or in another process): kept
    in_use: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(size for _name, size in self.removed)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["removed"] = [{"name": n, "bytes": s} for n, s in self.removed]
        data["freed_bytes"] = self.freed
        return data


def prune_cache(cache: FileCache, keep_contexts: Iterable[str], *, dry_run: bool = False,
                keep_pinned: bool = True, progress: Progress | None = None) -> PruneReport:
    """Remove every cached mapping and reference none of *keep_contexts* needs.

    Kept: the closures (mappings and references) of those contexts, the names of every pin
    (unless *keep_pinned* is False), config files, and files open anywhere.  All closures
    are computed before anything is removed (an error leaves the cache untouched).
    """
    contexts = sorted({resolve_context(cache, c) for c in keep_contexts})
    if not contexts:
        raise CrdsFsError("prune needs at least one context to keep (--keep-contexts)")
    keep: set[str] = set()
    for context in contexts:
        mappings, refs = context_closure(cache, context, references=True)
        keep.update(mappings, refs)
    pins = list_pins(cache) if keep_pinned else []
    for pin in pins:
        keep.update(pin.names)
    result = PruneReport(contexts, [p.context for p in pins], dry_run=dry_run)
    open_here = cache.pinned()
    files = cache_files_with_sizes(cache)
    doomed = [(n, p, s) for n, (p, s) in files.items() if n not in keep]
    result.kept = len(files) - len(doomed)
    report(progress, 0, len(doomed))
    for done, (name, _path, size) in enumerate(doomed, 1):
        if name in open_here:
            result.in_use.append(name)
        elif dry_run:
            result.removed.append((name, max(size, 0)))
        else:
            outcome = cache.store.remove_unused(name)
            if outcome is False:
                result.in_use.append(name)
            else:
                cache.forget(name)
                if outcome:
                    result.removed.append((name, size))
                    log.info("pruned %s (%d bytes) from the cache %s", name, size,
                             cache.store.root)
        report(progress, done, len(doomed), name)
    return result


__all__ = [
    "BadFile", "Pin", "PruneReport", "VerifyReport", "cache_defaults", "cache_files_with_sizes",
    "cache_status",
    "cached_files", "context_closure", "instrument_of", "list_pins", "pin_context",
    "prune_cache", "quarantine_dir", "resolve_context", "unpin_context", "verify_cache",
]
