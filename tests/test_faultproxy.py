"""The fault-injecting proxy itself: forwarding, counting and every fault kind.

The upstream here is a tiny stdlib HTTP server (real sockets on 127.0.0.1) so these tests
stay fast and independent of `crds-fs serve`; the cache tests put the proxy in front of the
real server.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.faultproxy import FaultProxy

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, recognisable


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/host"):
            body = json.dumps({"host": self.headers.get("Host")}).encode()
        else:
            body = PAYLOAD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"echo": data.decode(), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as running:
        yield running


def test_forwards_get_post_and_host_header(proxy: FaultProxy) -> None:
    assert requests.get(proxy.url + "/data", timeout=5).content == PAYLOAD
    answer = requests.post(proxy.url + "/json/", data=b"hello", timeout=5).json()
    assert answer == {"echo": "hello", "path": "/json/"}
    # The upstream sees the proxy's address, so URLs it builds point back at the proxy.
    host = requests.get(proxy.url + "/host", timeout=5).json()["host"]
    assert host == f"127.0.0.1:{proxy.port}"


def test_counts_by_method_and_path(proxy: FaultProxy) -> None:
    for _ in range(3):
        requests.get(proxy.url + "/files/a", timeout=5)
    requests.get(proxy.url + "/files/b", timeout=5)
    requests.post(proxy.url + "/json/", data=b"{}", timeout=5)
    assert proxy.count("GET") == 4
    assert proxy.count("GET", "/files/a") == 3
    assert proxy.count("POST", "/json/") == 1
    assert proxy.count("POST", "/files/") == 0
    proxy.reset_counts()
    assert proxy.count("GET") == 0


def test_refuse_closes_without_answer(proxy: FaultProxy) -> None:
    proxy.set_fault("refuse")
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.url + "/data", timeout=5)
    assert proxy.count("GET", "/data") == 1


@pytest.mark.parametrize("status", [500, 503, 404])
def test_status_faults(proxy: FaultProxy, status: int) -> None:
    proxy.set_fault(str(status), path_contains="/data")
    assert requests.get(proxy.url + "/data", timeout=5).status_code == status
    # Paths that do not match pass through.
    assert requests.get(proxy.url + "/other", timeout=5).status_code == 200


def test_times_limits_the_fault(proxy: FaultProxy) -> None:
    proxy.set_fault("503", times=2)
    codes = [requests.get(proxy.url + "/data", timeout=5).status_code for _ in range(3)]
    assert codes == [503, 503, 200]


def test_slow_exceeds_client_read_timeout(proxy: FaultProxy) -> None:
    proxy.set_fault("slow", delay=2.0, times=1)
    with pytest.raises(requests.ReadTimeout):
        requests.get(proxy.url + "/data", timeout=(2, 0.3))


def test_slow_body_stalls_after_headers(proxy: FaultProxy) -> None:
    proxy.set_fault("slow_body", delay=5.0)
    response = requests.get(proxy.url + "/data", timeout=(2, 0.3), stream=True)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(PAYLOAD)
    with pytest.raises(requests.ConnectionError):  # urllib3 read timeout mid-body
        b"".join(response.iter_content(65536))
    response.close()


def test_reset_mid_body(proxy: FaultProxy) -> None:
    proxy.set_fault("reset")
    response = requests.get(proxy.url + "/data", timeout=5, stream=True)
    assert response.status_code == 200
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        b"".join(response.iter_content(65536))


def test_truncate_sends_half_then_fin(upstream: str, proxy: FaultProxy) -> None:
    proxy.set_fault("truncate")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(proxy.url + "/data", timeout=5)
    # Raw view: the promised length is the full one, the bytes received are half of it.
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/data")
    response = conn.getresponse()
    assert int(response.getheader("Content-Length")) == len(PAYLOAD)
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert len(info.value.partial) == len(PAYLOAD) // 2
    conn.close()


def test_corrupt_keeps_length_changes_bytes(proxy: FaultProxy) -> None:
    proxy.set_fault("corrupt", path_contains="/data")
    body = requests.get(proxy.url + "/data", timeout=5).content
    assert len(body) == len(PAYLOAD)
    assert hashlib.sha1(body).digest() != hashlib.sha1(PAYLOAD).digest()
    proxy.clear_fault()
    assert requests.get(proxy.url + "/data", timeout=5).content == PAYLOAD


def test_unknown_kind_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        proxy.set_fault("explode")
