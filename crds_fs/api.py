"""The seed's Python API: best references for a dataset, fetched into the crds-fs cache.

    >>> from crds_fs import cache_best_references_for_dataset
    >>> cache_best_references_for_dataset("hst_9001.pmap", "j9demo01q_raw.fits")
    {'bpixtab': '/home/me/.cache/crds-fs/references/hst/hst_acs_bpixtab_9304.fits', ...}

Works without a mount: settings come from the environment (CRDS_SERVER_URL,
CRDS_OBSERVATORY, CRDS_FS_CACHE, ...) or the `server=` / `cache_dir=` arguments, and files
go through the same cache and fetcher a mount uses (download once, verify size and sha1,
atomic commit), so a later mount of the same cache serves them at once.  Given
`mount=MOUNTPOINT` the mount's own server and cache are used and the paths returned are
inside the mount (`MOUNT/references/<obs>/<name>`).

What `cache_best_references_for_dataset(context, dataset)` does, as crds' function of the
same name does:

1. caches every mapping of the context (the server's `get_mapping_names` closure, or the
   local engine's when offline);
2. learns the header keywords the context needs for the dataset's instrument and reads
   only those from the dataset (headers only, never data);
3. decides the best references on the server (`engine="remote"`, the default while the
   server is reachable) or with the local engine over the cached mappings
   (`engine="local"`, and automatically when offline);
4. fetches and verifies each reference not cached yet;
5. returns `{reftype: local path}`.

Outcomes other than a file, as crds' `getreferences` treats them: types that do not apply
(``NOT FOUND n/a``) are left out; any other ``NOT FOUND ...`` (no match, bad value) raises
`ReferenceLookupError` naming every failing type, before anything is downloaded, unless
`strict=False`, which leaves those types out too (logged as warnings).
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bestrefs.headers import read_header
from .bestrefs.resolver import ENGINES, BestrefsResolver, is_context_alias, is_reference_name
from .config import Settings, parse_size
from .errors import ConfigError, LookupFailure
from .progress import Progress, report

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .cache import FileCache

log = logging.getLogger(__name__)

#: Parallel downloads when caching a context's mappings (small files, latency bound).
FETCH_THREADS = 8


class ReferenceLookupError(LookupFailure):
    """A reference type has no answer for the dataset (crds: CrdsLookupError)."""

    crds_name = "CrdsLookupError"


class Session:
    """One cache (and its server) plus a best-references resolver; thread-safe.

    The module functions share one Session per set of arguments, so repeated calls reuse
    the catalog, the HTTP connections and the loaded mappings.
    """

    def __init__(self, *, server: str | None = None, cache_dir: str | Path | None = None,
                 mount: str | Path | None = None, observatory: str | None = None,
                 offline: bool = False, engine: str = "auto",
                 settings: Settings | None = None,
                 cache_max_size: str | int | None = None) -> None:
        """*settings*, when given, are the already resolved ones (server, cache_dir and
        observatory are then ignored), so `session()` reads a mount's stats only once.
        *cache_max_size* ("50G", or bytes; default $CRDS_FS_CACHE_MAX_SIZE, else no limit)
        bounds the cache as `crds-fs mount --cache-max-size` does."""
        from .cache import FileCache

        if engine not in ENGINES:
            raise ConfigError(f"engine={engine!r}: use one of {', '.join(ENGINES)}")
        self.mount = Path(mount).resolve() if mount is not None else None
        if settings is None:
            settings = resolve_settings(server=server, cache_dir=cache_dir, mount=self.mount,
                                        observatory=observatory)
        settings = _with_max_size(settings, cache_max_size)
        self.cache: FileCache = FileCache.open(settings, observatory=settings.observatory,
                                               offline=offline)
        self.resolver = BestrefsResolver(self.cache, engine=engine)

    def close(self) -> None:
        self.cache.close()

    @property
    def observatory(self) -> str:
        return self.cache.observatory

    def context(self, context: str | None) -> str:
        """*context*, or the server's operational one for None / 'operational' / 'latest'
        (also ``<obs>-operational``; the same words `crds-fs bestrefs` accepts)."""
        if is_context_alias(context, self.observatory):
            return self.cache.operational_context()
        return str(context)

    def path_of(self, name: str, local: Path) -> str:
        """What callers get for a cached file: its mount path when a mount was given."""
        if self.mount is None:
            return str(local)
        kind = self.cache.catalog.kind(name)
        return str(self.mount / f"{kind}s" / self.observatory / name)

    # --- the crds-like operations -------------------------------------------------------------

    def dump_mappings(self, context: str | None = None, *,
                      progress: Progress | None = None) -> dict[str, str]:
        """Cache every mapping of *context*; {mapping name: path}.

        *progress* (see `crds_fs.progress`) hears of each mapping as it is cached.
        """
        name = self.context(context)
        names = sorted(set(self.resolver.mapping_names(name)))
        paths = self._ensure_all(names, progress)
        return {n: self.path_of(n, p) for n, p in zip(names, paths, strict=True)}

    def _ensure_all(self, names: list[str], progress: Progress | None) -> list[Path]:
        """Cached paths of *names* (fetched in parallel), reporting each one as it is ready."""
        done = 0
        lock = threading.Lock()
        report(progress, 0, len(names))

        def ensure(name: str) -> Path:
            nonlocal done
            if self.mount is not None:
                self._open_through_mount(name)
            path = self.cache.ensure(name)
            with lock:
                done += 1
                report(progress, done, len(names), name)
            return path

        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            return list(pool.map(ensure, names))

    def _open_through_mount(self, name: str) -> None:
        """Have the mount's daemon fetch *name* (its first open does), so the download is
        its own: one fetcher, counted in the mount's `.crds-fs/stats`.  A failure is left
        to the `cache.ensure` that follows, which reports it in full."""
        try:
            with open(self.path_of(name, Path(name)), "rb"):
                pass
        except OSError as exc:
            log.debug("opening %s through the mount %s failed (%s); fetching directly",
                      name, self.mount, exc)

    def get_dataset_header(self, context: str | None, dataset: str | Path) -> dict[str, str]:
        """The keywords of *dataset* that *context* matches on (its mappings are cached)."""
        name = self.context(context)
        self.dump_mappings(name)
        # The keys come from the mappings just cached (as crds' get_minimum_header does).
        return read_header(Path(dataset), self.resolver.local_context(name).required_parkeys())

    def get_best_references(self, context: str | None, header: Mapping[str, Any],
                            reftypes: Iterable[str] | None = None) -> dict[str, str]:
        """{reftype: reference name or 'NOT FOUND ...'} for *header*; whole-call failures
        (unknown instrument, bad rules, ...) raise LookupFailure."""
        name = self.context(context)
        clean = {str(k).upper(): str(v) for k, v in header.items()}
        outcome = self.resolver.best_references(name, {"header": clean}, reftypes)["header"]
        if outcome.error is not None:
            raise LookupFailure(f"best references under {name} failed "
                                f"({outcome.engine}): {outcome.error}")
        return dict(sorted(outcome.bestrefs.items()))

    def cache_references(self, context: str | None, bestrefs: Mapping[str, str], *,
                         strict: bool = True,
                         progress: Progress | None = None) -> dict[str, str]:
        """Fetch (verify) the references named in *bestrefs*; {reftype: path}.

        ``NOT FOUND n/a`` types are left out; other NOT FOUND values raise
        ReferenceLookupError before any download (strict) or are left out (not strict).
        *progress* (see `crds_fs.progress`) hears of each file as it is cached.
        """
        return self.cache_many_references(context, [bestrefs], strict=strict,
                                          progress=progress)[0]

    def cache_many_references(self, context: str | None,
                              bestrefs: Sequence[Mapping[str, str]], *, strict: bool = True,
                              progress: Progress | None = None) -> list[dict[str, str]]:
        """`cache_references` for many datasets at once: every distinct reference is
        fetched once, all in one parallel pass (one progress total for the whole set)."""
        wanted = [_wanted(refs, strict=strict) for refs in bestrefs]
        names = sorted({ref for refs in wanted for ref in refs.values()})
        paths = dict(zip(names, self._ensure_all(names, progress), strict=True))
        return [{reftype: self.path_of(ref, paths[ref]) for reftype, ref in refs.items()}
                for refs in wanted]

    def cache_best_references_for_dataset(
        self, context: str | None, dataset: str | Path, *,
        reftypes: Iterable[str] | None = None, strict: bool = True,
    ) -> dict[str, str]:
        """Steps 1-5 of the module doc: {reftype: local path} of *dataset*'s references."""
        name = self.context(context)
        header = self.get_dataset_header(name, dataset)
        try:
            bestrefs = self.get_best_references(name, header, reftypes)
            wanted = _wanted(bestrefs, strict=strict)
        except LookupFailure as exc:
            raise type(exc)(f"{dataset}: {exc}") from None
        return self.cache_references(name, wanted)


