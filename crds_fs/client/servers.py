"""Several CRDS servers in order: which one to ask, when to switch, when to go back.

A site may list a primary server and mirrors (`--server A --server B`, or
``CRDS_SERVER_URL=A,B``).  The rules follow CernVM-FS' host failover:

* every request goes first to the *current* server (the primary at start);
* a failure that can heal (connection refused/reset, timeout, HTTP 5xx) marks that server
  down for `backoff` seconds and the request moves on to the next server in order, servers
  that are down last (still tried: a down mark is a hint, not a verdict);
* once traffic has left the primary, it goes back to the primary `reset_after` seconds
  later (if the primary is still broken, the next request fails over again, at the price of
  one failed connect).

Mirrors must agree: a file whose sha1 differs between two servers' catalogs is a
*conflict* and is never served (EIO naming both servers), since one of them is wrong and
nothing says which.  The catalog in use registers its sha1s (`set_reference`); every other
server's catalog is compared with it when its server info is first fetched.

Thread-safe: the mount's FUSE threads and background downloads share one pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("crds_fs.client")

#: seconds a failed server stays at the back of the queue (CRDS_FS_FAILOVER_BACKOFF)
DEFAULT_BACKOFF = 30.0
#: seconds after a failover when traffic goes back to the primary (CRDS_FS_FAILOVER_RESET)
DEFAULT_RESET = 300.0
#: most servers one mount accepts (each may cost a catalog download at start)
MAX_SERVERS = 8


@dataclass
class ServerState:
    """What the pool knows about one server."""

    url: str
    #: server info (without download_metadata) once fetched from this very server
    info: dict[str, Any] | None = None
    #: True once this server's catalog was compared with the reference catalog
    checked: bool = False
    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ServerPool:
    """The ordered servers of one client and their health."""

    def __init__(self, urls: list[str], *, backoff: float = DEFAULT_BACKOFF,
                 reset_after: float = DEFAULT_RESET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        clean: list[str] = []
        for url in urls:
            url = url.strip().rstrip("/")
            if url and url not in clean:
                clean.append(url)
        if not clean:
            raise ValueError("no CRDS server URL given")
        self.servers = [ServerState(url) for url in clean[:MAX_SERVERS]]
        if len(clean) > MAX_SERVERS:
            log.warning("only the first %d of %d CRDS servers are used", MAX_SERVERS,
                        len(clean))
        self.backoff = max(0.0, float(backoff))
        self.reset_after = max(0.0, float(reset_after))
        self.clock = clock
        self._lock = threading.Lock()
        self._current = 0
        self._left_primary_at = 0.0
        #: {name: sha1} of the catalog in use, and the server it came from
        self._reference: Mapping[str, str] | None = None
        self._reference_server = ""
        #: {name: message} of files two servers disagree on
        self.conflicts: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.servers)

    @property
    def current(self) -> int:
        """Index of the server requests go to first (after a due reset to the primary)."""
        with self._lock:
            self._maybe_reset()
            return self._current

    def _maybe_reset(self) -> None:
        if self._current and self.clock() - self._left_primary_at >= self.reset_after:
            log.info("failover reset: sending requests to the primary CRDS server %s again "
                     "(after %gs on %s; CRDS_FS_FAILOVER_RESET)", self.servers[0].url,
                     self.reset_after, self.servers[self._current].url)
            self._current = 0

    def candidates(self) -> list[int]:
        """Server indexes in the order one request tries them."""
        with self._lock:
            self._maybe_reset()
            now = self.clock()
            first = self._current
            rest = [i for i in range(len(self.servers)) if i != first]
            up = [i for i in rest if self.servers[i].down_until <= now]
            down = [i for i in rest if self.servers[i].down_until > now]
            return [first, *up, *down]

    def succeeded(self, index: int) -> None:
        with self._lock:
            server = self.servers[index]
            server.requests += 1
            server.failures = 0
            server.down_until = 0.0
            if index != self._current and len(self.servers) > 1:
                self._switch(index, f"{self.servers[self._current].url} failed")

    def failed(self, index: int, reason: str) -> None:
        """Mark server *index* down for `backoff` seconds (the request moves on)."""
        with self._lock:
            server = self.servers[index]
            server.requests += 1
            server.failures += 1
            server.last_error = reason[:300]
            server.down_until = self.clock() + self.backoff
            if len(self.servers) > 1:
                log.warning("CRDS server %s failed (%s); trying the next server", server.url,
                            reason)

    def _switch(self, index: int, why: str) -> None:
        if self._current == 0 and index != 0:
            self._left_primary_at = self.clock()
        log.warning("CRDS server in use is now %s (%s)", self.servers[index].url, why)
        self._current = index

    def index_of(self, url: str) -> int | None:
        """The server a download URL belongs to (its advertised bases, else its URL)."""
        for i, server in enumerate(self.servers):
            if any(url.startswith(base) for base in _bases(server.info)):
                return i
        for i, server in enumerate(self.servers):
            if url.startswith(server.url + "/"):
                return i
        return None

    def relocate(self, url: str, index: int) -> str | None:
        """*url* (a download URL of some server of the pool) as served by server *index*.

        Through the advertised base URLs of both servers when both server infos are known,
        else by swapping the server URL prefix; None when *url* belongs to no server.
        """
        origin = self.index_of(url)
        if origin is None:
            return None
        if origin == index:
            return url
        source, target = self.servers[origin], self.servers[index]
        for key, base in _keyed_bases(source.info):
            if url.startswith(base):
                other = dict(_keyed_bases(target.info)).get(key)
                if other:
                    return other + url[len(base):]
        if url.startswith(source.url + "/"):
            return target.url + url[len(source.url):]
        return None

    # --- catalogs that must agree -----------------------------------------------------

    def set_reference(self, sha1s: Mapping[str, str], server_url: str) -> None:
        """The catalog in use (sha1 per name), as fetched from *server_url*."""
        with self._lock:
            self._reference = sha1s
            self._reference_server = server_url
            for server in self.servers:
                server.checked = server.url == server_url

    def compare(self, index: int, sha1s: Mapping[str, str]) -> int:
        """Compare server *index*'s catalog with the reference; returns new conflicts."""
        with self._lock:
            reference, origin = self._reference, self._reference_server
            server = self.servers[index]
            if reference is None or server.url == origin:
                return 0
            server.checked = True
            found = 0
            for name, sha1 in sha1s.items():
                mine = reference.get(name)
                if mine and sha1 and mine != sha1 and name not in self.conflicts:
                    self.conflicts[name] = (
                        f"'{name}' has sha1 {mine} on CRDS server {origin} but {sha1} on "
                        f"{server.url}: the servers disagree, so it is served from neither. "
                        "Tell the operators of those servers")
                    log.error("%s", self.conflicts[name])
                    found += 1
            return found

    def needs_check(self, index: int) -> bool:
        with self._lock:
            return self._reference is not None and not self.servers[index].checked

    def conflict(self, name: str) -> str | None:
        return self.conflicts.get(name)

    # --- stats ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """JSON-able state for `.crds-fs/stats`: the server in use and each server's health."""
        with self._lock:
            self._maybe_reset()
            now = self.clock()
            rows = []
            for i, server in enumerate(self.servers):
                state = ("in use" if i == self._current
                         else "down" if server.down_until > now else "standby")
                rows.append({"url": server.url, "state": state, "requests": server.requests,
                             "failures": server.failures, "last_error": server.last_error})
            reset_in = (max(0.0, self._left_primary_at + self.reset_after - now)
                        if self._current else None)
            return {"in_use": self.servers[self._current].url, "servers": rows,
                    "reset_to_primary_in": reset_in, "conflicts": len(self.conflicts)}


def _keyed_bases(info: Mapping[str, Any] | None) -> list[tuple[tuple[str, str], str]]:
    """((url field, observatory), base ending in '/') for every advertised download base."""
    found: list[tuple[tuple[str, str], str]] = []
    for key in ("mapping_url", "reference_url", "config_url"):
        bases = (info or {}).get(key)
        if isinstance(bases, dict) and "unchecked" in bases:
            bases = bases["unchecked"]
        if isinstance(bases, dict):
            for obs, base in bases.items():
                if base:
                    text = str(base)
                    found.append(((key, str(obs)), text if text.endswith("/") else text + "/"))
    return found


def _bases(info: Mapping[str, Any] | None) -> list[str]:
    return [base for _key, base in _keyed_bases(info)]


def parse_server_list(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """URLs from 'A,B' (CRDS_SERVER_URL) or a list of such strings (repeated --server)."""
    items = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().rstrip("/")
            if part and part not in urls:
                urls.append(part)
    return urls
