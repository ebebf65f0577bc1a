"""A real HTTP proxy on 127.0.0.1 that forwards to an upstream server and injects faults.

Tests of the cache layer need a server that misbehaves on command: refuses connections,
answers 5xx, stalls, resets or truncates a body, flips bytes.  Putting a small proxy in front
of the real `crds-fs serve` keeps the server honest (no test hooks in it) and lets a test
count requests (single-flight assertions) without mocking anything.

The proxy forwards the Host header unchanged, so the upstream builds download URLs that
point back at the proxy and every download passes through it.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_KINDS = frozenset(
    {"refuse", "500", "503", "404", "slow", "slow_body", "reset", "truncate", "corrupt"}
)
#: Hop-by-hop headers a proxy must not forward (RFC 9110 7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "proxy-authenticate", "proxy-authorization"}
)


@dataclass
class _Fault:
    kind: str
    path_contains: str
    times: int | None
    delay: float

    def matches(self, path: str) -> bool:
        return self.path_contains in path


class FaultProxy:
    """Threaded forwarding proxy with test-controlled fault injection; a context manager."""

    def __init__(self, upstream_url: str, *, port: int = 0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FaultProxy needs an http:// upstream URL, got {upstream_url!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        #: 0 = any free port; a fixed one lets a test bring a "server" back at the same URL
        self.listen_port = port
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._seen: list[tuple[str, str]] = []
        #: set at stop(): every stalled response gives up at once, so stop() never hangs
        self._stopping = threading.Event()
        #: client connections being served, closed at stop() (keep-alive would outlive it)
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"proxy": self})
        server = _QuietServer(("127.0.0.1", self.listen_port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections: afterwards the proxy is just gone."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections, self._connections = set(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control --------------------------------------------------------------------------

    def set_fault(
        self,
        kind: str | None,
        *,
        path_contains: str = "",
        times: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Inject *kind* into requests whose path contains *path_contains*.

        kind None passes everything through.  *times* limits the fault to the next N
        matching requests (None: until changed).  *delay* is the sleep of "slow" and the
        stall of "slow_body" (0 means: stall until the client gives up or the proxy stops).
        """
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        with self._lock:
            self._fault = None if kind is None else _Fault(kind, path_contains, times, delay)

    def clear_fault(self) -> None:
        self.set_fault(None)

    def count(self, method: str = "GET", path_contains: str = "") -> int:
        """How many requests with *method* and a path containing *path_contains* arrived."""
        with self._lock:
            return sum(1 for m, p in self._seen if m == method and path_contains in p)

    def reset_counts(self) -> None:
        with self._lock:
            self._seen.clear()

    # --- used by the handler --------------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record(self, method: str, path: str) -> _Fault | None:
        """Count the request and return the fault to apply to it (consuming one of times)."""
        with self._lock:
            self._seen.append((method, path))
            fault = self._fault
            if fault is None or not fault.matches(path):
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._fault = None
            return fault


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up (timeouts, killed processes) are normal here, not errors."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    """One request: count it, apply the current fault, otherwise forward it upstream."""

    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        self.proxy._track(self.connection, add=False)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # quiet: tests assert on counts, not on access logs

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        body = self._read_request_body()
        fault = self.proxy._record(self.command, self.path)
        kind = fault.kind if fault else None
        if kind == "refuse":
            self._abort(rst=True)
            return
        if kind in ("500", "503", "404"):
            self._send_status(int(kind))
            return
        if kind == "slow":
            self.proxy._stopping.wait(fault.delay)  # type: ignore[union-attr]
        try:
            status, reason, headers, payload = self._forward(body)
        except OSError as exc:
            self._send_status(502, f"upstream failed: {exc}")
            return
        if kind in ("slow_body", "reset", "truncate", "corrupt") and self.command != "HEAD":
            self._send_faulty(fault, status, reason, headers, payload)  # type: ignore[arg-type]
            return
        self._send(status, reason, headers, payload)

    # --- forwarding -----------------------------------------------------------------------

    def _read_request_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.proxy.upstream_host, self.proxy.upstream_port,
                                          timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
            return response.status, response.reason, kept, payload
        finally:
            conn.close()

    def _send_headers(self, status: int, reason: str, headers: list[tuple[str, str]],
                      length: int) -> None:
        self.send_response(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]],
              payload: bytes) -> None:
        self._send_headers(status, reason, headers, len(payload))
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _send_status(self, status: int, message: str = "") -> None:
        payload = (message or f"fault proxy: injected HTTP {status}").encode() + b"\n"
        self._send(status, http.client.responses.get(status, ""), [
            ("Content-Type", "text/plain")], payload)

    # --- faults ---------------------------------------------------------------------------

    def _send_faulty(self, fault: _Fault, status: int, reason: str,
                     headers: list[tuple[str, str]], payload: bytes) -> None:
        half = len(payload) // 2
        self._send_headers(status, reason, headers, len(payload))
        if fault.kind == "corrupt":
            self.wfile.write(_flip_bytes(payload))
            self.wfile.flush()
            return
        self.wfile.write(payload[:half])
        self.wfile.flush()
        if fault.kind == "slow_body":
            self.proxy._stopping.wait(fault.delay or 3600)
            self._abort(rst=False)
        elif fault.kind == "reset":
            time.sleep(0.05)  # let the first half reach the client before the RST
            self._abort(rst=True)
        else:  # truncate: a clean FIN after half of the promised bytes
            self._abort(rst=False)

    def _abort(self, *, rst: bool) -> None:
        """Close the client connection now, with a TCP RST when *rst* (SO_LINGER 0)."""
        self.close_connection = True
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # The socket closes for real only when its makefile() reader is closed too;
                # socketserver's later shutdown/close of the closed socket are harmless.
                self.rfile.close()
                sock.close()
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _flip_bytes(payload: bytes) -> bytes:
    """Same length, a few bytes inverted (first, middle, last): a sha1 mismatch, nothing else."""
    data = bytearray(payload)
    for pos in {0, len(data) // 2, len(data) - 1} if data else ():
        data[pos] ^= 0xFF
    return bytes(data)