def _wanted(bestrefs: Mapping[str, str], *, strict: bool) -> dict[str, str]:
    """{reftype: reference} to fetch, applying crds' rules for NOT FOUND values."""
    wanted: dict[str, str] = {}
    errors: list[str] = []
    for reftype, value in sorted(bestrefs.items()):
        value = str(value)
        if is_reference_name(value):
            wanted[reftype] = value
        elif "n/a" in value.lower() or value.upper() in ("N/A", "OMIT"):
            log.debug("reference type %r does not apply (%s)", reftype, value)
        else:
            errors.append(f"{reftype!r} = {value.removeprefix('NOT FOUND').strip()}")
    if errors and strict:
        raise ReferenceLookupError("Error determining best reference for " + "; ".join(errors)
                                   + " (strict=False leaves these types out)")
    for error in errors:
        log.warning("no best reference for %s; left out", error)
    return wanted


def _mount_facts(mount: Path) -> dict[str, Any]:
    """Server, cache and observatory of a running mount, from its `.crds-fs/stats`."""
    stats = mount / ".crds-fs" / "stats"
    try:
        facts = json.loads(stats.read_text()).get("mount", {})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{mount} is not a running crds-fs mount (cannot read {stats}: "
                          f"{exc})") from None
    return facts if isinstance(facts, dict) else {}


