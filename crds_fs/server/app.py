"""The ASGI app of `crds-fs serve`: JSON-RPC under /json/ and static files under
/unchecked_get/, the two URL families a crds client uses.

Routes:

- ``POST /json/`` and any path below it (crds posts to ``/json/<method>/<id>/``); the method
  comes from the body.  The observatory answered for is the server default (see
  `default_observatory`).
- ``POST /<obs>/json/...``: the same, for observatory <obs>.  With several observatories
  under ROOT, point crds at ``http://HOST:PORT/<obs>``; crds then also guesses the
  observatory from the URL.
- ``GET|HEAD /unchecked_get/{mappings,references,config}/<obs>/<name>``: file downloads with
  Content-Length, ETag (the file's sha1) and Range (206) support, streamed from disk.
  Mappings and references are marked ``Cache-Control: public, max-age=31536000, immutable``
  (a CRDS name never gets new bytes), config/ files ``max-age=60``; JSON-RPC answers and
  errors ``no-cache``.  So a site's standard HTTP cache (nginx, squid; docs/site-cache.md)
  keeps files and never stale answers.
- ``GET /``: a small JSON description of what is served.

JSON-RPC errors are answered with HTTP 200 and an error envelope, because crds' client
turns any HTTP error status into a message without the server's explanation.  Requests the
RPC layer cannot even parse get 400 (bad JSON, or nested deeper than `MAX_JSON_DEPTH`),
408 (body not received within `ServerOptions.body_timeout`) or 413 (body too large), still
with an envelope.  Request data in log lines is always quoted (repr), and
`crds_fs.server.logs.SafeFormatter` escapes whatever else reaches a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..client.names import is_safe_basename
from ..errors import CrdsFsError
from .methods import Env, dispatch, error_name
from .store import DIR_KINDS, FileRecord, ServedRoot

log = logging.getLogger("crds_fs.server")

#: Cache-Control of a mapping or reference whose bytes are the indexed ones (sha1 ETag):
#: CRDS files never change under their name, so HTTP caches may keep them for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
#: Cache-Control of what can change: config/ files (server_config), the index page
CHANGING = "public, max-age=60"
#: Cache-Control of JSON-RPC answers and errors (a missing file may be delivered later)
NO_CACHE = "no-cache"

MAX_BODY = 16 * 1024 * 1024
#: seconds a client may take to send a JSON-RPC request body
BODY_TIMEOUT = 60.0
#: deepest JSON nesting accepted in a request (crds sends at most ~4 levels)
MAX_JSON_DEPTH = 64


@dataclass
class ServerOptions:
    """Settings of one running server (from the `crds-fs serve` command line)."""

    observatory: str | None = None
    datasets: Path | None = None
    public_url: str | None = None
    max_body: int = MAX_BODY
    body_timeout: float = BODY_TIMEOUT


class _BodyTooLarge(Exception):
    pass


class _TooDeep(ValueError):
    pass


class _CheckedFileResponse(FileResponse):
    """A download of a file already opened and checked by `ServedRoot.open_file`.

    Starlette opens by path, so it is given /proc/self/fd/N: reopening that is the very
    file checked (not whatever the name points to by now).  The descriptor is closed when
    the response ends, however it ends.
    """

    # Starlette reads 64 KiB per thread hop; 1 MiB keeps multi-GB downloads fast.
    chunk_size = 1024 * 1024

    def __init__(self, fd: int, path: str, **kwargs: Any) -> None:
        proc_path = f"/proc/self/fd/{fd}"
        super().__init__(proc_path if os.path.exists(proc_path) else path, **kwargs)
        self.fd = fd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


def create_app(store: ServedRoot, options: ServerOptions | None = None,
               guard: Any = None) -> ASGIApp:
    """The complete ASGI application (with one-line-per-request logging).

    *guard*: a `crds_fs.server.guard.ConnectionGuard` to tell when requests are in the app.
    """
    opts = options or ServerOptions()
    server = _Server(store, opts)
    routes = [
        Route("/", server.index, methods=["GET", "HEAD"]),
        Route("/json", server.rpc, methods=["POST"]),
        Route("/json/{rest:path}", server.rpc, methods=["POST"]),
        Route("/{obs}/json/{rest:path}", server.rpc, methods=["POST"]),
        Route("/unchecked_get/{kind}/{obs}/{name}", server.download, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found})
    app.router.redirect_slashes = False  # 'name/' is not a file; say so instead of redirecting
    logged = AccessLog(app)
    return guard.middleware(logged) if guard is not None else logged


class _Server:
    """Request handlers bound to one served folder."""

    def __init__(self, store: ServedRoot, options: ServerOptions) -> None:
        self.store = store
        self.options = options

    def default_observatory(self) -> str | None:
        """--observatory if given, else the only (or alphabetically first) one served."""
        if self.options.observatory:
            return self.options.observatory
        served = self.store.observatories
        return served[0] if served else None

    def base_url(self, request: Request) -> str:
        if self.options.public_url:
            return self.options.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    async def index(self, request: Request) -> Response:
        return JSONResponse({
            "server": "crds-fs serve",
            "observatories": self.store.observatories,
            "default_observatory": self.default_observatory(),
            "json_rpc": self.base_url(request) + "/json/",
        }, headers={"cache-control": CHANGING})

    # --- JSON-RPC -----------------------------------------------------------------------

    async def rpc(self, request: Request) -> Response:
        try:
            async with asyncio.timeout(self.options.body_timeout):
                raw = await _read_body(request, self.options.max_body)
        except _BodyTooLarge:
            return _fail(request, None, _error(
                "RequestTooLarge", 413,
                f"request body exceeds {self.options.max_body} bytes; send fewer items per "
                "call"), status=413)
        except ClientDisconnect:  # closed by the client or by the connection guard
            request.state.rpc_error = "client disconnected before sending the whole request"
            return Response(status_code=400)
        except TimeoutError:
            return _fail(request, None, _error(
                "RequestTimeout", 408,
                f"request body not received within {self.options.body_timeout:g} s "
                "(--body-timeout)"), status=408, headers={"connection": "close"})
        try:
            body = _parse_json(raw)
        except _TooDeep:
            return _fail(request, None, _error(
                "ParseError", -32700,
                f"request JSON is nested deeper than {MAX_JSON_DEPTH} levels"), status=400)
        except (ValueError, UnicodeDecodeError) as exc:
            return _fail(request, None, _error(
                "ParseError", -32700, f"request body is not valid JSON: {exc}"), status=400)
        if not isinstance(body, dict) or "method" not in body:
            return _fail(request, None, _error(
                "InvalidRequest", -32600,
                "request must be a JSON-RPC object with 'method', 'params' and 'id'"),
                status=400)
        request_id, method = body.get("id"), body.get("method")
        request.state.rpc_method = method
        observatory = request.path_params.get("obs") or self.default_observatory()
        if observatory is None or observatory not in self.store.observatories:
            return _fail(request, request_id, _error(
                "ServiceError", 404,
                f"observatory {observatory!r} is not served here; this server has "
                f"{', '.join(self.store.observatories) or 'no observatory folders'}"))
        env = Env(self.store, observatory, self.base_url(request), self.options.datasets)
        try:
            result = await run_in_threadpool(dispatch, env, method, body.get("params"))
            payload = json.dumps(_ok(request_id, result)).encode("utf-8")
        except CrdsFsError as exc:
            return _fail(request, request_id, _error(error_name(exc), 500, str(exc)))
        except Exception as exc:  # keep serving; the log has the traceback
            log.exception("internal error in JSON-RPC %r", method)
            return _fail(request, request_id, _error(
                "InternalError", 500, f"internal server error in {method!r}: "
                f"{type(exc).__name__}: {exc}"))
        return Response(payload, media_type="application/json",
                        headers={"cache-control": NO_CACHE})

    # --- static files -------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        kind_dir = request.path_params["kind"]
        obs = request.path_params["obs"]
        name = request.path_params["name"]
        if not is_safe_basename(name) or not is_safe_basename(obs):
            return PlainTextResponse(f"invalid file name {name!r}: plain names only\n", 400,
                                     headers={"cache-control": NO_CACHE})
        kind = DIR_KINDS.get(kind_dir)
        if kind is None or obs not in self.store.observatories:
            return PlainTextResponse(
                f"no such folder {kind_dir}/{obs}/ on this server\n", 404,
                headers={"cache-control": NO_CACHE})

        # A whole GET of a small file is read in the lookup's own thread hop and answered
        # from memory: streaming costs ~10 thread hops per file, most of the server's CPU
        # for the thousands of small files a sync fetches.  Range, HEAD and revalidation
        # requests take the streaming path.
        whole = (request.method == "GET" and "range" not in request.headers
                 and "if-none-match" not in request.headers)

        def lookup() -> tuple[FileRecord, int, os.stat_result, bytes | None] | None:
            self.store.refresh()
            opened = self.store.open_file(obs, kind, name)
            if opened is None:
                return None
            record, fd, stat = opened
            try:
                body = _read_small(fd, stat) if whole else None
            except OSError:
                os.close(fd)
                raise
            return record, fd, stat, body

        opened = await run_in_threadpool(lookup)
        if opened is None:
            return PlainTextResponse(f"no file {kind_dir}/{obs}/{name} on this server\n", 404,
                                     headers={"cache-control": NO_CACHE})
        record, fd, stat, body = opened
        # A file changed on disk since it was indexed (size/mtime differ) may not match its
        # catalog sha1: no strong ETag then, and no cache may keep it.
        headers = {"cache-control": NO_CACHE, "accept-ranges": "bytes",
                   "last-modified": formatdate(stat.st_mtime, usegmt=True),
                   "etag": f'W/"{stat.st_mtime_ns:x}-{stat.st_size:x}"'}
        if (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns) and record.sha1:
            headers["etag"] = f'"{record.sha1}"'
            headers["cache-control"] = CHANGING if kind_dir == "config" else IMMUTABLE
            if headers["etag"] in _etags(request.headers.get("if-none-match", "")):
                os.close(fd)
                return Response(status_code=304, headers=headers)
        if body is not None:
            os.close(fd)
            return Response(body, headers=headers, media_type="application/octet-stream")
        return _CheckedFileResponse(fd, record.path, stat_result=stat, headers=headers,
                                    media_type="application/octet-stream")


#: the largest file answered from memory (`_read_small`): one streaming chunk, so a
#: connection never holds more memory than a streamed download does
INLINE_MAX = _CheckedFileResponse.chunk_size


def _read_small(fd: int, stat: os.stat_result) -> bytes | None:
    """The whole file behind *fd* when it is at most `INLINE_MAX` bytes and still has the
    size it was checked with; else None (it is then streamed)."""
    if stat.st_size > INLINE_MAX:
        return None
    body = os.pread(fd, stat.st_size + 1, 0)
    return body if len(body) == stat.st_size else None


def _parse_json(raw: bytes) -> Any:
    """json.loads, refusing nesting deeper than MAX_JSON_DEPTH (raises _TooDeep).

    json's own recursion limit turns ~1000 levels into RecursionError; anything deep
    would also endanger repr() and the handlers, hence the explicit, much lower bound.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _TooDeep from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _TooDeep
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (before reading it all) anything over *limit* bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _ok(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "1.0", "id": request_id, "error": None, "result": result}


