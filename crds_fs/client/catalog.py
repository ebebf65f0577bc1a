"""The server catalog: size and sha1 of every file of one observatory, plus server info.

A mount needs a file's size for `stat` long before (or without ever) downloading it, and the
sha1 to verify the download.  CRDS publishes both for every file in one blob
(`download_metadata`, 44k entries for HST), so the catalog is fetched once per start and
kept in the diskcache index: a restarted or offline mount finds it there.

Memory matters (the whole mount has a 150 MB budget): entries are plain `(size, sha1)`
tuples in one dict, ~10 MB for 44k files, and the pickled form loads in tens of ms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any, NamedTuple

from ..errors import (
    ConfigError,
    OfflineError,
    ProtocolError,
    ServerUnreachableError,
    ServiceError,
)
from .names import FileKind, file_kind
from .rpc import CrdsClient, decode_download_metadata

log = logging.getLogger(__name__)

#: Bump when the stored layout changes; older stored catalogs are then ignored.
_FORMAT = 1
#: Server info fields that describe the catalog (a change in any is a change of the
#: catalog); the others (last_synced, last_refreshed, URLs, versions) are bookkeeping.
CATALOG_FIELDS = ("operational_context", "edit_context", "versions_context", "build_context",
                  "bad_files_list", "context_history")
#: crds-fs serve's cheap change check (docs/protocol.md); real CRDS servers do not know it
DIGEST_METHOD = "get_catalog_digest"


def index_key(observatory: str) -> str:
    """Key of an observatory's catalog in the diskcache index."""
    return f"catalog:{observatory}"


class FileInfo(NamedTuple):
    """What the server says about one file."""

    size: int
    #: lower-case hex sha1 of the whole file; "" when the server publishes none
    sha1: str


