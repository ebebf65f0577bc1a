#!/usr/bin/env python
"""A wide-area network model as a TCP forwarding proxy (asyncio): latency and bandwidth caps.

`tc netem` is not available on the benchmark machines, so benchmarks put this proxy between
a client and a server on loopback.  It forwards bytes unchanged (HTTP, keep-alive, anything
over TCP; the Host header is the client's, so a CRDS server's download URLs point back at
the proxy) and shapes them:

* every response's first byte is held back by ``--latency-ms`` (default 50): the first
  bytes the server sends after each request a client sent on that connection;
* each connection carries at most ``--conn-mbps`` MB/s (default 20), all connections
  together at most ``--total-mbps`` MB/s (default 120), in each direction (MB = 10^6 bytes);
* optionally every new connection waits ``--connect-ms`` before it is forwarded (a TCP
  handshake's round trip; default 0).

The caps are token buckets that may go into debt: a chunk is sent, then the sender sleeps
until the bucket is even again, so long-run rates are exact whatever the chunk size.

    python scripts/wanproxy.py --upstream 127.0.0.1:8000 [--listen 127.0.0.1:0]
    # prints "wanproxy: listening on 127.0.0.1:PORT -> 127.0.0.1:8000" once ready

As a library (e.g. from tests): ``proxy = WanProxy("127.0.0.1", 8000).start_in_thread()``,
then ``proxy.port``, ``proxy.stats()``, ``proxy.stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from dataclasses import dataclass


class TokenBucket:
    """A rate limit in bytes/s that may go into debt: `charge(n)` books n bytes and returns
    how many seconds the sender must now pause so the long-run rate is exact."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.level = 0.0  # bytes of credit (negative: debt)
        self.stamp = time.monotonic()
        #: credit kept at most (a short burst), so an idle link does not save up seconds
        self.burst = self.rate * 0.02

    def charge(self, count: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate) - count
        self.stamp = now
        return -self.level / self.rate if self.level < 0 else 0.0


@dataclass
class Stats:
    connections: int = 0
    open: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    responses: int = 0


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (client side or upstream side).

    Reading from it pauses for any of several reasons at once (the peer's write buffer is
    full, a rate cap's debt, a response's latency, the upstream not connected yet); it
    resumes when none is left.
    """

    def __init__(self, link: _Link, *, upstream: bool) -> None:
        self.link = link
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.reasons: set[str] = set()
        self.got_eof = False
        self.bucket = TokenBucket(link.proxy.conn_rate)

    # reading, paused for reasons
    def pause(self, reason: str) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        self.reasons.discard(reason)
        if not self.reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.reasons:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.link.received(self, data)

    def eof_received(self) -> bool:
        self.link.eof(self)
        return True  # keep the other direction open (half close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    def pause_writing(self) -> None:
        self.link.peer(self).pause("backpressure")

    def resume_writing(self) -> None:
        self.link.peer(self).resume("backpressure")


class _Link:
    """A client connection and its upstream connection, shaped in both directions."""

    def __init__(self, proxy: WanProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, upstream=False)
        self.server = _Side(self, upstream=True)
        self.awaiting = False  # a request went up; its response has not started yet
        self.held: bytearray | None = None  # a response's first bytes, waiting out latency
        self.pending_eof = False
        self.closed = False

    def peer(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.client.pause("connect")
        try:
            if self.proxy.connect_delay:
                await asyncio.sleep(self.proxy.connect_delay)
            await loop.create_connection(lambda: self.server, *self.proxy.upstream)
        except OSError:
            self.close()
            return
        self.client.resume("connect")

    def received(self, source: _Side, data: bytes) -> None:
        counters = self.proxy.counters
        if source is self.client:
            self.awaiting = True  # before forwarding: the response cannot overtake it
            counters.bytes_up += len(data)
            self.send(source, data, self.proxy.total_up)
            return
        counters.bytes_down += len(data)
        if self.held is not None:
            self.held += data
            return
        if self.awaiting:
            self.awaiting = False
            counters.responses += 1
            self.held = bytearray(data)
            source.pause("latency")
            asyncio.get_running_loop().call_later(self.proxy.latency, self.release, source)
            return
        self.send(source, data, self.proxy.total_down)

    def release(self, source: _Side) -> None:
        data, self.held = self.held, None
        if data and not self.closed:
            self.send(source, bytes(data), self.proxy.total_down)
        if self.pending_eof:
            self.eof(source)
        source.resume("latency")

    def send(self, source: _Side, data: bytes, total: TokenBucket) -> None:
        target = self.peer(source).transport
        if target is None or target.is_closing():
            return
        target.write(data)
        delay = max(source.bucket.charge(len(data)), total.charge(len(data)))
        if delay > 0:
            source.pause("rate")
            asyncio.get_running_loop().call_later(delay, source.resume, "rate")

    def eof(self, source: _Side) -> None:
        """*source* will send no more: pass the half close on (after held bytes); close the
        link once both directions are done."""
        if source is self.server and self.held is not None:
            self.pending_eof = True
            return
        self.pending_eof = False
        source.got_eof = True
        target = self.peer(source).transport
        if target is not None and not target.is_closing() and target.can_write_eof():
            target.write_eof()
        if self.client.got_eof and self.server.got_eof:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.counters.open -= 1
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.close()


class WanProxy:
    """The proxy: listen, and for each client connection open one to the upstream."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0, latency: float = 0.050, conn_rate: float = 20e6,
                 total_rate: float = 120e6, connect_delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen = (host, port)
        self.latency = latency
        self.conn_rate = conn_rate
        self.connect_delay = connect_delay
        self.total_down = TokenBucket(total_rate)
        self.total_up = TokenBucket(total_rate)
        self.counters = Stats()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- serving ----------------------------------------------------------------------------

    async def serve(self) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def _accept(self) -> _Side:
        self.counters.connections += 1
        self.counters.open += 1
        link = _Link(self)
        task = asyncio.get_running_loop().create_task(link.connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return link.client

    def stats(self) -> dict[str, int]:
        return dict(vars(self.counters))

    # --- running in a background thread (tests, benchmarks in-process) -----------------------

    def start_in_thread(self) -> WanProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            assert self._server is not None
            self._server.close()
            loop.close()

        self._thread = threading.Thread(target=run, name="wanproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("wanproxy did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._thread = None


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--latency-ms", type=float, default=50.0,
                        help="delay of every response's first byte (default 50)")
    parser.add_argument("--conn-mbps", type=float, default=20.0,
                        help="MB/s per connection and direction, 0 = no cap (default 20)")
    parser.add_argument("--total-mbps", type=float, default=120.0,
                        help="MB/s of all connections per direction, 0 = no cap (default 120)")
    parser.add_argument("--connect-ms", type=float, default=0.0,
                        help="delay before each new connection is forwarded (default 0)")
    args = parser.parse_args(argv)
    up_host, up_port = _address(args.upstream)
    host, port = _address(args.listen)
    proxy = WanProxy(up_host, up_port, host=host, port=port, latency=args.latency_ms / 1000,
                     conn_rate=args.conn_mbps * 1e6, total_rate=args.total_mbps * 1e6,
                     connect_delay=args.connect_ms / 1000)

    async def run() -> None:
        server = await proxy.serve()
        print(f"wanproxy: listening on {host}:{proxy.port} -> {up_host}:{up_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        print(f"wanproxy: stopped; {proxy.stats()}", file=sys.stderr, flush=True)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
