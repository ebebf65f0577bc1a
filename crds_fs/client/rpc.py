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
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from .. import __version__ as _VERSION
from ..config import Settings
from ..errors import DownloadError, ProtocolError, ServerUnreachableError, ServiceError
from .names import file_kind
from .payload import crds_decode

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
    """Talks to one CRDS server (real or `crds-fs serve`); safe to share between threads.

    `retries` is the number of extra attempts after the first one; attempt *n* waits
    ``backoff * 2**(n-1)`` seconds first.  Timeouts are per socket operation (connect, then
    each read), as requests defines them.
    """

    def __init__(
        self,
        server_url: str,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        retries: int = 3,
        backoff: float = 0.5,
        pool_size: int = 16,
        observatory: str | None = None,
    ) -> None:
        """*observatory*: the one wanted; when the server answers for another, its
        ``/<observatory>`` prefix is tried once (see `get_server_info`)."""
        self.server_url = server_url.rstrip("/")
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
            settings.server_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries=settings.retries,
            backoff=settings.backoff,
            observatory=settings.effective_observatory,
        )

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

    def _with_retries(self, what: str, attempt: Callable[[], T]) -> T:
        """Run *attempt* until it succeeds or the retry budget is spent.

        *attempt* raises _Retryable for transient failures; anything else propagates at once.
        """
        last = ""
        for number in range(self.retries + 1):
            if number:
                delay = self.backoff * 2 ** (number - 1)
                log.info("retrying %s in %.2fs (attempt %d of %d): %s",
                         what, delay, number + 1, self.retries + 1, last)
                time.sleep(delay)
            try:
                return attempt()
            except _Retryable as exc:
                last = exc.message
        raise ServerUnreachableError(
            f"{what} failed after {self.retries + 1} attempt(s): {last}. "
            f"Check that the CRDS server {self.server_url} is running and reachable "
            "(CRDS_SERVER_URL), or work offline from the cache."
        )

    def _post_once(self, method: str, body: bytes, url: str) -> requests.Response:
        try:
            response = self.session.post(
                url, data=body, timeout=self.timeout,
                headers={"Content-Type": "application/json"},
            )
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
        return self._call_at(None, method, *params)

    def _call_at(self, base: str | None, method: str, *params: Any) -> Any:
        """`call` against server URL *base* (None: this client's)."""
        request_id = f"{self._id_prefix}-{next(self._ids):08x}"
        envelope = {"jsonrpc": "1.0", "method": method, "params": list(params), "id": request_id}
        body = json.dumps(envelope).encode("utf-8")
        url = self._rpc_url(base)
        what = f"JSON-RPC '{method}' to {url}"
        response = self._with_retries(what, lambda: self._post_once(method, body, url))
        return self._parse_response(method, response, base or self.server_url)

    def _parse_response(self, method: str, response: requests.Response,
                        server_url: str | None = None) -> Any:
        where = f"CRDS server {server_url or self.server_url}"
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
        info = self._server_info_at(None)
        wanted = self.observatory
        if wanted and info.get("observatory") != wanted:
            candidate = f"{self.server_url}/{wanted}"
            try:
                other = self._server_info_at(candidate)
            except (ServiceError, ProtocolError, ServerUnreachableError) as exc:
                log.debug("no %s server at %s: %s", wanted, candidate, exc)
            else:
                if other.get("observatory") == wanted:
                    log.info("CRDS server %s answers for %r; using %s for %s",
                             self.server_url, info.get("observatory"), candidate, wanted)
                    self.server_url = candidate
                    info = other
        self._server_info = info
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

    def open_stream(self, url: str, start: int = 0, end: int | None = None) -> requests.Response:
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

        def attempt() -> requests.Response:
            try:
                response = self.session.get(url, headers=headers, stream=True,
                                            timeout=self.timeout)
            except requests.Timeout as exc:
                raise _Retryable(f"timed out ({_describe(exc)})") from None
            except requests.ConnectionError as exc:
                raise _Retryable(f"connection failed ({_describe(exc)})") from None
            if response.status_code in _RETRY_STATUSES:
                response.close()
                raise _Retryable(f"HTTP {response.status_code} {response.reason}")
            return response

        response = self._with_retries(f"download of {url}", attempt)
        self._check_download_status(url, response, ranged=bool(headers))
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
