"""Protocol client and catalog against real servers on 127.0.0.1.

Most tests talk to `crds-fs serve` over a tiny cache-layout folder.  Protocol corner cases a
healthy server never produces (HTTP 503/404, a server that never answers, legacy server
info) come from small scripted HTTP servers: real sockets, real HTTP, scripted answers.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import diskcache
import pytest
import requests

from crds_fs.client.catalog import Catalog, load_catalog, stored_catalog
from crds_fs.client.payload import crds_encode
from crds_fs.client.rpc import CrdsClient, iter_chunks
from crds_fs.config import Settings
from crds_fs.errors import (
    ConfigError,
    DownloadError,
    OfflineError,
    ProtocolError,
    ServerUnreachableError,
    ServiceError,
)
from tests.helpers import (
    TINY_REFERENCES,
    ServerProcess,
    free_port,
    make_tiny_root,
    start_tiny_server,
)

# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `crds-fs serve` over the tiny root for the read-only tests of this module."""
    server = start_tiny_server(tmp_path_factory.mktemp("client"))
    yield server
    server.stop()


@pytest.fixture
def client(tiny: ServerProcess) -> Iterator[CrdsClient]:
    with CrdsClient(tiny.url, retries=1, backoff=0.05, read_timeout=10) as c:
        yield c


