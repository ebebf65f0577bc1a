"""A test-only CRDS server that answers from a server-info snapshot and serves no files.

Real HTTP on 127.0.0.1, real JSON-RPC envelopes: `get_server_info` returns the snapshot
(a real `config/<obs>/server_config`, e.g. the 1,672-file Roman catalog) with its download
URLs pointed at this server, every other RPC is an error envelope, and every file GET is
answered 404 and counted, so a test can prove that nothing was downloaded.
"""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class CatalogServer:
    """Serves *info* (a server info dict) on a free loopback port until `stop()`."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.downloads: list[str] = []
        self.rpcs: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                method = body.get("method")
                outer.rpcs.append(str(method))
                if method == "get_server_info":
                    answer = {"jsonrpc": "1.0", "id": body.get("id"), "error": None,
                              "result": outer.info}
                else:
                    message = f"ServiceError: {method!r} is not offered by this test server"
                    answer = {"jsonrpc": "1.0", "id": body.get("id"), "result": None,
                              "error": {"name": "ServiceError", "code": 500, "data": None,
                                        "message": message}}
                self._send(200, json.dumps(answer).encode())

            def do_GET(self) -> None:  # noqa: N802
                outer.downloads.append(self.path)
                self._send(404, b"this test server serves no files\n")

            do_HEAD = do_GET  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        obs = info["observatory"]
        self.info = dict(info)
        for field, kind in (("mapping_url", "mappings"), ("reference_url", "references"),
                            ("config_url", "config")):
            self.info[field] = {obs: f"{self.url}/unchecked_get/{kind}/{obs}/"}
        self.info.pop("pickle_url", None)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def read_snapshot(path: Path) -> dict[str, Any]:
    """A server_config file (a Python literal, as crds writes it)."""
    return ast.literal_eval(path.read_text())


@contextmanager
def catalog_server(info: dict[str, Any]) -> Iterator[CatalogServer]:
    server = CatalogServer(info)
    try:
        yield server
    finally:
        server.stop()
