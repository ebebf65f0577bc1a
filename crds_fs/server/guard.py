"""Connection limits and timeouts uvicorn does not have: slow clients cannot hold the server.

uvicorn (0.5x) bounds idle keep-alive connections (`timeout_keep_alive`) and the size of an
incomplete request head (`h11_max_incomplete_event_size`), and `limit_concurrency` answers
503 once too many connections are open, but nothing bounds the time a client may take to
send its request: 300 clients sending half a request each hold 300 descriptors forever,
and once the process runs out of descriptors the listening socket cannot accept anyone.

`ConnectionGuard` fills the gap at the asyncio level, around whatever HTTP protocol uvicorn
uses (it is passed as uvicorn's documented ``http=`` protocol class):

- **header timeout**: a connection with no request in the application, and nothing left to
  send, for `header_timeout` seconds is closed: it covers clients that connect and send
  nothing, trickle a request head (slowloris), or never finish a body the app did not read;
- **connection limit**: at most `max_connections` are open; a new one beyond that closes
  the longest-idle connection without a request in progress (so slow clients cannot lock
  out new ones), or, when every connection is busy, is answered 503 and closed;
- **send timeout**: a response whose unsent bytes have not moved for `send_timeout`
  seconds (a client that stopped reading) is aborted.

The request body is bounded by the application (`app.ServerOptions.body_timeout`).  Which
connection a request belongs to is known from the ASGI scope's ``client`` (the peer
address), so uvicorn must run with ``proxy_headers=False``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("crds_fs.server")

HEADER_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0
#: descriptors kept free for served files, the index and logs when sizing the default limit
FD_RESERVE = 64
#: the default connection limit never exceeds this, whatever the descriptor limit
MAX_CONNECTIONS_CAP = 1000
#: seconds between two "refusing connections" warnings
REFUSAL_LOG_INTERVAL = 10.0

_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 67\r\n\r\n"
    b"crds-fs serve: too many connections in progress; retry in a moment\n"
)


def default_max_connections() -> int:
    """Half of the descriptors left after a reserve (a download uses two: socket and file)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CAP
    return max(8, min(MAX_CONNECTIONS_CAP, (soft - FD_RESERVE) // 2))


def descriptors_needed(max_connections: int) -> int:
    """Descriptors *max_connections* downloads can use at once (socket + file each)."""
    return 2 * max_connections + FD_RESERVE


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards *needed* (never above the hard limit, which an
    unprivileged process may do); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


@dataclass(eq=False)
class _Connection:
    transport: asyncio.Transport
    peer: tuple[Any, ...]
    idle_since: float
    #: requests of this connection currently inside the application
    in_app: int = 0
    last_buffered: int = 0
    send_progress: float = 0.0

    def buffered(self) -> int:
        try:
            return self.transport.get_write_buffer_size()
        except Exception:  # a transport already torn down
            return 0


@dataclass
class ConnectionGuard:
    """Shared state of every connection of one server (used from the event loop only)."""

    max_connections: int = field(default_factory=default_max_connections)
    header_timeout: float = HEADER_TIMEOUT
    send_timeout: float = SEND_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    _open: dict[tuple[Any, ...], _Connection] = field(default_factory=dict, init=False)
    _sweeper: asyncio.TimerHandle | None = field(default=None, init=False)
    _refusal_logged: float = field(default=float("-inf"), init=False)
    #: connections closed by each rule since start (shown in the log and in tests)
    closed: dict[str, int] = field(
        default_factory=lambda: {"header_timeout": 0, "send_timeout": 0, "evicted": 0,
                                 "refused": 0}, init=False)

    # --- protocol side --------------------------------------------------------------------

    def protocol(self, inner: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """An asyncio protocol class wrapping *inner* (uvicorn's HTTP protocol)."""
        return _guarded_protocol_class(self, inner)

    def opened(self, transport: asyncio.Transport) -> _Connection | None:
        """Register a new connection; None when it must be refused (all others busy)."""
        now = self.clock()
        self._ensure_sweeper()
        if len(self._open) >= self.max_connections and not self._evict_one():
            self.closed["refused"] += 1
            if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
                log.warning("refusing connections (503): all %d connections "
                            "(--max-connections) have a request in progress; %d refused so "
                            "far (logged at most every %gs)", self.max_connections,
                            self.closed["refused"], REFUSAL_LOG_INTERVAL)
                self._refusal_logged = now
            return None
        peer = _peer_key(transport.get_extra_info("peername"))
        conn = _Connection(transport, peer, idle_since=now, send_progress=now)
        self._open[peer] = conn
        return conn

    def lost(self, conn: _Connection) -> None:
        if self._open.get(conn.peer) is conn:
            del self._open[conn.peer]

    def _evict_one(self) -> bool:
        """Close the longest-idle connection with no request in progress (True if one)."""
        idle = [c for c in self._open.values() if c.in_app == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self._close(victim, "evicted")
        return True

    def _close(self, conn: _Connection, reason: str) -> None:
        self.closed[reason] += 1
        self.lost(conn)
        conn.transport.abort()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._schedule(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = max(0.05, min(1.0, self.header_timeout / 4, self.send_timeout / 4))
        self._sweeper = loop.call_later(interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Apply the header and send timeouts (runs a few times a second)."""
        now = self.clock()
        timed_out = {"header_timeout": 0, "send_timeout": 0}
        for conn in list(self._open.values()):
            buffered = conn.buffered()
            if buffered == 0 or buffered != conn.last_buffered:
                conn.send_progress = now
            conn.last_buffered = buffered
            if buffered and now - conn.send_progress > self.send_timeout:
                self._close(conn, "send_timeout")
                timed_out["send_timeout"] += 1
            elif conn.in_app or buffered:
                conn.idle_since = now
            elif now - conn.idle_since > self.header_timeout:
                self._close(conn, "header_timeout")
                timed_out["header_timeout"] += 1
        if any(timed_out.values()):
            log.info("closed %d connection(s) sending no complete request within %gs "
                     "(--header-timeout) and %d not reading their response for %gs "
                     "(--send-timeout)", timed_out["header_timeout"], self.header_timeout,
                     timed_out["send_timeout"], self.send_timeout)
        self._schedule(loop)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- application side -----------------------------------------------------------------

    def request_started(self, client: Any) -> None:
        conn = self._open.get(_peer_key(client))
        if conn is not None:
            conn.in_app += 1

    def request_finished(self, client: Any) -> None:
        conn = self._open.get(_peer_key(client))
        if conn is not None:
            conn.in_app = max(0, conn.in_app - 1)
            conn.idle_since = self.clock()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware telling the guard when a request is inside the application."""
        guard = self

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            client = scope.get("client")
            guard.request_started(client)
            try:
                await app(scope, receive, send)
            finally:
                guard.request_finished(client)

        return guarded


def _peer_key(peer: Any) -> tuple[Any, ...]:
    """(host, port) of a peer address (IPv6 addresses carry two more fields)."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return (repr(peer),)


def _guarded_protocol_class(guard: ConnectionGuard,
                            inner_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    class GuardedProtocol(asyncio.Protocol):
        """Delegates everything to uvicorn's protocol; registers with the guard first."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.inner = inner_class(*args, **kwargs)
            self.conn: _Connection | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.conn = guard.opened(transport)
            if self.conn is None:
                transport.write(_BUSY_RESPONSE)
                transport.close()
                return
            self.inner.connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.conn is None:
                return
            guard.lost(self.conn)
            self.inner.connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn is not None:
                self.inner.data_received(data)

        def eof_received(self) -> bool | None:
            return self.inner.eof_received() if self.conn is not None else None

        def pause_writing(self) -> None:
            if self.conn is not None:
                self.inner.pause_writing()

        def resume_writing(self) -> None:
            if self.conn is not None:
                self.inner.resume_writing()

    GuardedProtocol.__qualname__ = f"Guarded{inner_class.__name__}"
    return GuardedProtocol


__all__ = ["ConnectionGuard", "default_max_connections"]
