"""CRDS JSON-RPC client: one pooled HTTP session, bounded timeouts, retries with backoff.

crds' own client (crds/client/proxy.py) uses urllib with a one-hour timeout and no retries.
A filesystem cannot block a `stat` for an hour, so this client bounds every connect and read,
retries only failures that can heal (connection refused/reset, timeouts, HTTP 5xx) and gives
up at once on answers that will not change (4xx, error envelopes).  Every error names the
server URL and the RPC, so a user can tell a dead server from a bad request.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .. import __version__ as _VERSION
from ..config import Settings
from ..errors import DownloadError, ProtocolError, ServerUnreachableError, ServiceError
from .names import file_kind
from .payload import crds_decode
from .servers import DEFAULT_BACKOFF, DEFAULT_RESET, ServerPool, parse_server_list

log = logging.getLogger(__name__)

T = TypeVar("T")

_URL_FIELDS = {"mapping": "mapping_url", "reference": "reference_url", "config": "config_url"}
#: HTTP statuses worth another attempt: the server (or a proxy in front of it) is busy/broken.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


class _Retryable(Exception):
    """Internal: one attempt failed in a way that another attempt may fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CrdsClient:
    """Talks to CRDS servers (real or `crds-fs serve`); safe to share between threads.

    *server_url* is one URL, a comma-separated list or a list: several servers are a
    primary and its mirrors, with failover between them (see `crds_fs.client.servers`).
    `retries` is the number of extra rounds after the first one; round *n* waits
    ``backoff * 2**(n-1)`` seconds first, and each round tries every server (the one in use
    first).  Timeouts are per socket operation (connect, then each read), as requests
    defines them.

    HTTP proxies: requests honours HTTP_PROXY/HTTPS_PROXY/NO_PROXY from the environment
    (the session keeps `trust_env`); *proxy* (``--proxy`` / CRDS_FS_PROXY) takes precedence
    over them for every URL that NO_PROXY does not exempt.
    """

    def __init__(
        self,
        server_url: str | list[str] | tuple[str, ...],
        *,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        retries: int = 3,
        backoff: float = 0.5,
        pool_size: int = 16,
        observatory: str | None = None,
        proxy: str | None = None,
        failover_backoff: float = DEFAULT_BACKOFF,
        failover_reset: float = DEFAULT_RESET,
    ) -> None:
        """*observatory*: the one wanted; when the server answers for another, its
        ``/<observatory>`` prefix is tried once (see `get_server_info`)."""
        self.pool = ServerPool(parse_server_list(server_url), backoff=failover_backoff,
                               reset_after=failover_reset)
        self.proxy = (proxy or "").strip() or None
        self.observatory = observatory
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.session = requests.Session()
        # Retries are ours (they must cover POST and 5xx); urllib3 must not add its own.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"crds-fs/{_VERSION}"
        self._ids = itertools.count(1)
        self._id_prefix = f"crds-fs-{_VERSION}-{uuid.uuid4()}"
        self._server_info: dict[str, Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CrdsClient:
        """A client configured from CRDS_SERVER_URL / CRDS_FS_* settings."""
        return cls(
            list(settings.server_list),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries=settings.retries,
            backoff=settings.backoff,
            observatory=settings.effective_observatory,
            proxy=settings.proxy,
            failover_backoff=settings.failover_backoff,
            failover_reset=settings.failover_reset,
        )

    @property
    def server_url(self) -> str:
        """URL of the server in use (the primary unless failed over)."""
        return self.pool.servers[self.pool.current].url

    @property
    def server_urls(self) -> list[str]:
        return [server.url for server in self.pool.servers]

    def servers_status(self) -> dict[str, Any]:
        """Which server is in use and how each one fares (for `.crds-fs/stats`)."""
        status = self.pool.status()
        status["proxy"] = self.proxy or _env_proxy() or None
        return status

    def close(self) -> None:
        """Release pooled connections."""
        self.session.close()

    def __enter__(self) -> CrdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CrdsClient({self.server_url!r})"

    # --- transport ------------------------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        """Where JSON-RPC envelopes are POSTed (the form the CRDS user guide documents)."""
        return self.server_url + "/json/"

    def _rpc_url(self, base: str | None) -> str:
        return (base or self.server_url) + "/json/"

    def _proxies(self, url: str) -> dict[str, str] | None:
        """Per-request proxies: the explicit proxy unless NO_PROXY exempts *url*; None
        lets requests apply HTTP_PROXY/HTTPS_PROXY/NO_PROXY from the environment."""
        if self.proxy is None or bypasses_proxy(url):
            return None
        return {"http": self.proxy, "https": self.proxy}

    def _proxy_of(self, url: str) -> str | None:
        """The proxy requests to *url* go through (explicit or environment), or None."""
        if bypasses_proxy(url):
            return None
        return self.proxy or _env_proxy() or None

    def _proxy_failed(self, url: str, exc: BaseException) -> str:
        return (f"the HTTP proxy {self._proxy_of(url) or '(from the environment)'} failed "
                f"({_describe(exc)}); check it (--proxy, CRDS_FS_PROXY, HTTP_PROXY)")

    def _servers_text(self) -> str:
        urls = self.server_urls
        return (f"the CRDS server {urls[0]} is" if len(urls) == 1
                else f"one of the CRDS servers {', '.join(urls)} is")

    def _with_retries(self, what: str, attempt: Callable[[], T]) -> T:
        """Run *attempt* (one fixed URL, no failover) until it succeeds or the retry
        budget is spent; *attempt* raises _Retryable for transient failures."""
        last = ""
        for number in range(self.retries + 1):
            if number:
                self._pause(what, number, last)
            try:
                return attempt()
            except _Retryable as exc:
                last = exc.message
        raise ServerUnreachableError(
            f"{what} failed after {self.retries + 1} attempt(s): {last}. "
            f"Check that the CRDS server {self.server_url} is running and reachable "
            "(CRDS_SERVER_URL), or work offline from the cache."
        )

    def _pause(self, what: str, number: int, last: str) -> None:
        delay = self.backoff * 2 ** (number - 1)
        log.info("retrying %s in %.2fs (attempt %d of %d): %s",
                 what, delay, number + 1, self.retries + 1, last)
        time.sleep(delay)

    def _with_failover(self, what: str, attempt: Callable[[int], T]) -> T:
        """Run *attempt(server index)* over the pool: the server in use first, then the
        others (see ServerPool.candidates); every round, until the retry budget is spent.

        A _Retryable failure marks that server down and moves on to the next one at once;
        the backoff pause comes only between rounds.  Other errors propagate.
        """
        last, tried = "", 0
        for number in range(self.retries + 1):
            if number:
                self._pause(what, number, last)
            for index in self.pool.candidates():
                tried += 1
                try:
                    result = attempt(index)
                except _Retryable as exc:
                    self.pool.failed(index, exc.message)
                    last = (exc.message if len(self.pool) == 1
                            else f"{self.pool.servers[index].url}: {exc.message}")
                    continue
                self.pool.succeeded(index)
                return result
        raise ServerUnreachableError(
            f"{what} failed after {tried} attempt(s): {last}. "
            f"Check that {self._servers_text()} running and reachable "
            "(CRDS_SERVER_URL), or work offline from the cache."
        )

    def _post_once(self, method: str, body: bytes, url: str) -> requests.Response:
        try:
            response = self.session.post(
                url, data=body, timeout=self.timeout, proxies=self._proxies(url),
                headers={"Content-Type": "application/json"},
            )
        except requests.exceptions.ProxyError as exc:
            raise _Retryable(self._proxy_failed(url, exc)) from None
        except requests.Timeout as exc:
            raise _Retryable(f"timed out ({_describe(exc)})") from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"connection failed ({_describe(exc)})") from None
        except requests.RequestException as exc:
            raise ProtocolError(
                f"JSON-RPC '{method}' to {url} failed: {_describe(exc)}"
            ) from None
        if response.status_code in _RETRY_STATUSES and not _has_error_envelope(response):
            raise _Retryable(f"HTTP {response.status_code} {response.reason}")
        return response

    def call(self, method: str, *params: Any) -> Any:
        """Call *method* with positional *params*; return the decoded `result`.

        Raises ServiceError for an error envelope (the server's message included),
        ServerUnreachableError when all attempts failed, ProtocolError for answers that are
        not CRDS JSON-RPC.
        """
        return self._call_indexed(method, *params)[0]

    def _envelope(self, method: str, params: tuple[Any, ...]) -> bytes:
        request_id = f"{self._id_prefix}-{next(self._ids):08x}"
        envelope = {"jsonrpc": "1.0", "method": method, "params": list(params), "id": request_id}
        return json.dumps(envelope).encode("utf-8")

    def _call_indexed(self, method: str, *params: Any) -> tuple[Any, int]:
        """`call` with failover; also returns the index of the server that answered."""
        body = self._envelope(method, params)

        def attempt(index: int) -> tuple[Any, int]:
            base = self.pool.servers[index].url
            response = self._post_once(method, body, self._rpc_url(base))
            return self._parse_response(method, response, base), index

        urls = self.server_urls
        where = self._rpc_url(urls[0]) if len(urls) == 1 else ", ".join(urls)
        return self._with_failover(f"JSON-RPC '{method}' to {where}", attempt)

    def _call_at(self, base: str | None, method: str, *params: Any) -> Any:
        """`call` against server URL *base* only (None: with failover over the pool)."""
        if base is None:
            return self.call(method, *params)
        body = self._envelope(method, params)
        url = self._rpc_url(base)
        what = f"JSON-RPC '{method}' to {url}"
        response = self._with_retries(what, lambda: self._post_once(method, body, url))
        return self._parse_response(method, response, base)

    def _parse_response(self, method: str, response: requests.Response,
                        server_url: str | None = None) -> Any:
        where = f"CRDS server {server_url or self.server_url}"
        proxy = self._proxy_of(server_url or self.server_url)
        if proxy:  # a proxy's own error page (403, 502, ...) must not look like the server's
            where += f" (through the HTTP proxy {proxy})"
        try:
            answer = response.json()
        except ValueError:
            raise ProtocolError(
                f"{where} answered JSON-RPC '{method}' with HTTP {response.status_code} and a "
                f"body that is not JSON ({response.text[:200]!r}); is "
                f"{self._rpc_url(server_url)} a CRDS JSON-RPC endpoint?"
            ) from None
        if not isinstance(answer, dict) or ("error" not in answer and "result" not in answer):
            raise ProtocolError(
                f"{where} answered JSON-RPC '{method}' with something that is not a JSON-RPC "
                f"envelope: {str(answer)[:200]}"
            )
        error = answer.get("error")
        if error:
            raise _service_error(where, method, error)
        if response.status_code >= 400:
            raise ProtocolError(
                f"{where} answered JSON-RPC '{method}' with HTTP {response.status_code} "
                f"{response.reason} and no error message"
            )
        return crds_decode(answer.get("result"))

    # --- RPC methods ----------------------------------------------------------------------

    def get_server_info(self) -> dict[str, Any]:
        """Server configuration (see crds-reference 1.6); memoised for file_url().

        `download_metadata` is left as the server sent it (usually crds_encoded, 2 MB for
        HST); decode it with `download_metadata()` only when needed.

        When this client wants an observatory (``observatory=``) and the server answers for
        another one, the server may serve several (`crds-fs serve` answers for each at
        ``/<obs>/``): ``<server>/<observatory>`` is asked once and, when it answers for the
        wanted observatory, becomes this client's server URL.
        """
        info, index = self._call_indexed("get_server_info")
        info = self._check_info(info, self.pool.servers[index].url)
        info = self._discover(index, info)
        self._remember(index, info)
        self._server_info = info
        return info

    def _discover(self, index: int, info: dict[str, Any]) -> dict[str, Any]:
        """Server *index* answers for another observatory: try its ``/<observatory>``."""
        wanted = self.observatory
        url = self.pool.servers[index].url
        if wanted and info.get("observatory") != wanted:
            candidate = f"{url}/{wanted}"
            try:
                other = self._server_info_at(candidate)
            except (ServiceError, ProtocolError, ServerUnreachableError) as exc:
                log.debug("no %s server at %s: %s", wanted, candidate, exc)
            else:
                if other.get("observatory") == wanted:
                    log.info("CRDS server %s answers for %r; using %s for %s",
                             url, info.get("observatory"), candidate, wanted)
                    self.pool.servers[index].url = candidate
                    return other
        return info

    def _remember(self, index: int, info: dict[str, Any]) -> None:
        """Keep server *index*'s info (download bases) and compare its catalog once."""
        server = self.pool.servers[index]
        server.info = {k: v for k, v in info.items() if k != "download_metadata"}
        if not self.pool.needs_check(index):
            return
        records = decode_download_metadata(info)
        if records is None:
            records = self._call_at(server.url, "get_file_info_map", self.observatory
                                    or info.get("observatory"), None, ["sha1sum", "size"])
        if isinstance(records, dict):
            self.pool.compare(index, _sha1s(records))

    def _know(self, index: int) -> None:
        """Make sure server *index*'s own info is known (for its download URLs and the
        catalog comparison); raises _Retryable when it cannot be fetched."""
        server = self.pool.servers[index]
        if server.info is not None and not self.pool.needs_check(index):
            return
        with server.lock:
            if server.info is not None and not self.pool.needs_check(index):
                return
            try:
                info = self._server_info_once(server.url)
                info = self._discover(index, info)
                self._remember(index, info)
            except (ServerUnreachableError, ProtocolError, ServiceError) as exc:
                raise _Retryable(f"server info unavailable ({exc})") from None

    def _server_info_once(self, base: str) -> dict[str, Any]:
        """get_server_info of *base*, one attempt (a failover probe must not linger)."""
        body = self._envelope("get_server_info", ())
        url = self._rpc_url(base)
        try:
            response = self._post_once("get_server_info", body, url)
        except _Retryable as exc:
            raise ServerUnreachableError(f"JSON-RPC 'get_server_info' to {url} failed: "
                                         f"{exc.message}") from None
        return self._check_info(self._parse_response("get_server_info", response, base), base)

    def check_mirrors(self, sha1s: Any, server_url: str) -> None:
        """Register the catalog in use (*sha1s*: `.get(name)` -> sha1) and compare every
        other server's catalog with it now; unreachable ones are compared on first use."""
        if len(self.pool) < 2:
            return
        self.pool.set_reference(sha1s, server_url)
        for index, server in enumerate(self.pool.servers):
            if server.url == server_url:
                continue
            try:
                self._know(index)
            except _Retryable as exc:
                log.warning("CRDS server %s: %s; its catalog is compared with %s's when it is "
                            "first used", server.url, exc.message, server_url)
        if self.pool.conflicts:
            log.error("%d file(s) differ between the CRDS servers %s and are not served",
                      len(self.pool.conflicts), ", ".join(self.server_urls))

    def conflict(self, name: str) -> str | None:
        """Why *name* must not be served (two servers disagree on its sha1), or None."""
        return self.pool.conflict(name)

    @staticmethod
    def _check_info(info: Any, base: str) -> dict[str, Any]:
        if not isinstance(info, dict):
            raise ProtocolError(
                f"CRDS server {base} returned {type(info).__name__} for "
                "get_server_info, expected an object"
            )
        return info

    def _server_info_at(self, base: str | None) -> dict[str, Any]:
        info = self._call_at(base, "get_server_info")
        if not isinstance(info, dict):
            raise ProtocolError(
                f"CRDS server {base or self.server_url} returned {type(info).__name__} for "
                "get_server_info, expected an object"
            )
        return info

    @property
    def server_info(self) -> dict[str, Any]:
        """The memoised server info, fetched on first use."""
        if self._server_info is None:
            return self.get_server_info()
        return self._server_info

    def download_metadata(self, info: dict[str, Any] | None = None) -> dict[str, dict] | None:
        """Decoded `download_metadata` of *info* (default: the memoised server info).

        Returns None when the server does not publish it (then use get_file_info_map).
        """
        return decode_download_metadata(self.server_info if info is None else info)

    def get_default_context(self, observatory: str, state: str | None = None) -> str:
        """Context the server designates (operational unless *state* says otherwise).

        Older servers take only the observatory; like crds, retry with one parameter.
        """
        try:
            return self.call("get_default_context", observatory, state)
        except ServiceError:
            if state is not None:
                raise
            return self.call("get_default_context", observatory)

    def get_mapping_names(self, context: str) -> list[str]:
        """Every mapping in the closure of *context*, including itself."""
        return self.call("get_mapping_names", context)

    def get_reference_names(self, context: str) -> list[str]:
        """Every reference named by the rules of *context*."""
        return self.call("get_reference_names", context)

    def list_mappings(self, observatory: str, glob_pattern: str = "*") -> list[str]:
        return self.call("list_mappings", observatory, glob_pattern)

    def list_references(self, observatory: str, glob_pattern: str = "*") -> list[str]:
        return self.call("list_references", observatory, glob_pattern)

    def get_file_info(self, context: str, filename: str) -> dict[str, str]:
        return self.call("get_file_info", context, filename)

    def get_file_info_map(
        self, observatory: str, files: list[str] | None = None, fields: list[str] | None = None
    ) -> dict[str, Any]:
        """`{name: {field: str}}`; unknown names map to the string "NOT FOUND"."""
        return self.call(
            "get_file_info_map", observatory,
            sorted(files) if files is not None else None,
            sorted(fields) if fields is not None else None,
        )

    def get_context_history(self, observatory: str) -> list[list[str]]:
        return self.call("get_context_history", observatory)

    def get_context_by_date(self, date_spec: str, observatory: str | None = None) -> str:
        """The mapping a date-based spec names, e.g. 'hst-2016-01-01' (server side)."""
        return self.call("get_context_by_date", date_spec, observatory)

    def get_build_context(self, observatory: str, cal_version: str | None = None) -> str:
        return self.call("get_build_context", observatory, cal_version)

    def get_best_references(
        self, context: str, header: dict[str, Any], reftypes: list[str] | None = None
    ) -> dict[str, str]:
        # crds stringifies header values before sending; do the same for identical answers.
        return self.call("get_best_references", context, _str_header(header), reftypes)

    def get_best_references_by_header_map(
        self, context: str, headers: dict[str, dict[str, Any]], reftypes: list[str] | None = None
    ) -> dict[str, Any]:
        strs = {key: _str_header(header) for key, header in headers.items()}
        return self.call("get_best_references_by_header_map", context, strs, reftypes)

    def get_required_parkeys(self, context: str) -> Any:
        return self.call("get_required_parkeys", context)

    def get_dataset_headers_by_id(
        self, context: str, dataset_ids: list[str], datasets_since: str | None = None
    ) -> dict[str, Any]:
        return self.call("get_dataset_headers_by_id", context, dataset_ids, datasets_since)

    # --- downloads ------------------------------------------------------------------------

    def file_url(self, name: str, observatory: str) -> str:
        """Download URL of *name*, from the server's advertised base URLs (never guessed)."""
        url = advertised_url(self.server_info, name, observatory)
        if url is None:
            raise ProtocolError(
                f"CRDS server {self.server_url} does not advertise a "
                f"{url_field(name)} for observatory '{observatory}' in its server info, "
                f"so '{name}' cannot be downloaded"
            )
        return url

    def open_stream(self, url: str, start: int = 0, end: int | None = None, *,
                    no_cache: bool = False) -> requests.Response:
        """Streaming GET of *url*, bytes [start, end) (end exclusive, like a slice).

        Returns the open response (status 200 or 206); the caller must close it.  Connection
        failures, timeouts and 5xx are retried, then raise ServerUnreachableError; other
        HTTP errors raise DownloadError (UnknownFile-like 404 included).  Use
        `iter_chunks()` to read the body with errors translated the same way.
        """
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"bad or empty byte range [{start}, {end}) for {url}")
        headers: dict[str, str] = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        if no_cache:  # HTTP caches on the way (nginx, squid) must refetch, not serve
            headers["Cache-Control"] = "no-cache"
            headers["Pragma"] = "no-cache"

        def get(target: str) -> requests.Response:
            try:
                response = self.session.get(target, headers=headers, stream=True,
                                            timeout=self.timeout,
                                            proxies=self._proxies(target))
            except requests.exceptions.ProxyError as exc:
                raise _Retryable(self._proxy_failed(target, exc)) from None
            except requests.Timeout as exc:
                raise _Retryable(f"timed out ({_describe(exc)})") from None
            except requests.ConnectionError as exc:
                raise _Retryable(f"connection failed ({_describe(exc)})") from None
            if response.status_code in _RETRY_STATUSES:
                response.close()
                raise _Retryable(f"HTTP {response.status_code} {response.reason}")
            return response

        if len(self.pool) == 1 or self.pool.index_of(url) is None:
            response = self._with_retries(f"download of {url}", lambda: get(url))
        else:
            def attempt(index: int) -> requests.Response:
                if len(self.pool) > 1:
                    self._know(index)
                target = self.pool.relocate(url, index)
                if target is None:
                    raise _Retryable(f"no download URL for {url} on this server")
                return get(target)

            response = self._with_failover(f"download of {url}", attempt)
        self._check_download_status(response.url, response, ranged="Range" in headers)
        return response

    @staticmethod
    def _check_download_status(url: str, response: requests.Response, *, ranged: bool) -> None:
        status = response.status_code
        if (status == 200 and not ranged) or (status == 206 and ranged):
            return
        response.close()
        if status == 200:
            raise DownloadError(
                f"download of {url} ignored the byte range requested (HTTP 200 instead of 206)"
            )
        hint = " (not on the server)" if status == 404 else ""
        raise DownloadError(f"download of {url} failed: HTTP {status} {response.reason}{hint}")