def _with_max_size(settings: Settings, size: str | int | None) -> Settings:
    """*settings* with the cache size limit *size* ("50G" or bytes); None keeps theirs."""
    if size is None:
        return settings
    return replace(settings, cache_max_bytes=parse_size(size, what="cache_max_size"))


def resolve_settings(*, server: str | None = None, cache_dir: str | Path | None = None,
                     mount: str | Path | None = None, observatory: str | None = None,
                     proxy: str | None = None) -> Settings:
    """Settings from the environment, the arguments on top, and a mount's own server,
    cache and observatory for what the arguments leave open."""
    if mount is not None:
        facts = _mount_facts(Path(mount))
        server = server or facts.get("server")
        cache_dir = cache_dir or facts.get("cache_dir")
        observatory = observatory or facts.get("observatory")
    return Settings.from_env(server_url=server, cache_dir=cache_dir, observatory=observatory,
                             proxy=proxy)


# --- module-level functions on shared sessions ---------------------------------------------

_sessions: dict[tuple[Any, ...], Session] = {}
_sessions_lock = threading.Lock()


def session(*, server: str | None = None, cache_dir: str | Path | None = None,
            mount: str | Path | None = None, observatory: str | None = None,
            offline: bool = False, engine: str = "auto",
            cache_max_size: str | int | None = None, proxy: str | None = None) -> Session:
    """The shared Session for these arguments (opened on first use, closed at exit).

    Sessions are shared per effective settings (environment included), so a changed
    CRDS_SERVER_URL or CRDS_FS_CACHE gets a session of its own.
    """
    mount_path = Path(mount).resolve() if mount is not None else None
    settings = _with_max_size(resolve_settings(server=server, cache_dir=cache_dir,
                                               mount=mount_path, observatory=observatory,
                                               proxy=proxy),
                              cache_max_size)
    key = (settings.server_url, str(Path(settings.cache_dir).resolve()), settings.observatory,
           str(mount_path) if mount_path else None, offline, engine, settings.cache_max_bytes,
           settings.proxy)
    with _sessions_lock:
        found = _sessions.get(key)
        if found is None:
            found = Session(mount=mount_path, offline=offline, engine=engine,
                            settings=settings)
            _sessions[key] = found
        return found


def close_sessions() -> None:
    """Close every shared session (also run at interpreter exit)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for item in sessions:
        item.close()


atexit.register(close_sessions)


def cache_best_references_for_dataset(
    context: str | None, dataset_path: str | Path, *, reftypes: Iterable[str] | None = None,
    strict: bool = True, engine: str = "auto", server: str | None = None,
    cache_dir: str | Path | None = None, mount: str | Path | None = None,
    offline: bool = False,
) -> dict[str, str]:
    """Best references of the dataset file *dataset_path* under *context* (None: the
    operational one), fetched and verified: {reftype: local path} (see the module doc)."""
    return session(server=server, cache_dir=cache_dir, mount=mount, offline=offline,
                   engine=engine).cache_best_references_for_dataset(
        context, dataset_path, reftypes=reftypes, strict=strict)


def get_best_references(
    context: str | None, header: Mapping[str, Any], reftypes: Iterable[str] | None = None, *,
    engine: str = "auto", server: str | None = None, cache_dir: str | Path | None = None,
    mount: str | Path | None = None, offline: bool = False,
) -> dict[str, str]:
    """{reftype: reference name or 'NOT FOUND ...'} for a header dict (nothing fetched)."""
    return session(server=server, cache_dir=cache_dir, mount=mount, offline=offline,
                   engine=engine).get_best_references(context, header, reftypes)


def cache_references(
    context: str | None, bestrefs: Mapping[str, str], *, strict: bool = True,
    server: str | None = None, cache_dir: str | Path | None = None,
    mount: str | Path | None = None, offline: bool = False,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Fetch the references of a bestrefs dict; {reftype: local path} (see the module doc)."""
    return session(server=server, cache_dir=cache_dir, mount=mount,
                   offline=offline).cache_references(context, bestrefs, strict=strict,
                                                     progress=progress)


def dump_mappings(
    context: str | None = None, *, server: str | None = None,
    cache_dir: str | Path | None = None, mount: str | Path | None = None,
    offline: bool = False, progress: Progress | None = None,
) -> dict[str, str]:
    """Cache every mapping of *context*; {mapping name: local path}."""
    return session(server=server, cache_dir=cache_dir, mount=mount,
                   offline=offline).dump_mappings(context, progress=progress)


__all__ = [
    "ReferenceLookupError", "Session", "cache_best_references_for_dataset",
    "cache_references", "close_sessions", "dump_mappings", "get_best_references", "session",
]