def _error(name: str, code: int, message: str) -> dict[str, Any]:
    return {"name": name, "code": code, "data": None, "message": f"{name}: {message}"}


def _fail(request: Request, request_id: Any, error: dict[str, Any],
          status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An error envelope; the access log line shows the message."""
    request.state.rpc_error = error["message"]
    body = {"jsonrpc": "1.0", "id": request_id, "result": None, "error": error}
    return JSONResponse(body, status_code=status,
                        headers={"cache-control": NO_CACHE, **(headers or {})})


def _loggable_path(scope: Scope) -> str:
    """The request target as sent (still percent-encoded): no control characters in logs."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.decode("ascii", "backslashreplace")[:500]
    return repr(scope.get("path", ""))[1:-1][:500]


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(
        f"no such URL {request.url.path!r} on this crds-fs server: it answers POST /json/, "
        "POST /<obs>/json/ and GET /unchecked_get/<mappings|references|config>/<obs>/<name>\n",
        status_code=404)


class AccessLog:
    """ASGI middleware: one INFO line per request (status, bytes, time, RPC method)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        seen = {"status": 0, "bytes": 0}

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            method, error = state.get("rpc_method"), state.get("rpc_error")
            log.info("%s:%s \"%s %s\" %d %dB %.1fms%s%s", client[0], client[1],
                     scope["method"], _loggable_path(scope), seen["status"], seen["bytes"],
                     (time.perf_counter() - started) * 1000,
                     f" rpc={method!r}" if method is not None else "",
                     f" error={error[:300]!r}" if error else "")
