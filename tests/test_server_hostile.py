"""`crds-fs serve` against hostile folders and hostile clients (issue 9, defects 4, 5, 9, 10).

Every test runs a real server subprocess on 127.0.0.1, asserts the bounded outcome, and
checks that the server still answers other clients afterwards.  Bounds on time are generous
("answers within 20 s, not hangs").
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from crds_fs.client.payload import crds_decode
from tests.helpers import TINY_REFERENCES, ServerProcess, make_tiny_root

#: a log line of `crds-fs serve`: timestamp, program[pid], level, logger
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} crds-fs\[\d+\] [A-Z]+ \S+: ")


def rpc(url: str, method: str, *params: object, timeout: float = 20) -> dict:
    body = {"jsonrpc": "1.0", "method": method, "params": list(params), "id": 1}
    response = requests.post(url + "/json/", json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def result(url: str, method: str, *params: object) -> object:
    answer = rpc(url, method, *params)
    assert answer["error"] is None, answer
    return crds_decode(answer["result"])


def assert_still_serving(server: ServerProcess) -> None:
    """Another client gets a correct answer and a correct download, promptly."""
    assert result(server.url, "get_default_context", "hst", None) == "hst_0001.pmap"
    response = requests.get(server.url + "/unchecked_get/references/hst/aaa00001j_bia.fits",
                            timeout=20)
    assert response.status_code == 200
    assert response.content == TINY_REFERENCES["aaa00001j_bia.fits"]


def fd_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: the server process gets at most *limit* file descriptors."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: a server over a fresh tiny root (root at tmp_path/root); stopped after."""
    started: list[ServerProcess] = []

    def _start(*extra: str, preexec_fn: Callable[[], None] | None = None,
               prepare: Callable[[Path], None] | None = None) -> ServerProcess:
        root = tmp_path / "root"
        if not root.exists():
            make_tiny_root(root)
        if prepare is not None:
            prepare(root)
        server = ServerProcess(root, "--index", str(tmp_path / f"index{len(started)}"),
                               *extra, log_dir=tmp_path, preexec_fn=preexec_fn)
        server.start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def many_sockets() -> Iterator[list[socket.socket]]:
    """A list the test fills with client sockets; all closed at teardown (fd limit raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def replace_keeping_dir_mtime(path: Path, make: Callable[[Path], None]) -> None:
    """Replace *path* by what *make* creates, then put the folder's mtime back (so only a
    check at open time can notice)."""
    folder = path.parent
    before = folder.stat()
    path.unlink()
    make(path)
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert folder.stat().st_mtime_ns == before.st_mtime_ns


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes *sock* (EOF or reset) within *within* seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


# --- defect 4: files swapped after listing --------------------------------------------------


def test_symlink_swapped_in_for_a_served_file_is_not_followed_out_of_root(
        start, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root's secret outside ROOT\n")
    server = start("--rescan-interval", "3600")
    name = "aaa00001j_bia.fits"
    path = tmp_path / "root/references/hst" / name
    assert requests.get(f"{server.url}/unchecked_get/references/hst/{name}",
                        timeout=20).status_code == 200
    replace_keeping_dir_mtime(path, lambda p: p.symlink_to(secret))

    response = requests.get(f"{server.url}/unchecked_get/references/hst/{name}", timeout=20)
    assert response.status_code == 404 and b"secret" not in response.content
    info = result(server.url, "get_file_info_map", "hst", [name], ["sha1sum", "size"])
    assert info == {name: "NOT FOUND"}  # never the secret's size or sha1
    assert hashlib.sha1(secret.read_bytes()).hexdigest() not in server.log()
    assert f"not serving {path}: it points outside" in server.log()
    # Other files and clients are unaffected.
    other = requests.get(server.url + "/unchecked_get/references/hst/ddd00004j_drk.fits",
                         timeout=20)
    assert other.content == TINY_REFERENCES["ddd00004j_drk.fits"]
    assert result(server.url, "get_default_context", "hst", None) == "hst_0001.pmap"


def test_symlink_inside_root_is_still_served(start, tmp_path: Path) -> None:
    """Mirrors link files within ROOT: the open-time check must not refuse those."""
    def prepare(root: Path) -> None:
        (root / "references/hst/eee00005j_bia.fits").symlink_to(
            root / "references/hst/aaa00001j_bia.fits")

    server = start(prepare=prepare)
    response = requests.get(server.url + "/unchecked_get/references/hst/eee00005j_bia.fits",
                            timeout=20)
    assert response.status_code == 200
    assert response.content == TINY_REFERENCES["aaa00001j_bia.fits"]


def test_fifo_in_place_of_a_served_file_blocks_nothing(start, tmp_path: Path) -> None:
    server = start("--rescan-interval", "3600")
    name = "ccc00003j_drk.fits"
    path = tmp_path / "root/references/hst" / name
    replace_keeping_dir_mtime(path, lambda p: os.mkfifo(p))

    outcomes: dict[str, object] = {}

    def ask(key: str, call: Callable[[], object]) -> None:
        try:
            outcomes[key] = call()
        except Exception as exc:  # recorded, asserted below
            outcomes[key] = exc

    calls = {
        "download": lambda: requests.get(
            f"{server.url}/unchecked_get/references/hst/{name}", timeout=20).status_code,
        "info": lambda: result(server.url, "get_file_info_map", "hst", [name], ["size"]),
        "other": lambda: result(server.url, "get_default_context", "hst", None),
    }
    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert time.monotonic() - started < 25, "a request waited on the FIFO"
    assert outcomes == {"download": 404, "info": {name: "NOT FOUND"},
                        "other": "hst_0001.pmap"}
    assert "it is not a regular file (a FIFO)" in server.log()
    assert_still_serving(server)


# --- defect 5: slow clients and file descriptors ---------------------------------------------


HALF_HEAD = b"POST /json/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"
HALF_BODY = b"POST /json/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"me"


def open_slow_clients(port: int, count: int, sockets: list[socket.socket],
                      body_every: int = 6) -> None:
    """*count* connections each sending half a request (every *body_every*-th sends its
    whole head and half a body), then nothing."""
    for i in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        sockets.append(sock)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(HALF_BODY if i % body_every == 0 else HALF_HEAD)
        except OSError:
            pass  # refused or reset by the server: that is its defence working


def test_slow_clients_do_not_exhaust_file_descriptors(start, many_sockets) -> None:
    server = start("-q", "--header-timeout", "5", "--body-timeout", "5",
                   preexec_fn=fd_limit(256))
    open_slow_clients(server.port, 300, many_sockets)
    # Legitimate clients are answered while the 300 slow ones are still connected.
    started = time.monotonic()
    for _ in range(5):
        assert result(server.url, "get_default_context", "hst", None) == "hst_0001.pmap"
    assert time.monotonic() - started < 20
    assert_still_serving(server)
    # The slow connections do not stay: each is closed by the server within the timeouts.
    still_open = [s for s in many_sockets[-20:] if not closed_by_server(s, 15)]
    assert not still_open
    log = server.log()
    # Under heavy load asyncio may still hit EMFILE in one accept burst before the guard
    # closes the excess; then it is one rate-limited line, never a traceback flood.
    assert "Traceback" not in log and log.count("Too many open files") <= 3
    assert len(log) < 20_000
    assert_still_serving(server)


def test_out_of_descriptors_is_logged_once_per_interval_and_recovers(
        start, many_sockets) -> None:
    # A connection limit above the descriptor limit: accept() does run out of descriptors.
    server = start("-q", "--max-connections", "1000", "--header-timeout", "3",
                   preexec_fn=fd_limit(128))
    open_slow_clients(server.port, 300, many_sockets, body_every=10**9)
    time.sleep(2)
    log = server.log()
    assert "Too many open files" in log
    assert len(log) < 20_000, f"{len(log)} bytes of log in 2 s"
    assert log.count("Too many open files") <= 3
    assert "at most one such line per 10s" in log
    # Once the header timeout has closed the slow connections, everyone is served again.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert_still_serving(server)
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert len(server.log()) < 40_000
    server.stop()  # shutting down with accept() retries pending logs no flood either
    assert len(server.log()) < 40_000


def test_header_body_and_idle_timeouts_close_connections(start) -> None:
    server = start("--header-timeout", "1", "--body-timeout", "1")
    idle, head, body = (socket.create_connection(("127.0.0.1", server.port)) for _ in range(3))
    try:
        head.sendall(HALF_HEAD)
        body.sendall(HALF_BODY)
        assert closed_by_server(idle, 15)
        assert closed_by_server(head, 15)
        body.settimeout(15)
        answer = body.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"RequestTimeout" in answer
        assert closed_by_server(body, 15)
    finally:
        for sock in (idle, head, body):
            sock.close()
    # A keep-alive client that completes its requests is not cut off between them.
    with requests.Session() as session:
        for _ in range(3):
            response = session.post(server.url + "/json/", timeout=20, json={
                "jsonrpc": "1.0", "method": "get_default_context", "params": ["hst"], "id": 1})
            assert response.json()["result"] == "hst_0001.pmap"
    assert "closed 1 connection(s) sending no complete request within 1s" in server.log() \
        or "closed 2 connection(s) sending no complete request within 1s" in server.log()
    assert_still_serving(server)


def test_connection_limit_evicts_idle_connections_for_new_clients(start, many_sockets) -> None:
    server = start("--max-connections", "10", "--header-timeout", "60")
    for _ in range(30):
        many_sockets.append(socket.create_connection(("127.0.0.1", server.port)))
    started = time.monotonic()
    assert_still_serving(server)  # served at once, not after the 60 s header timeout
    assert time.monotonic() - started < 20
    # The oldest idle connections were closed to make room.
    assert closed_by_server(many_sockets[0], 10)


def test_when_every_connection_is_busy_new_ones_get_503(start, many_sockets) -> None:
    server = start("--max-connections", "3", "--body-timeout", "4")
    for _ in range(3):  # each inside the app, waiting for the rest of its body
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(HALF_BODY)
        many_sockets.append(sock)
    time.sleep(0.5)
    response = requests.get(server.url + "/", timeout=20)
    assert response.status_code == 503 and "too many connections" in response.text
    assert "all 3 connections (--max-connections) have a request in progress" in server.log()
    assert requests.get(server.url + "/", timeout=20).status_code == 503
    assert server.log().count("refusing connections (503)") == 1  # rate-limited
    for sock in many_sockets:  # bounded: the body timeout frees them
        assert closed_by_server(sock, 20)
    assert_still_serving(server)


def test_client_that_stops_reading_is_dropped(start, tmp_path: Path) -> None:
    def prepare(root: Path) -> None:
        with open(root / "references/hst/big00001j_drk.fits", "wb") as handle:
            handle.truncate(64 * 1024 * 1024)

    server = start("--send-timeout", "1", prepare=prepare)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sock.sendall(b"GET /unchecked_get/references/hst/big00001j_drk.fits HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\n\r\n")
        time.sleep(6)  # read nothing: the server gives up after --send-timeout
        received = 0
        sock.settimeout(15)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        assert received < 64 * 1024 * 1024
    finally:
        sock.close()
    assert "not reading their response for 1s" in server.log()
    assert_still_serving(server)


# --- defect 9: broken and hostile mappings ---------------------------------------------------


BROKEN_MAPPINGS = {
    "hst_acs_junkfile_0001.rmap": "header = {'instrument': 'ACS'\nselector = Match({{{{\n",
    "hst_acs_negfile_0001.rmap": "header = {}\nselector = " + "-" * 200_000 + "1\n",
    "hst_acs_sumfile_0001.rmap": "header = {}\nselector = " + "+".join(["1"] * 200_000),
    # under the parser's 200-bracket limit, but a tree over 250 levels deep
    "hst_acs_deepfile_0001.rmap": ("header = {'instrument': " + "[" * 150 + "]" * 150
                                   + "}\nselector = " + "f(" * 150 + "a" + ".b" * 100
                                   + ")" * 150),
    "hst_acs_binfile_0001.rmap": "header = {}\nselector = '\udcff'",
}


def test_one_broken_rmap_breaks_only_its_own_info(start) -> None:
    def prepare(root: Path) -> None:
        for name, text in BROKEN_MAPPINGS.items():
            (root / "mappings/hst" / name).write_bytes(text.encode("utf-8", "surrogateescape"))

    server = start(prepare=prepare)
    everything = result(server.url, "get_file_info_map", "hst", None, None)
    assert everything["aaa00001j_bia.fits"]["instrument"] == "acs"
    assert everything["aaa00001j_bia.fits"]["filekind"] == "biasfile"
    assert everything["hst_acs_biasfile_0001.rmap"]["filekind"] == "biasfile"
    for name in BROKEN_MAPPINGS:
        assert everything[name]["instrument"] == "" and everything[name]["size"]
    info = result(server.url, "get_file_info", "hst_0001.pmap", "ccc00003j_drk.fits")
    assert info["filekind"] == "darkfile"
    # Asking for a broken mapping's closure is a clear error naming it, not InternalError.
    for name, words in [("hst_acs_negfile_0001.rmap", "nests expressions too deeply"),
                        ("hst_acs_sumfile_0001.rmap", "nests expressions too deeply"),
                        ("hst_acs_deepfile_0001.rmap", "deeper than 200 levels"),
                        ("hst_acs_junkfile_0001.rmap", "not valid mapping syntax"),
                        ("hst_acs_binfile_0001.rmap", "not UTF-8")]:
        error = rpc(server.url, "get_reference_names", name)["error"]
        assert error["name"] == "MappingFormatError" or "MappingFormatError" in error["message"] \
            or error["name"] == "ServiceError", error
        assert name in error["message"] and words in error["message"], error
        assert "InternalError" not in error["message"] and "MemoryError" not in error["message"]
    for _ in range(2):  # again: the failure is cached, the warning logged once per file
        result(server.url, "get_file_info_map", "hst", None, None)
    log = server.log()
    for name in BROKEN_MAPPINGS:
        assert log.count(f"ignoring mapping {server.root / 'mappings/hst' / name}") == 1, name
    assert "Traceback" not in log and "InternalError" not in log
    assert_still_serving(server)


# --- defect 10: hostile JSON and log forging -------------------------------------------------


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deeply_nested_json_is_a_json_rpc_error(start, depth: int) -> None:
    server = start()
    body = ('{"jsonrpc": "1.0", "method": "get_file_info_map", "id": 1, "params": '
            + "[" * depth + "]" * depth + "}")
    for _ in range(3):
        response = requests.post(server.url + "/json/", data=body, timeout=20)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["name"] == "ParseError" and "nested deeper than 64 levels" in error["message"]
    log = server.log()
    assert "Traceback" not in log and "RecursionError" not in log
    assert_still_serving(server)


def test_json_at_the_depth_limit_is_still_answered(start) -> None:
    server = start()
    params = "[" * 62 + "]" * 62  # 63 levels with the envelope
    body = '{"jsonrpc": "1.0", "method": "get_server_info", "id": 1, "params": ' + params + "}"
    answer = requests.post(server.url + "/json/", data=body, timeout=20).json()
    assert "takes parameters" in answer["error"]["message"]  # reached the method


def test_request_data_cannot_forge_log_lines(start) -> None:
    server = start()
    forged = "x\n2026-01-01 00:00:00,000 crds-fs[1] ERROR crds_fs.server: FORGED\r\x1b[2J"
    rpc(server.url, "get_file_info", "hst_0001.pmap", forged)
    rpc(server.url, forged)
    rpc(server.url, "list_references", forged, forged)
    requests.post(server.url + "/json/" + "%0aFORGED", data=b"{", timeout=20)
    requests.get(server.url + "/unchecked_get/references/hst/%0aFORGED", timeout=20)
    assert_still_serving(server)
    lines = server.log().splitlines()
    assert any("FORGED" in line for line in lines)
    for line in lines:
        assert "\x1b" not in line and "\r" not in line
        if "FORGED" in line:
            assert LOG_LINE.match(line) and "FORGED" not in line[:80], line
    for line in lines:
        assert LOG_LINE.match(line) or line.startswith(("crds-fs serve:", "    ")), line


# --- the pieces on their own (no server) -----------------------------------------------------


def test_scanner_bounds_without_a_server() -> None:
    from crds_fs.engine import MAX_MAPPING_CHARS
    from crds_fs.errors import MappingFormatError
    from crds_fs.server.closure import scan_mapping

    for name, text in BROKEN_MAPPINGS.items():
        if "\udcff" in text:
            continue
        with pytest.raises(MappingFormatError, match=re.escape(name)):
            scan_mapping(text, name)
    with pytest.raises(MappingFormatError, match="over the limit"):
        scan_mapping("header = {}\n#" + "x" * MAX_MAPPING_CHARS, "big.rmap")
    refs = scan_mapping("header = {'instrument': 'ACS'}\nselector = Match({('A',): 'x.fits'})",
                        "ok.rmap")
    assert refs.names == ("x.fits",) and refs.header == {"instrument": "ACS"}


def test_log_formatter_and_flood_filter_without_a_server() -> None:
    import logging

    from crds_fs.server.logs import RateLimitFilter, SafeFormatter

    record = logging.LogRecord("crds_fs.server", logging.INFO, __file__, 1,
                               "value %r then %s", ("a\nb", "c\nFORGED\r\x1b"), None)
    line = SafeFormatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO value 'a\\nb' then c\\nFORGED\\r\\x1b" and "\n" not in line

    now = [0.0]
    flood = RateLimitFilter(interval=10, clock=lambda: now[0])

    def emfile() -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            import sys
            return logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                     "socket.accept() out of system resource\nsocket: <fd=7>",
                                     None, sys.exc_info())

    passed = [r for r in (emfile() for _ in range(1000)) if flood.filter(r)]
    assert len(passed) == 1 and passed[0].exc_info is None
    assert "Too many open files" in passed[0].getMessage()
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "something else", None,
                              None)
    assert flood.filter(other)  # another kind is not silenced
    now[0] = 11.0
    record = emfile()
    assert flood.filter(record) and "(999 more like it" in record.getMessage()