class Catalog:
    """Immutable `{name: FileInfo}` of one observatory and the server info it came with."""

    def __init__(
        self,
        observatory: str,
        files: Mapping[str, tuple[int, str]],
        server_info: Mapping[str, Any],
        *,
        server_url: str = "",
        fetched_at: float = 0.0,
        source: str = "server",
        retained: frozenset[str] = frozenset(),
    ) -> None:
        self.observatory = observatory
        self._files = dict(files)
        self.server_info: dict[str, Any] = {
            k: v for k, v in server_info.items() if k != "download_metadata"
        }
        self.server_url = server_url
        self.fetched_at = fetched_at
        #: "server" when fetched in this process, "index" when read back from the index
        self.source = source
        #: names kept although the server no longer lists them (cached copies; see
        #: `with_retained`)
        self.retained = retained

    def __contains__(self, name: object) -> bool:
        return name in self._files

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __repr__(self) -> str:
        return (f"Catalog({self.observatory!r}, {len(self)} files, from {self.source} "
                f"{self.server_url!r})")

    def get(self, name: str) -> FileInfo | None:
        """Size and sha1 of *name*, or None when the server does not know it."""
        entry = self._files.get(name)
        return FileInfo(*entry) if entry is not None else None

    @staticmethod
    def kind(name: str) -> FileKind:
        """"mapping" (.pmap/.imap/.rmap), "config" (server_config) or "reference"."""
        return file_kind(name)

    @cached_property
    def _sorted(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {"mapping": [], "reference": [], "config": []}
        for name in sorted(self._files):
            groups[file_kind(name)].append(name)
        return groups

    def mappings(self) -> list[str]:
        """Sorted mapping names (a shared list: do not modify)."""
        return self._sorted["mapping"]

    def references(self) -> list[str]:
        """Sorted reference names (a shared list: do not modify)."""
        return self._sorted["reference"]

    @property
    def operational_context(self) -> str | None:
        return self.server_info.get("operational_context")

    @cached_property
    def bad_files(self) -> frozenset[str]:
        """Names the server marks scientifically invalid (bad_files_list)."""
        return frozenset(self.server_info.get("bad_files_list") or ())

    # --- comparing (the mount's refresher) -------------------------------------------------

    def same_content(self, other: Catalog) -> bool:
        """True when *other* lists the same files (size, sha1) and the same catalog facts
        (`CATALOG_FIELDS`): reloading it would change nothing a reader can see."""
        return self._files == other._files and all(
            self.server_info.get(field) == other.server_info.get(field)
            for field in CATALOG_FIELDS)

    def diff(self, newer: Catalog) -> CatalogDiff:
        """What changed from this catalog to *newer* (names sorted)."""
        old, new = self._files, newer._files
        return CatalogDiff(
            added=sorted(new.keys() - old.keys()),
            removed=sorted(old.keys() - new.keys()),
            changed=sorted(n for n in old.keys() & new.keys() if old[n] != new[n]),
            context_before=self.operational_context,
            context_after=newer.operational_context,
            bad_files_changed=self.bad_files != newer.bad_files,
        )

    def with_retained(self, older: Catalog, names: set[str] | frozenset[str]) -> Catalog:
        """This catalog plus the entries of *names* taken from *older*: files the server
        dropped whose cached copies stay readable (and listed) until evicted."""
        keep = {n: older._files[n] for n in names if n in older._files and n not in self}
        if not keep:
            return self
        merged = Catalog(self.observatory, {**self._files, **keep}, self.server_info,
                         server_url=self.server_url, fetched_at=self.fetched_at,
                         source=self.source, retained=frozenset(keep))
        return merged

    # --- persistence ----------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain-data form stored in the index (no class references: survives refactors)."""
        return {
            "format": _FORMAT,
            "observatory": self.observatory,
            "server_url": self.server_url,
            "fetched_at": self.fetched_at,
            "server_info": self.server_info,
            "files": self._files,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Catalog:
        return cls(
            state["observatory"], state["files"], state["server_info"],
            server_url=state.get("server_url", ""), fetched_at=state.get("fetched_at", 0.0),
            source="index",
        )


class CatalogDiff(NamedTuple):
    """Differences between two catalogs of one observatory."""

    added: list[str]
    removed: list[str]
    #: same name, other size or sha1 (CRDS files are immutable; a mirror may still do it)
    changed: list[str]
    context_before: str | None
    context_after: str | None
    bad_files_changed: bool


def store_catalog(index: Any, catalog: Catalog) -> None:
    """Keep *catalog* in *index* (a diskcache.Cache) for the next start and offline use."""
    index.set(index_key(catalog.observatory), catalog.to_state())


def catalog_digest(client: CrdsClient, observatory: str) -> dict[str, Any] | None:
    """The server's digest of its catalog (`get_catalog_digest`, a crds-fs serve extension),
    or None when the server does not offer it (real CRDS servers answer with an error).

    A few hundred bytes instead of the whole catalog: the mount's refresher asks it first
    and downloads the catalog only when the digest moved.
    """
    try:
        answer = client.call(DIGEST_METHOD, observatory)
    except ServiceError as exc:
        log.debug("server %s has no %s (%s); comparing catalogs instead",
                  client.server_url, DIGEST_METHOD, exc)
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("digest"), str):
        raise ProtocolError(
            f"CRDS server {client.server_url} answered {DIGEST_METHOD} with "
            f"{str(answer)[:200]!r}, expected an object with a 'digest' string")
    return answer


def parse_file_records(records: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """`{name: (size, sha1)}` from download_metadata / get_file_info_map records.

    Records are `{"size": "<int as str>", "sha1sum": hex}`; "NOT FOUND" strings and records
    without a usable size are skipped (a file without a size cannot be presented).
    """
    files: dict[str, tuple[int, str]] = {}
    skipped = 0
    for name, record in records.items():
        try:
            size = int(record["size"])
        except (TypeError, KeyError, ValueError):
            skipped += 1
            continue
        sha1 = str(record.get("sha1sum") or "").lower()
        files[name] = (size, "" if sha1 == "none" else sha1)
    if skipped:
        log.warning("server catalog: skipped %d entries without a usable size", skipped)
    return files


def fetch_catalog(client: CrdsClient, observatory: str) -> Catalog:
    """Build the catalog from the server (server info, then download_metadata or file map)."""
    client.observatory = client.observatory or observatory  # lets it find <server>/<obs>
    info = client.get_server_info()
    served = info.get("observatory")
    if served != observatory:
        raise ConfigError(
            f"CRDS server {client.server_url} serves observatory {served!r}, not "
            f"{observatory!r} (nor does {client.server_url}/{observatory}): point "
            f"CRDS_SERVER_URL at a {observatory} server or set CRDS_OBSERVATORY to match"
        )
    records = decode_download_metadata(info)
    if records is None:
        log.info("server %s publishes no download_metadata; asking get_file_info_map",
                 client.server_url)
        records = client.get_file_info_map(observatory, None, ["sha1sum", "size"])
    if not isinstance(records, dict):
        raise ProtocolError(
            f"CRDS server {client.server_url} returned a file catalog of type "
            f"{type(records).__name__}, expected an object"
        )
    catalog = Catalog(observatory, parse_file_records(records), info,
                      server_url=client.server_url, fetched_at=time.time())
    client.check_mirrors(_Sha1s(catalog), catalog.server_url)  # several servers must agree
    return catalog


class _Sha1s:
    """`.get(name)` -> the catalog's sha1 of *name* (for CrdsClient.check_mirrors)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, name: str) -> str | None:
        info = self.catalog.get(name)
        return info.sha1 if info is not None else None


def stored_catalog(index: Any, observatory: str) -> Catalog | None:
    """The catalog kept in *index* (a diskcache.Cache), or None if there is none usable."""
    state = index.get(index_key(observatory))
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        return None
    return Catalog.from_state(state)


def load_catalog(
    client: CrdsClient, index: Any, observatory: str, *, offline: bool = False
) -> Catalog:
    """The catalog of *observatory*: fresh from the server, else the one kept in *index*.

    Online, the server is asked once per call and the answer replaces the stored copy (the
    server is the truth: new deliveries add files).  Offline, or when the server cannot be
    reached, the stored copy is used; with none stored this fails with a message saying so.
    """
    if not offline:
        try:
            catalog = fetch_catalog(client, observatory)
        except ServerUnreachableError as exc:
            stored = stored_catalog(index, observatory)
            if stored is None:
                raise
            log.warning("%s; using the catalog stored at %s (%d files)",
                        exc, time.ctime(stored.fetched_at), len(stored))
            return stored
        store_catalog(index, catalog)
        return catalog
    stored = stored_catalog(index, observatory)
    if stored is None:
        raise OfflineError(
            f"no {observatory} catalog is stored in the index {getattr(index, 'directory', '')}"
            f": run once with the CRDS server ({client.server_url}) reachable"
        )
    return stored