Reply = tuple[int, bytes]


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 whose every answer comes from `reply(method, path,
    body)`; counts requests so tests can tell whether the client retried."""

    def __init__(self, reply: Callable[[str, str, bytes], Reply]) -> None:
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path))
                status, data = reply(self.command, self.path, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def rpc_reply(result: object) -> Callable[[str, str, bytes], Reply]:
    """A scripted JSON-RPC server answering every call with *result*."""
    def reply(method: str, path: str, body: bytes) -> Reply:
        request = json.loads(body)
        answer = {"jsonrpc": "1.0", "id": request["id"], "error": None, "result": result}
        return 200, json.dumps(answer).encode()
    return reply


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --- every RPC ------------------------------------------------------------------------------


def test_server_info_and_download_metadata(client: CrdsClient, tiny: ServerProcess) -> None:
    info = client.get_server_info()
    assert info["observatory"] == "hst"
    assert info["operational_context"] == "hst_0001.pmap"
    assert info["bad_files_list"] == ["bbb00002j_bia.fits"]
    assert info["mapping_url"]["hst"] == f"{tiny.url}/unchecked_get/mappings/hst/"
    assert "crds_encoded" in info["download_metadata"]  # left encoded until asked for
    metadata = client.download_metadata()
    assert set(metadata) == set(TINY_REFERENCES) | {
        "hst_0001.pmap", "hst_0002.pmap", "hst_acs_0001.imap",
        "hst_acs_biasfile_0001.rmap", "hst_acs_darkfile_0001.rmap"}
    for name, data in TINY_REFERENCES.items():
        assert metadata[name] == {"sha1sum": sha1(data), "size": str(len(data))}


def test_default_context(client: CrdsClient) -> None:
    assert client.get_default_context("hst") == "hst_0001.pmap"
    assert client.get_default_context("hst", "latest") == "hst_0001.pmap"
    assert client.get_default_context("hst", "edit") == "hst_0002.pmap"
    with pytest.raises(ServiceError, match="'jwst' is not served"):
        client.get_default_context("jwst")


def test_mapping_and_reference_names(client: CrdsClient) -> None:
    assert client.get_mapping_names("hst_0002.pmap") == [
        "hst_0002.pmap", "hst_acs_0001.imap", "hst_acs_biasfile_0001.rmap",
        "hst_acs_darkfile_0001.rmap"]
    assert client.get_mapping_names("hst_acs_biasfile_0001.rmap") == [
        "hst_acs_biasfile_0001.rmap"]
    assert client.get_reference_names("hst_0001.pmap") == sorted(TINY_REFERENCES)
    assert client.get_mapping_names("hst-edit")[0] == "hst_0002.pmap"
    with pytest.raises(ServiceError, match="hst_0099.pmap"):
        client.get_mapping_names("hst_0099.pmap")


def test_list_mappings_and_references(client: CrdsClient) -> None:
    assert client.list_mappings("hst", "*.pmap") == ["hst_0001.pmap", "hst_0002.pmap"]
    assert client.list_mappings("hst", "*") == sorted(client.server_info["mappings"])
    assert client.list_references("hst", "*_drk.fits") == [
        "ccc00003j_drk.fits", "ddd00004j_drk.fits"]
    assert client.list_references("hst", "nothing*") == []


def test_file_info_map_and_file_info(client: CrdsClient) -> None:
    answer = client.get_file_info_map(
        "hst", ["bbb00002j_bia.fits", "hst_0001.pmap", "missing.fits"],
        ["size", "sha1sum", "state", "blacklisted", "rejected"])
    bad = TINY_REFERENCES["bbb00002j_bia.fits"]
    assert answer["bbb00002j_bia.fits"] == {
        "size": str(len(bad)), "sha1sum": sha1(bad), "state": "archived",
        "blacklisted": "true", "rejected": "false"}
    assert answer["hst_0001.pmap"]["state"] == "operational"
    assert answer["hst_0001.pmap"]["blacklisted"] == "false"
    assert answer["missing.fits"] == "NOT FOUND"
    everything = client.get_file_info_map("hst")
    assert len(everything) == 9
    assert everything["ccc00003j_drk.fits"]["instrument"] == "acs"
    assert everything["ccc00003j_drk.fits"]["filekind"] == "darkfile"
    assert everything["hst_acs_0001.imap"]["type"] == "mapping"
    info = client.get_file_info("hst_0001.pmap", "aaa00001j_bia.fits")
    assert info["name"] == "aaa00001j_bia.fits" and info["type"] == "reference"
    with pytest.raises(ServiceError, match="unknown file info field"):
        client.get_file_info_map("hst", None, ["size", "colour"])
    with pytest.raises(ServiceError, match="not on this server"):
        client.get_file_info("hst_0001.pmap", "zzz.fits")


def test_context_history(client: CrdsClient) -> None:
    history = client.get_context_history("hst")
    assert sorted(entry[1] for entry in history) == ["hst_0001.pmap", "hst_0002.pmap"]
    assert history == sorted(history, key=lambda e: e[0])


def test_bestrefs_methods_reach_the_server(client: CrdsClient) -> None:
    # The answers belong to the engine; here: the calls arrive and bad input is refused.
    with pytest.raises(ServiceError, match="hst_0404.pmap"):
        client.get_best_references("hst_0404.pmap", {"INSTRUME": "ACS"})
    with pytest.raises(ServiceError, match="hst_0404.pmap"):
        client.get_best_references_by_header_map("hst_0404.pmap", {"a": {"INSTRUME": "ACS"}})
    with pytest.raises(ServiceError, match="hst_0404.pmap"):
        client.get_required_parkeys("hst_0404.pmap")
    with pytest.raises(ServiceError, match="--datasets"):
        client.get_dataset_headers_by_id("hst_0001.pmap", ["J8IS01J0Q"])


def test_error_envelope_names_server_and_method(client: CrdsClient, tiny: ServerProcess) -> None:
    with pytest.raises(ServiceError) as caught:
        client.call("no_such_method", 1)
    text = str(caught.value)
    assert tiny.url in text and "no_such_method" in text and "unknown JSON-RPC method" in text
    assert caught.value.server_message.startswith("ServiceError: unknown")
    with pytest.raises(ServiceError, match="takes parameters"):
        client.call("get_mapping_names")


def test_payload_decoding(client: CrdsClient, tiny: ServerProcess) -> None:
    body = {"jsonrpc": "1.0", "method": "list_references", "params": ["hst", "*"], "id": 7}
    raw = requests.post(tiny.url + "/json/", json=body, timeout=10).json()
    assert raw["id"] == 7 and raw["error"] is None
    assert raw["result"]["crds_encoded"] == "1.0"  # the server sent it encoded ...
    assert client.list_references("hst", "*") == sorted(TINY_REFERENCES)  # ... client decoded


def test_from_settings(tiny: ServerProcess) -> None:
    settings = Settings(server_url=tiny.url + "/", read_timeout=7, retries=0)
    with CrdsClient.from_settings(settings) as c:
        assert c.server_url == tiny.url
        assert c.timeout == (5.0, 7.0) and c.retries == 0
        assert c.get_default_context("hst") == "hst_0001.pmap"


# --- downloads ------------------------------------------------------------------------------


def test_file_url_and_open_stream(client: CrdsClient, tiny: ServerProcess) -> None:
    url = client.file_url("ddd00004j_drk.fits", "hst")
    assert url == f"{tiny.url}/unchecked_get/references/hst/ddd00004j_drk.fits"
    assert client.file_url("hst_0001.pmap", "hst").endswith("/mappings/hst/hst_0001.pmap")
    assert client.file_url("server_config", "hst").endswith("/config/hst/server_config")
    data = TINY_REFERENCES["ddd00004j_drk.fits"]
    with client.open_stream(url) as response:
        assert response.status_code == 200
        assert b"".join(iter_chunks(response, 1000)) == data
    with client.open_stream(url, 100, 300) as response:
        assert response.status_code == 206
        assert response.content == data[100:300]
    with client.open_stream(url, len(data) - 5) as response:
        assert response.content == data[-5:]
    with pytest.raises(ProtocolError, match="mapping_url.*'jwst'"):
        client.file_url("jwst_0001.pmap", "jwst")


def test_open_stream_errors(client: CrdsClient, tiny: ServerProcess) -> None:
    missing = f"{tiny.url}/unchecked_get/references/hst/nope.fits"
    with pytest.raises(DownloadError, match=r"nope\.fits.*HTTP 404"):
        client.open_stream(missing)
    dead = f"http://127.0.0.1:{free_port()}/unchecked_get/references/hst/x.fits"
    with pytest.raises(ServerUnreachableError, match=r"x\.fits"):
        client.open_stream(dead)
    with pytest.raises(ValueError):
        client.open_stream(missing, 10, 10)


def test_legacy_unchecked_urls() -> None:
    info = {"observatory": "hst",
            "reference_url": {"unchecked": {"hst": "http://mirror.invalid/refs"}},
            "mapping_url": {"hst": "http://mirror.invalid/maps/"}}
    with ScriptedServer(rpc_reply(info)) as server, CrdsClient(server.url) as c:
        assert c.file_url("a.fits", "hst") == "http://mirror.invalid/refs/a.fits"
        assert c.file_url("b.rmap", "hst") == "http://mirror.invalid/maps/b.rmap"
        with pytest.raises(ProtocolError, match="config_url"):
            c.file_url("server_config", "hst")


# --- transport: retries, timeouts, status codes --------------------------------------------


def test_call_survives_server_restart(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    try:
        with CrdsClient(server.url, retries=6, backoff=0.25, connect_timeout=2) as c:
            assert c.get_default_context("hst") == "hst_0001.pmap"
            server.stop()
            # Back on the same port while the client is still inside its retry window
            # (0.25 + 0.5 + 1 + 2 + 4 + 8 s of backoff).
            restarter = threading.Timer(0.6, server.start)
            restarter.start()
            try:
                assert c.get_mapping_names("hst_0001.pmap")[0] == "hst_0001.pmap"
            finally:
                restarter.join()
            assert "retrying" not in server.log()  # retries are the client's, not logged there
    finally:
        server.stop()


def test_connection_refused_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with CrdsClient(url, retries=2, backoff=0.01) as c:
        with pytest.raises(ServerUnreachableError) as caught:
            c.get_server_info()
    text = str(caught.value)
    assert url in text and "3 attempt(s)" in text and "connection failed" in text


def test_read_timeout_on_hung_server() -> None:
    with SilentServer() as hung, CrdsClient(hung.url, read_timeout=0.3, retries=1,
                                            backoff=0.01) as c:
        with pytest.raises(ServerUnreachableError, match="timed out") as caught:
            c.get_server_info()
        assert hung.url in str(caught.value)
        deadline = time.monotonic() + 5
        while len(hung.accepted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(hung.accepted) == 2  # first attempt + one retry
        with pytest.raises(ServerUnreachableError, match="timed out"):
            c.open_stream(hung.url + "/unchecked_get/references/hst/a.fits")


def test_5xx_retried_then_unreachable() -> None:
    with ScriptedServer(lambda m, p, b: (503, b"busy")) as server, \
            CrdsClient(server.url, retries=2, backoff=0.01) as c:
        with pytest.raises(ServerUnreachableError, match="HTTP 503"):
            c.get_server_info()
        assert len(server.requests) == 3


def test_5xx_then_success() -> None:
    calls: list[int] = []

    def flaky(method: str, path: str, body: bytes) -> Reply:
        calls.append(1)
        if len(calls) < 3:
            return 502, b"bad gateway"
        return rpc_reply("hst_0042.pmap")(method, path, body)

    with ScriptedServer(flaky) as server, CrdsClient(server.url, retries=3, backoff=0.01) as c:
        assert c.get_default_context("hst", "latest") == "hst_0042.pmap"
        assert len(server.requests) == 3


def test_4xx_not_retried() -> None:
    with ScriptedServer(lambda m, p, b: (404, b"<html>not here</html>")) as server, \
            CrdsClient(server.url, retries=3, backoff=0.01) as c:
        with pytest.raises(ProtocolError, match="HTTP 404"):
            c.get_server_info()
        assert len(server.requests) == 1
        with pytest.raises(DownloadError, match="HTTP 404"):
            c.open_stream(server.url + "/unchecked_get/references/hst/a.fits")
        assert len(server.requests) == 2


def test_5xx_with_error_envelope_not_retried() -> None:
    envelope = {"jsonrpc": "1.0", "id": 1, "result": None,
                "error": {"name": "OtherError", "code": 500, "data": None,
                          "message": "OtherError: Invalid version string"}}
    with ScriptedServer(lambda m, p, b: (500, json.dumps(envelope).encode())) as server, \
            CrdsClient(server.url, retries=3, backoff=0.01) as c:
        with pytest.raises(ServiceError, match="Invalid version string"):
            c.get_server_info()
        assert len(server.requests) == 1


def test_4xx_with_envelope_is_service_error(tiny: ServerProcess) -> None:
    # Our server answers a too-large body with 413 and an envelope: the message must show.
    with CrdsClient(tiny.url, retries=3, backoff=0.01) as c:
        with pytest.raises(ServiceError, match="exceeds"):
            c.call("get_file_info_map", "hst", ["x" * 1000] * 20000, None)


def test_not_json_is_protocol_error() -> None:
    with ScriptedServer(lambda m, p, b: (200, b"<html>hello</html>")) as server, \
            CrdsClient(server.url, retries=0) as c:
        with pytest.raises(ProtocolError, match="not JSON"):
            c.get_server_info()
    with ScriptedServer(lambda m, p, b: (200, b"[1, 2]")) as server, \
            CrdsClient(server.url, retries=0) as c:
        with pytest.raises(ProtocolError, match="not a JSON-RPC envelope"):
            c.get_server_info()


# --- catalog --------------------------------------------------------------------------------


def test_load_catalog_online_then_offline(client: CrdsClient, tmp_path: Path) -> None:
    with diskcache.Cache(str(tmp_path / "index")) as index:
        catalog = load_catalog(client, index, "hst")
        assert catalog.source == "server" and len(catalog) == 9
        data = TINY_REFERENCES["ccc00003j_drk.fits"]
        assert catalog.get("ccc00003j_drk.fits") == (len(data), sha1(data))
        assert catalog.get("ccc00003j_drk.fits").size == len(data)
        assert catalog.get("unknown.fits") is None and "unknown.fits" not in catalog
        assert "hst_0001.pmap" in catalog
        assert catalog.mappings() == [
            "hst_0001.pmap", "hst_0002.pmap", "hst_acs_0001.imap",
            "hst_acs_biasfile_0001.rmap", "hst_acs_darkfile_0001.rmap"]
        assert catalog.references() == sorted(TINY_REFERENCES)
        assert catalog.kind("hst_0001.pmap") == "mapping"
        assert catalog.kind("server_config") == "config"
        assert catalog.kind("aaa00001j_bia.fits") == "reference"
        assert "download_metadata" not in catalog.server_info
        assert catalog.operational_context == "hst_0001.pmap"
        assert catalog.bad_files == {"bbb00002j_bia.fits"}
    # A new process (new Cache object) offline finds the same catalog.
    with diskcache.Cache(str(tmp_path / "index")) as index:
        offline = load_catalog(client, index, "hst", offline=True)
        assert offline.source == "index"
        assert dict.fromkeys(offline) == dict.fromkeys(catalog)
        assert offline.get("ccc00003j_drk.fits") == catalog.get("ccc00003j_drk.fits")
        assert offline.server_info == catalog.server_info


def test_load_catalog_falls_back_when_unreachable(client: CrdsClient, tmp_path: Path) -> None:
    dead = CrdsClient(f"http://127.0.0.1:{free_port()}", retries=0)
    with diskcache.Cache(str(tmp_path / "index")) as index:
        with pytest.raises(ServerUnreachableError):
            load_catalog(dead, index, "hst")
        with pytest.raises(OfflineError, match="no hst catalog"):
            load_catalog(dead, index, "hst", offline=True)
        load_catalog(client, index, "hst")
        fallback = load_catalog(dead, index, "hst")
        assert fallback.source == "index" and len(fallback) == 9
        assert stored_catalog(index, "jwst") is None


def test_load_catalog_wrong_observatory(client: CrdsClient, tmp_path: Path) -> None:
    with diskcache.Cache(str(tmp_path / "index")) as index:
        with pytest.raises(ConfigError, match="serves observatory 'hst', not 'jwst'"):
            load_catalog(client, index, "jwst")


def test_catalog_from_file_info_map_when_no_download_metadata(tmp_path: Path) -> None:
    """Servers without download_metadata: the catalog comes from get_file_info_map."""
    records = {"a.fits": {"size": "12", "sha1sum": "AB" * 20},
               "b.rmap": {"size": "3", "sha1sum": "none"},
               "gone.fits": "NOT FOUND"}
    seen: list[dict] = []

    def reply(method: str, path: str, body: bytes) -> Reply:
        request = json.loads(body)
        seen.append(request)
        result = ({"observatory": "hst", "operational_context": "hst_0001.pmap"}
                  if request["method"] == "get_server_info" else crds_encode(records))
        return 200, json.dumps({"jsonrpc": "1.0", "id": request["id"], "error": None,
                                "result": result}).encode()

    with ScriptedServer(reply) as server, CrdsClient(server.url) as c, \
            diskcache.Cache(str(tmp_path / "index")) as index:
        catalog = load_catalog(c, index, "hst")
    assert [r["method"] for r in seen] == ["get_server_info", "get_file_info_map"]
    assert seen[1]["params"] == ["hst", None, ["sha1sum", "size"]]
    assert catalog.get("a.fits") == (12, "ab" * 20)
    assert catalog.get("b.rmap") == (3, "")
    assert "gone.fits" not in catalog


def test_catalog_state_round_trip() -> None:
    catalog = Catalog("hst", {"x.fits": (5, "aa")}, {"observatory": "hst",
                                                     "download_metadata": {"big": 1}},
                      server_url="http://s", fetched_at=12.5)
    again = Catalog.from_state(catalog.to_state())
    assert again.get("x.fits") == (5, "aa") and again.server_url == "http://s"
    assert again.fetched_at == 12.5 and again.server_info == {"observatory": "hst"}


# --- context specs, build context, several observatories ---------------------------------


def test_context_by_date_and_build_context(client: CrdsClient) -> None:
    """The tiny root has no context_history: it is derived from the pmaps' mtimes (both
    written just now), so any date from tomorrow on is in the newest one's era."""
    history = client.get_context_history("hst")
    # oldest first; same mtime: the higher serial number counts as the later context
    assert [e[1] for e in history] == ["hst_0001.pmap", "hst_0002.pmap"]
    assert history[0][0] <= history[1][0] and history[0][0][:2] == "20"
    future = "hst-2999-01-01"
    assert client.get_context_by_date(future, "hst") == history[-1][1]
    assert client.get_context_by_date("hst-acs-2999-01-01T00:00:00") == "hst_acs_0001.imap"
    assert client.get_context_by_date("hst-acs-darkfile-2999-01-01") == (
        "hst_acs_darkfile_0001.rmap")
    with pytest.raises(ServiceError, match="context history starts on"):
        client.get_context_by_date("hst-2001-01-01", "hst")
    with pytest.raises(ServiceError, match="reference type 'flatfile' has no mapping"):
        client.get_context_by_date("hst-acs-flatfile-2999-01-01")  # N/A in the imap
    with pytest.raises(ServiceError, match="not a date-based context spec"):
        client.get_context_by_date("yesterday", "hst")
    assert client.get_build_context("hst", "1.0") == "hst_0001.pmap"  # = operational
    assert client.get_mapping_names(future)[0] == history[-1][1]


