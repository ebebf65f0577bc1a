"""`crds-fs serve` as a subprocess on 127.0.0.1: hostile input, downloads, freshness, shutdown.

Requests with hand-made paths go through http.client, which sends the path exactly as
written (requests/urllib3 would normalise '..' segments away before they reach the server).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from crds_fs.client.payload import crds_decode
from tests.helpers import (
    TINY_REFERENCES,
    ServerProcess,
    free_port,
    make_tiny_root,
    start_tiny_server,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_tiny_server(tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


def rpc(url: str, method: str, *params: object, request_id: object = 1) -> dict:
    body = {"jsonrpc": "1.0", "method": method, "params": list(params), "id": request_id}
    response = requests.post(url + "/json/", json=body, timeout=10)
    assert response.status_code == 200
    return response.json()


def result(url: str, method: str, *params: object) -> object:
    answer = rpc(url, method, *params)
    assert answer["error"] is None, answer
    return crds_decode(answer["result"])


def raw_get(port: int, path: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def assert_still_serving(server: ServerProcess) -> None:
    assert result(server.url, "get_default_context", "hst", None) == "hst_0001.pmap"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --- JSON-RPC envelope ----------------------------------------------------------------------


def test_envelope_shape_and_id_echo(tiny: ServerProcess) -> None:
    for request_id in (1, "myprog-14.0.3-abc-00000001", None):
        answer = rpc(tiny.url, "get_default_context", "hst", "latest", request_id=request_id)
        assert answer == {"jsonrpc": "1.0", "id": request_id, "error": None,
                          "result": "hst_0001.pmap"}


def test_any_path_under_json_routes_on_body(tiny: ServerProcess) -> None:
    body = {"jsonrpc": "1.0", "method": "get_default_context", "params": ["hst"], "id": "x"}
    for path in ("/json", "/json/", "/json/get_default_context/x-00000001/",
                 "/json/some/other/thing"):
        answer = requests.post(tiny.url + path, data=json.dumps(body), timeout=10).json()
        assert answer["result"] == "hst_0001.pmap", path


def test_unknown_method_and_bad_params(tiny: ServerProcess) -> None:
    answer = rpc(tiny.url, "drop_all_tables")
    assert answer["result"] is None
    error = answer["error"]
    assert set(error) == {"name", "code", "data", "message"}
    assert "unknown JSON-RPC method 'drop_all_tables'" in error["message"]
    assert "get_server_info" in error["message"]  # says what exists
    answer = rpc(tiny.url, "get_mapping_names", "a.pmap", "extra")
    assert "takes parameters (context)" in answer["error"]["message"]
    answer = rpc(tiny.url, "list_mappings", "../../etc", "*")
    assert "not served" in answer["error"]["message"]
    assert_still_serving(tiny)


@pytest.mark.parametrize("body, name", [
    (b"{not json", "ParseError"),
    (b"\xff\xfe\x00garbage", "ParseError"),
    (b"[1, 2, 3]", "InvalidRequest"),
    (b'{"params": []}', "InvalidRequest"),
])
def test_malformed_requests(tiny: ServerProcess, body: bytes, name: str) -> None:
    response = requests.post(tiny.url + "/json/", data=body, timeout=10)
    assert response.status_code == 400
    answer = response.json()
    assert answer["result"] is None and answer["error"]["name"] == name
    assert_still_serving(tiny)


def test_huge_body_refused(tiny: ServerProcess) -> None:
    response = requests.post(tiny.url + "/json/", data=b"[" + b"1," * (9 * 1024 * 1024) + b"1]",
                             timeout=30)
    assert response.status_code == 413
    assert "exceeds 16777216 bytes" in response.json()["error"]["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(17):
            yield b" " * (1024 * 1024)

    response = requests.post(tiny.url + "/json/", data=chunked(), timeout=30)
    assert response.status_code == 413
    assert_still_serving(tiny)


def test_get_on_json_and_unknown_urls(tiny: ServerProcess) -> None:
    assert requests.get(tiny.url + "/json/", timeout=10).status_code == 405
    response = requests.get(tiny.url + "/admin", timeout=10)
    assert response.status_code == 404 and "/unchecked_get/" in response.text
    index = requests.get(tiny.url + "/", timeout=10).json()
    assert index["observatories"] == ["hst"] and index["default_observatory"] == "hst"


# --- server info ----------------------------------------------------------------------------


def test_server_info_fields(tiny: ServerProcess) -> None:
    info = result(tiny.url, "get_server_info")
    for key in ("observatory", "operational_context", "edit_context", "versions_context",
                "bad_files_list", "mappings", "context_history", "download_metadata",
                "mapping_url", "reference_url", "config_url", "force_remote_mode",
                "max_bestrefs_per_rpc", "max_headers_per_rpc", "crds_version", "last_synced"):
        assert key in info, key
    assert info["edit_context"] == "hst_0002.pmap"
    assert info["last_synced"] == "2024-01-02 03:04:05.000000"  # from server_config
    assert info["force_remote_mode"] == 0 and info["versions_context"] == ""
    assert info["reference_url"] == {"hst": f"{tiny.url}/unchecked_get/references/hst/"}
    assert info["config_url"] == {"hst": f"{tiny.url}/unchecked_get/config/hst/"}
    metadata = crds_decode(info["download_metadata"])
    assert "server_config" not in metadata  # crds downloads mappings and references only
    assert metadata["aaa00001j_bia.fits"]["size"] == str(len(TINY_REFERENCES["aaa00001j_bia.fits"]))


def test_server_info_without_server_config(serve, tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root", server_config=False)
    server = serve(root, "--index", str(tmp_path / "index"))
    info = result(server.url, "get_server_info")
    assert info["operational_context"] == "hst_0002.pmap"  # newest pmap present
    assert info["bad_files_list"] == []
    assert sorted(entry[1] for entry in info["context_history"]) == ["hst_0001.pmap",
                                                                     "hst_0002.pmap"]
    answer = result(server.url, "get_file_info_map", "hst", ["bbb00002j_bia.fits"],
                    ["blacklisted"])
    assert answer == {"bbb00002j_bia.fits": {"blacklisted": "false"}}


def test_several_observatories(serve, tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    jwst = root / "mappings" / "jwst"
    jwst.mkdir()
    (jwst / "jwst_0001.pmap").write_text((root / "mappings/hst/hst_0001.pmap").read_text())
    server = serve(root, "--index", str(tmp_path / "index"))
    assert result(server.url, "get_server_info")["observatory"] == "hst"  # first by name
    answer = requests.post(server.url + "/jwst/json/get_server_info/1/", timeout=10, json={
        "jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}).json()
    info = crds_decode(answer["result"])
    assert info["observatory"] == "jwst" and info["mappings"] == ["jwst_0001.pmap"]
    assert info["operational_context"] == "jwst_0001.pmap"
    assert set(info["mapping_url"]) == {"hst", "jwst"}
    answer = requests.post(server.url + "/roman/json/", timeout=10, json={
        "jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}).json()
    assert "'roman' is not served" in answer["error"]["message"]
    other = serve(root, "--index", str(tmp_path / "index2"), "--observatory", "jwst")
    assert result(other.url, "get_server_info")["observatory"] == "jwst"


# --- downloads ------------------------------------------------------------------------------


def test_download_headers_range_etag(tiny: ServerProcess) -> None:
    name = "ddd00004j_drk.fits"
    data = TINY_REFERENCES[name]
    path = f"/unchecked_get/references/hst/{name}"
    status, headers, body = raw_get(tiny.port, path)
    assert status == 200 and body == data
    assert headers["content-length"] == str(len(data))
    assert headers["etag"] == f'"{sha1(data)}"'
    status, headers, body = raw_get(tiny.port, path, "HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
    status, headers, body = raw_get(tiny.port, path, headers={"Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000]
    assert headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    status, _, body = raw_get(tiny.port, path, headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, _ = raw_get(tiny.port, path, headers={"Range": f"bytes={len(data) + 5}-"})
    assert status == 416
    status, _, body = raw_get(tiny.port, path, headers={"If-None-Match": f'"{sha1(data)}"'})
    assert status == 304 and body == b""
    status, _, body = raw_get(tiny.port, "/unchecked_get/mappings/hst/hst_0001.pmap")
    assert status == 200 and b"'name' : 'hst_0001.pmap'" in body
    status, _, body = raw_get(tiny.port, "/unchecked_get/config/hst/server_config")
    assert status == 200 and b"hst_0001.pmap" in body


@pytest.mark.parametrize("path", [
    "/unchecked_get/references/hst/../../../../etc/passwd",
    "/unchecked_get/references/hst/..%2f..%2f..%2fetc%2fpasswd",
    "/unchecked_get/references/hst/%2e%2e%2f%2e%2e%2fconfig%2fhst%2fserver_config",
    "/unchecked_get/references/hst/%2e%2e",
    "/unchecked_get/references/hst/..",
    "/unchecked_get/references/hst//etc/passwd",
    "/unchecked_get/references/hst/%2fetc%2fpasswd",
    "/unchecked_get/references/%2e%2e/server_config",
    "/unchecked_get/references/..%2f..%2fconfig/hst/server_config",
    "/unchecked_get/..%2fconfig/hst/server_config",
    "/unchecked_get/references/hst/aaa00001j_bia.fits%00.txt",
    "/unchecked_get/references/hst/.hidden",
    "/unchecked_get/references/hst/aaa00001j_bia.fits/",
    "/unchecked_get/mappings/hst/aaa00001j_bia.fits",  # a reference is not a mapping
    "/unchecked_get/references/jwst/aaa00001j_bia.fits",
    "/unchecked_get/references/hst/nosuchfile.fits",
])
def test_hostile_and_unknown_paths(tiny: ServerProcess, path: str) -> None:
    status, _, body = raw_get(tiny.port, path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"operational_context" not in body
    assert len(body) < 500  # a short explanation, never a file
    assert_still_serving(tiny)


def test_symlink_out_of_root_not_served(serve, tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    secret = tmp_path / "secret.fits"
    secret.write_bytes(b"secret outside the root")
    (root / "references/hst/sneaky_bia.fits").symlink_to(secret)
    server = serve(root, "--index", str(tmp_path / "index"))
    status, _, body = raw_get(server.port, "/unchecked_get/references/hst/sneaky_bia.fits")
    assert status == 404 and b"secret" not in body
    assert "sneaky_bia.fits" not in result(server.url, "list_references", "hst", "*")


# --- freshness ------------------------------------------------------------------------------



def test_small_files_from_memory_and_big_ones_streamed_look_the_same(
        serve, tmp_path: Path) -> None:
    """A whole GET of a file up to INLINE_MAX bytes is answered from memory, bigger ones
    and HEAD/Range are streamed: same bytes, same validators and cache headers."""
    from crds_fs.server.app import INLINE_MAX

    root = make_tiny_root(tmp_path / "root")
    sizes = {"sss00001j_drk.fits": INLINE_MAX, "bbb00001j_drk.fits": INLINE_MAX + 1}
    for number, (name, size) in enumerate(sizes.items()):
        (root / "references/hst" / name).write_bytes(bytes([number + 1]) * size)
    server = serve(root, "--index", str(tmp_path / "index"))
    same = ("etag", "last-modified", "accept-ranges", "cache-control", "content-type",
            "content-length")
    for name, size in sizes.items():
        data = (root / "references/hst" / name).read_bytes()
        path = f"/unchecked_get/references/hst/{name}"
        status, whole, body = raw_get(server.port, path)
        assert status == 200 and body == data and len(body) == size
        assert whole["etag"] == f'"{sha1(data)}"' and whole["accept-ranges"] == "bytes"
        status, head, body = raw_get(server.port, path, "HEAD")
        assert status == 200 and body == b""
        assert {k: whole[k] for k in same} == {k: head[k] for k in same}, name
        status, ranged, body = raw_get(server.port, path, headers={"Range": "bytes=10-19"})
        assert status == 206 and body == data[10:20] and ranged["etag"] == whole["etag"]
    # A file rewritten after indexing is re-hashed before it is answered from memory.
    changed = root / "references/hst/sss00001j_drk.fits"
    changed.write_bytes(b"y" * 100)
    status, headers, body = raw_get(server.port, "/unchecked_get/references/hst/"
                                    "sss00001j_drk.fits")
    assert status == 200 and body == b"y" * 100 and headers["etag"] == f'"{sha1(body)}"'

def test_index_follows_file_changes(serve, tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    index = tmp_path / "index"
    server = serve(root, "--index", str(index), "--rescan-interval", "0")
    name = "aaa00001j_bia.fits"
    path = root / "references/hst" / name

    def info_of(fname: str) -> object:
        return result(server.url, "get_file_info_map", "hst", [fname],
                      ["sha1sum", "size"])[fname]

    def metadata() -> dict:
        return crds_decode(result(server.url, "get_server_info")["download_metadata"])

    assert info_of(name)["sha1sum"] == sha1(TINY_REFERENCES[name])
    # Rewritten in place (the directory's mtime does not change), same size.
    new = TINY_REFERENCES[name].upper()
    path.write_bytes(new)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert info_of(name) == {"sha1sum": sha1(new), "size": str(len(new))}
    assert metadata()[name] == {"sha1sum": sha1(new), "size": str(len(new))}
    status, headers, body = raw_get(server.port, f"/unchecked_get/references/hst/{name}")
    assert body == new and headers["etag"] == f'"{sha1(new)}"'
    # Added and removed files.
    (root / "references/hst/eee00005j_bia.fits").write_bytes(b"new file")
    (root / "references/hst/ccc00003j_drk.fits").unlink()
    refs = result(server.url, "list_references", "hst", "*")
    assert "eee00005j_bia.fits" in refs and "ccc00003j_drk.fits" not in refs
    assert "ccc00003j_drk.fits" not in metadata()
    assert info_of("ccc00003j_drk.fits") == "NOT FOUND"
    status, _, _ = raw_get(server.port, "/unchecked_get/references/hst/ccc00003j_drk.fits")
    assert status == 404
    # A restart finds the digests in the index: nothing is hashed again.
    logged = len(server.log())
    server.restart()
    assert "crds-fs serve:" in server.log()[logged:]
    assert "hashed" not in server.log()[logged:]
    assert metadata()["eee00005j_bia.fits"]["sha1sum"] == sha1(b"new file")


def test_index_on_read_only_root(serve, tmp_path: Path) -> None:
    """ROOT itself is never written: the index lives in --index."""
    root = make_tiny_root(tmp_path / "root")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    server = serve(root, "--index", str(tmp_path / "index"))
    result(server.url, "get_server_info")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert any((tmp_path / "index").iterdir())


# --- process behaviour ----------------------------------------------------------------------


def test_request_log_and_clean_sigterm(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    proc = server.proc
    try:
        rpc(server.url, "nope_method")
        raw_get(server.port, "/unchecked_get/references/hst/aaa00001j_bia.fits")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    log = server.log()
    assert "rpc='nope_method'" in log and "unknown JSON-RPC method" in log
    assert '"GET /unchecked_get/references/hst/aaa00001j_bia.fits" 200 9B' in log
    assert "Traceback" not in log
    # Timestamped like the mount log: "2026-01-02 03:04:05,678 crds-fs[PID] INFO name: ..."
    request_lines = [line for line in log.splitlines() if "rpc='nope_method'" in line]
    assert request_lines and all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} crds-fs\[\d+\] INFO crds_fs\.server: ",
                 line) for line in request_lines), request_lines


def test_sigint_and_bad_root(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(10) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "crds_fs.cli", "serve", str(empty), "--port", str(free_port()),
         "--index", str(tmp_path / "index2")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "no observatory folders" in done.stderr