def iter_chunks(response: requests.Response, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Body chunks of an `open_stream()` response; transport errors become DownloadError."""
    try:
        yield from response.iter_content(chunk_size)
    except (requests.RequestException, OSError) as exc:
        raise DownloadError(f"download of {response.url} broke off: {_describe(exc)}") from None


def url_field(name: str) -> str:
    """The server info field holding the download base URLs for *name*'s kind."""
    return _URL_FIELDS[file_kind(name)]


def advertised_url(server_info: dict[str, Any], name: str, observatory: str) -> str | None:
    """Download URL of *name* from the base URLs *server_info* advertises (None if none).

    Pure (no request), so the mount can show URLs offline from the stored server info.
    """
    bases = server_info.get(url_field(name))
    if isinstance(bases, dict) and "unchecked" in bases:  # legacy server info layout
        bases = bases["unchecked"]
    base = bases.get(observatory) if isinstance(bases, dict) else None
    if not base:
        return None
    base = str(base)
    return (base if base.endswith("/") else base + "/") + name


def decode_download_metadata(info: dict[str, Any]) -> dict[str, dict] | None:
    """The `download_metadata` field of a server info, decoded; None when absent."""
    value = info.get("download_metadata")
    if value is None:
        return None
    decoded = crds_decode(value)
    if not isinstance(decoded, dict):
        raise ProtocolError(
            f"server info download_metadata decodes to {type(decoded).__name__}, not an object"
        )
    return decoded


def _sha1s(records: dict[str, Any]) -> dict[str, str]:
    """{name: lower-case sha1} of download_metadata / get_file_info_map records."""
    out: dict[str, str] = {}
    for name, record in records.items():
        if isinstance(record, dict):
            sha1 = str(record.get("sha1sum") or "").lower()
            if sha1 and sha1 != "none":
                out[name] = sha1
    return out


def _env_proxy() -> str:
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        if os.environ.get(var):
            return os.environ[var]
    return ""


def bypasses_proxy(url: str) -> bool:
    """True when NO_PROXY (or no_proxy) exempts *url*'s host from the proxy.

    The curl convention: comma-separated host names, domains ('.example.org' or
    'example.org' matches its subdomains too), IP addresses, optional ':port'; '*' exempts
    everything.
    """
    value = os.environ.get("NO_PROXY", os.environ.get("no_proxy", ""))
    if not value.strip():
        return False
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in value.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and not want_port.isdigit():
            name, want_port = entry, ""
        if want_port and int(want_port) != port:
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _has_error_envelope(response: requests.Response) -> bool:
    """True when a failed HTTP answer still carries a JSON-RPC error: a deliberate refusal
    that another attempt would only repeat."""
    try:
        answer = response.json()
    except ValueError:
        return False
    return isinstance(answer, dict) and bool(answer.get("error"))


def _service_error(where: str, method: str, error: Any) -> ServiceError:
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("name") or error)
        name = error.get("name")
    else:
        message, name = str(error), None
    exc = ServiceError(f"{where}: JSON-RPC '{method}' failed: {message}")
    exc.server_message = message  # type: ignore[attr-defined]
    exc.remote_name = name  # type: ignore[attr-defined]
    return exc


def _str_header(header: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in header.items()}


def _describe(exc: BaseException) -> str:
    """Short, readable text of a requests exception (they nest urllib3 reprs deeply)."""
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:300] or type(exc).__name__