def multi_observatory_root(base: Path) -> Path:
    """The tiny HST root plus a one-pmap 'jwst' observatory folder."""
    root = make_tiny_root(base / "root")
    (root / "mappings" / "jwst").mkdir(parents=True)
    (root / "mappings" / "jwst" / "jwst_0001.pmap").write_text(
        "header = {'mapping': 'PIPELINE', 'name': 'jwst_0001.pmap'}\nselector = {}\n")
    return root


def test_client_finds_the_observatory_prefix(tmp_path: Path) -> None:
    root = multi_observatory_root(tmp_path)
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    try:
        with CrdsClient(server.url, observatory="jwst", retries=0) as c:
            assert c.get_server_info()["observatory"] == "jwst"
            assert c.server_url == server.url + "/jwst"
            assert c.get_default_context("jwst") == "jwst_0001.pmap"
        with CrdsClient(server.url, observatory="hst", retries=0) as c:
            assert c.get_server_info()["observatory"] == "hst" and c.server_url == server.url
        with CrdsClient(server.url, retries=0) as c, \
                diskcache.Cache(str(tmp_path / "cat")) as index:
            catalog = load_catalog(c, index, "jwst")
            assert catalog.observatory == "jwst" and catalog.mappings() == ["jwst_0001.pmap"]
            assert catalog.server_url == server.url + "/jwst"
            with pytest.raises(ConfigError, match=r"nor does .*/roman"):
                load_catalog(CrdsClient(server.url, retries=0), index, "roman")
    finally:
        server.stop()
