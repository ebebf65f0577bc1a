"""Best references for headers: local, remote, or auto with fallback; one home for the rules.

Three answerers, one set of rules:

* `LocalAnswerer` — the engine over a `MappingSource` (a folder, a CRDS cache root, or the
  cache's fetcher), with crds' bad-file checks (`getrecommendations`).  No cache, no server.
* `RemoteAnswerer` — a CRDS server over a `CrdsClient`: `get_best_references_by_header_map`
  batched up to the server's `max_bestrefs_per_rpc`, a batch refused as a whole retried
  header by header, and crds' client-side bad-file checks (`bad_file_error`) with the
  server's bad files list, which a server leaves to its clients.
* `BestrefsResolver` — both over a `FileCache`: `auto` means remote while the server is
  reachable and local otherwise, like crds' CRDS_MODE=auto.  Answers are stored in the
  cache's diskcache index keyed by context and the header values that matter, so they
  survive restarts and a header seen once is never asked about again.  Contexts are
  immutable, so such an answer never goes stale; a *new* context is simply a different key.

`crds-fs bestrefs` uses the first two directly (nothing is cached), the API, the mount's
`bestrefs/` directory the third.  Every answerer returns `{key: Outcome}`: a header's
failure is its own `Outcome.error`, never an exception; only whole-call failures (server
unreachable) raise.  `resolve_context` turns ``None``/``operational``/``latest`` into a
context name the same way for all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client.names import observatory_of
from ..config import OBSERVATORIES
from ..errors import (
    ConfigError,
    CrdsFsError,
    ServerUnreachableError,
    ServiceError,
)
from ..progress import Progress, report

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..cache import FileCache
    from ..client.rpc import CrdsClient
    from ..engine import Context
    from .sources import MappingSource

log = logging.getLogger(__name__)

ENGINES = ("auto", "remote", "local")
#: Used when the server does not advertise max_bestrefs_per_rpc.
DEFAULT_MAX_PER_RPC = 500
#: Words that stand for "the context in use" instead of a context name (crds accepts both).
CONTEXT_ALIASES = ("operational", "latest")
_KEY = "bestrefs:"
_SIMPLE = (str, int, float, bool)


def is_reference_name(value: Any) -> bool:
    """True for an answer that names a file (not ``NOT FOUND ...``, ``N/A`` or empty)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return bool(text) and not text.upper().startswith("NOT FOUND") and text.upper() not in (
        "N/A", "OMIT", "UNDEFINED")


def describe_error(exc: BaseException) -> str:
    """``CrdsName: message`` of a failure (crds' class name when the error carries one)."""
    name = getattr(exc, "crds_name", None) or type(exc).__name__
    return f"{name}: {str(exc).rstrip()}"


def plain_bestrefs(refs: Mapping[Any, Any]) -> dict[Any, Any]:
    """JSON-able answers: tied files (tuples) become lists of names, anything exotic its
    string form; names and dicts are kept.  Used for every answer printed or served."""
    result: dict[Any, Any] = {}
    for reftype, value in refs.items():
        if isinstance(value, tuple | list):
            result[reftype] = [v if isinstance(v, str) else str(v) for v in value]
        elif isinstance(value, str | dict):
            result[reftype] = value
        else:
            result[reftype] = str(value)
    return result


def screen_header(header: Mapping[str, Any]) -> dict[str, Any]:
    """crds' parameter screening before an RPC: only str/int/float/bool values are sent."""
    return {k: v for k, v in header.items() if isinstance(v, _SIMPLE)}


# --- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one header got: per-reftype answers, or a whole-call error; and who decided."""

    bestrefs: dict[str, Any]
    engine: str
    error: str | None = None

    def found(self) -> dict[str, str]:
        """{reftype: reference name} of the types that have a reference."""
        return {t: v for t, v in sorted(self.bestrefs.items()) if is_reference_name(v)}

    def to_state(self) -> dict[str, Any]:
        return {"bestrefs": self.bestrefs, "engine": self.engine, "error": self.error}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Outcome:
        return cls(dict(state["bestrefs"]), str(state["engine"]), state.get("error"))


def bad_file_error(context: str, bestrefs: Mapping[str, Any], bad_files: frozenset[str],
                   mapping_names: Callable[[], Iterable[str]], *, allow_bad_rules: bool,
                   allow_bad_references: bool) -> str | None:
    """crds' client-side bad-file verdict on a server's answer (None: the answer stands).

    A server leaves these checks to its clients, so every remote answer goes through this
    one (`RemoteAnswerer`).  *mapping_names* is only called when bad files exist and bad
    rules are not allowed (it may cost an RPC).
    """
    if not bad_files:
        return None
    if not allow_bad_rules:
        rules = sorted(set(mapping_names()) & bad_files)
        if rules:
            return (f"CrdsBadRulesError: Final context {context!r} is marked as "
                    f"scientifically invalid based on: {rules}")
    if not allow_bad_references:
        for reftype, name in sorted(bestrefs.items()):
            if isinstance(name, str) and name in bad_files:
                return (f"CrdsBadReferenceError: Recommended reference {name!r} of type "
                        f"{reftype!r} is designated scientifically invalid.")
    return None


# --- local: the engine over a mapping source -------------------------------------------------


class LocalAnswerer:
    """Best references computed by the engine over *source* (thread-safe; no cache).

    *bad_files* (default: the source's list) is asked on every answer, so a cache whose
    catalog is refreshed applies the new list.  Contexts are loaded once per name.
    """

    engine = "local"

    def __init__(self, source: MappingSource, *, allow_bad_references: bool = False,
                 allow_bad_rules: bool = False,
                 bad_files: Callable[[], frozenset[str]] | None = None) -> None:
        self.source = source
        self.allow_bad_references = allow_bad_references
        self.allow_bad_rules = allow_bad_rules
        self._bad_files = bad_files or (lambda: source.bad_files)
        self._contexts: dict[str, Context] = {}
        self._lock = threading.Lock()

    @property
    def bad_files(self) -> frozenset[str]:
        return self._bad_files()

    def context(self, name: str) -> Context:
        """The engine's Context *name* (loaded on first use); raises CrdsFsError."""
        with self._lock:
            loaded = self._contexts.get(name)
            if loaded is None:
                loaded = self.source.load_context(name)
                self._contexts[name] = loaded
            return loaded

    def required_parkeys(self, context: str) -> Any:
        """As the RPC: ``{instrument: [parkey, ...]}`` of *context*."""
        return self.context(context).required_parkeys()

    def mapping_names(self, context: str) -> list[str]:
        """Every mapping of *context*, itself included."""
        return list(self.context(context).mapping_names())

    def answer_one(self, context: str, header: Mapping[str, Any],
                   reftypes: Iterable[str] | None = None) -> Outcome:
        """One header's Outcome; any failure (context not loadable, unknown instrument, bad
        rules or references, an engine bug) becomes Outcome.error."""
        try:
            refs = self.context(context).best_references(
                dict(header), reftypes, bad_files=self.bad_files,
                allow_bad_references=self.allow_bad_references,
                allow_bad_rules=self.allow_bad_rules,
            )
        except Exception as exc:  # noqa: BLE001 - a header's failure is its own answer
            if not isinstance(exc, CrdsFsError):
                log.warning("local best references under %s: unexpected %s", context,
                            describe_error(exc))
            return Outcome({}, "local", describe_error(exc))
        return Outcome(plain_bestrefs(refs), "local")

    def answer(self, context: str, headers: Mapping[str, Mapping[str, Any]],
               reftypes: Iterable[str] | None = None, *,
               progress: Progress | None = None) -> dict[str, Outcome]:
        """{key: Outcome} for every header of *headers* ({key: header})."""
        types = list(reftypes) if reftypes is not None else None
        results: dict[str, Outcome] = {}
        report(progress, 0, len(headers))
        for number, (key, header) in enumerate(headers.items(), start=1):
            results[key] = self.answer_one(context, header, types)
            report(progress, number, len(headers), key)
        return results


# --- remote: a CRDS server -------------------------------------------------------------------


class RemoteAnswerer:
    """Best references from a CRDS server through *client*, batched, with crds' client-side
    bad-file checks.

    *server_info* (default: the client's memoised `get_server_info`) supplies
    ``max_bestrefs_per_rpc`` and, unless *bad_files* is given, ``bad_files_list``;
    *mapping_names* (default: `get_mapping_names`, asked once per context) is only used by
    the bad-rules check.  Raises ServerUnreachableError when the server cannot be reached.
    """

    engine = "remote"

    def __init__(self, client: CrdsClient, *, allow_bad_references: bool = False,
                 allow_bad_rules: bool = False,
                 server_info: Callable[[], Mapping[str, Any]] | None = None,
                 bad_files: Callable[[], frozenset[str]] | None = None,
                 mapping_names: Callable[[str], Iterable[str]] | None = None) -> None:
        self.client = client
        self.allow_bad_references = allow_bad_references
        self.allow_bad_rules = allow_bad_rules
        self._server_info = server_info or (lambda: client.server_info)
        self._bad_files = bad_files or self._listed_bad_files
        self._mapping_names = mapping_names or self._asked_mapping_names
        self._names: dict[str, list[str]] = {}

    @property
    def server_info(self) -> Mapping[str, Any]:
        return self._server_info()

    @property
    def bad_files(self) -> frozenset[str]:
        return self._bad_files()

    def _listed_bad_files(self) -> frozenset[str]:
        listed = self.server_info.get("bad_files_list") or []
        if isinstance(listed, str):
            listed = listed.split()
        return frozenset(str(name) for name in listed)

    def _asked_mapping_names(self, context: str) -> list[str]:
        names = self._names.get(context)
        if names is None:
            names = self._names[context] = list(self.client.get_mapping_names(context))
        return names

    def mapping_names(self, context: str) -> list[str]:
        return list(self._mapping_names(context))

    def required_parkeys(self, context: str) -> Any:
        return self.client.get_required_parkeys(context)

    def max_per_rpc(self) -> int:
        """Headers per `get_best_references_by_header_map` call: the server's limit."""
        value = self.server_info.get("max_bestrefs_per_rpc")
        try:
            return max(1, int(value))
        except (TypeError, ValueError):
            return DEFAULT_MAX_PER_RPC

    def answer(self, context: str, headers: Mapping[str, Mapping[str, Any]],
               reftypes: Iterable[str] | None = None, *,
               progress: Progress | None = None) -> dict[str, Outcome]:
        """{key: Outcome} for every header; batches of `max_per_rpc`, and a batch refused as
        a whole is asked header by header so one bad header cannot hide the others."""
        types = list(reftypes) if reftypes is not None else None
        results: dict[str, Outcome] = {}
        keys = list(headers)
        step = self.max_per_rpc()
        report(progress, 0, len(keys))
        for start in range(0, len(keys), step):
            batch = {key: screen_header(headers[key]) for key in keys[start: start + step]}
            for key, outcome in self._ask(context, batch, types).items():
                results[key] = self._check_bad(context, outcome)
            report(progress, start + len(batch), len(keys))
        return results

    def _ask(self, context: str, batch: dict[str, dict[str, Any]],
             reftypes: list[str] | None) -> dict[str, Outcome]:
        answer: Any = {}
        if len(batch) > 1:
            try:
                answer = self.client.get_best_references_by_header_map(context, batch, reftypes)
            except ServiceError as exc:
                log.info("get_best_references_by_header_map refused the batch (%s); "
                         "asking header by header", exc)
        if isinstance(answer, dict) and answer:
            return {key: _remote_outcome(answer.get(key)) for key in batch}
        outcomes: dict[str, Outcome] = {}
        for key, header in batch.items():
            try:
                value = self.client.get_best_references(context, header, reftypes)
                outcomes[key] = _remote_outcome(value)
            except ServiceError as exc:
                outcomes[key] = Outcome({}, "remote", _service_message(exc))
        return outcomes

    def _check_bad(self, context: str, outcome: Outcome) -> Outcome:
        """crds' client-side bad-file checks: rules or a recommended reference on the bad
        files list fail the header unless allowed (CRDS_ALLOW_BAD_RULES/_REFERENCES)."""
        if outcome.error is not None:
            return outcome
        error = bad_file_error(context, outcome.bestrefs, self.bad_files,
                               lambda: self.mapping_names(context),
                               allow_bad_rules=self.allow_bad_rules,
                               allow_bad_references=self.allow_bad_references)
        return outcome if error is None else Outcome({}, outcome.engine, error)

    def dataset_headers(self, context: str, ids: list[str]) -> dict[str, dict[str, Any] | str]:
        """{id: header} of dataset IDs the server knows, asked with
        `get_dataset_headers_by_id` in batches of `max_per_rpc`; an ID the server does not
        know (or a batch it refuses) maps to the error saying so (a string)."""
        result: dict[str, dict[str, Any] | str] = {}
        step = self.max_per_rpc()
        for start in range(0, len(ids), step):
            batch = ids[start: start + step]
            try:
                answer = self.client.get_dataset_headers_by_id(context, batch)
            except ServiceError as exc:
                result.update(dict.fromkeys(batch, f"DatasetError: {exc}"))
                continue
            for requested in batch:
                value = answer.get(requested) if isinstance(answer, dict) else None
                if isinstance(value, dict):
                    result[requested] = {str(k).upper(): v for k, v in value.items()}
                else:
                    why = value or f"the server returned no header for dataset ID {requested!r}"
                    result[requested] = f"DatasetError: {why}"
        return result


def _service_message(exc: ServiceError) -> str:
    """``Name: message`` of a refused call: the server's error name, else crds' client
    class for a failed lookup (CrdsLookupError)."""
    message = getattr(exc, "server_message", None) or str(exc)
    name = getattr(exc, "remote_name", None) or "CrdsLookupError"
    return f"{name}: {message}"


def _remote_outcome(value: Any) -> Outcome:
    """A server's answer for one header: ``{type: name}``, ``[True, {type: name}]``,
    ``[False, "FAILED: message"]`` (crds' header-map form) or nothing."""
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], bool):
        ok, refs = value
        if ok and isinstance(refs, dict):
            value = refs
        elif not ok:
            message = str(refs).removeprefix("FAILED: ")
            return Outcome({}, "remote", f"CrdsLookupError: {message}")
    if isinstance(value, dict):
        return Outcome(plain_bestrefs({str(t).lower(): v for t, v in value.items()}), "remote")
    return Outcome({}, "remote", "ServiceError: the server returned no answer for this header")


# --- which context -----------------------------------------------------------------------------


def is_context_alias(name: str | None, observatory: str | None = None) -> bool:
    """True for None/'' and the words meaning "the current one": ``operational``,
    ``latest``, and ``<obs>-operational``/``<obs>-latest`` (crds' forms) where ``<obs>``
    is *observatory* when one is known, else any observatory."""
    if not name:
        return True
    text = name.strip().lower()
    obs, _, word = text.rpartition("-")
    known = {observatory} if observatory else {*OBSERVATORIES, "tobs"}
    return text in CONTEXT_ALIASES or (word in CONTEXT_ALIASES and obs in known)


def alias_observatory(name: str | None) -> str | None:
    """The observatory an alias such as ``jwst-operational`` names (None for plain ones)."""
    if not name or not is_context_alias(name):
        return None
    obs, _, _ = name.strip().lower().rpartition("-")
    return obs or None


def server_context(client: CrdsClient, observatory: str | None = None) -> str:
    """The server's operational context (for *observatory*, else the server's own)."""
    info = client.server_info
    obs = observatory or info.get("observatory")
    context = client.get_default_context(obs) if observatory else info.get(
        "operational_context")
    if not context:
        raise ConfigError(f"the CRDS server {client.server_url} names no operational "
                          "context; give --context or set CRDS_CONTEXT")
    return str(context)


_SERIAL = re.compile(r"_(\d+)\.pmap$")


def folder_context(folder: str | Path, *, observatory: str | None = None,
                   latest: bool = False) -> str:
    """The context of a mapping folder or CRDS cache root when none is named.

    Operational (*latest* False): the ``operational_context`` recorded in the cache root's
    ``config/<obs>/server_config`` (crds and crds-fs write it there), else the newest pmap.
    Latest: the pmap with the highest serial number (``hst_0729.pmap`` > ``hst_0728.pmap``).
    A folder holding several observatories needs *observatory*.
    """
    from .sources import read_server_config

    base = Path(folder)
    pmaps = _pmaps_by_observatory(base)
    obs = observatory
    if obs is None:
        if len(pmaps) > 1:
            raise ConfigError(f"{base} holds contexts of {', '.join(sorted(pmaps))}: choose "
                              "one with --observatory (or CRDS_OBSERVATORY), or give --context")
        obs = next(iter(pmaps), None)
    if not latest and obs is not None:
        config = base / "config" / obs / "server_config"
        if config.is_file():
            recorded = read_server_config(config).get("operational_context")
            if isinstance(recorded, str) and recorded:
                return recorded
    names = pmaps.get(obs or "", [])
    if not names:
        where = f"{obs} contexts" if obs else "contexts (*.pmap)"
        raise ConfigError(f"no {where} in {base}; give --context")
    return max(names, key=lambda n: (int(m.group(1)) if (m := _SERIAL.search(n)) else -1, n))


def _pmaps_by_observatory(base: Path) -> dict[str, list[str]]:
    """{observatory: [pmap names]} of a cache root (``mappings/<obs>/``) or a flat folder."""
    found: dict[str, list[str]] = {}
    if (base / "mappings").is_dir():
        for sub in sorted(p for p in (base / "mappings").iterdir() if p.is_dir()):
            names = sorted(p.name for p in sub.glob("*.pmap"))
            if names:
                found[sub.name] = names
        return found
    for path in sorted(base.glob("*.pmap")):
        found.setdefault(observatory_of(path.name.lower()) or "", []).append(path.name)
    return found


# --- the cache-backed resolver ---------------------------------------------------------------


class BestrefsResolver:
    """Best references for headers under one context, remote or local (thread-safe), over
    a FileCache: the answerers above plus auto fallback and the persistent answer cache."""

    def __init__(self, cache: FileCache, *, engine: str = "auto") -> None:
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        self.cache = cache
        self.engine = engine
        self.db = cache.index.db
        settings = cache.settings
        rules = {"allow_bad_references": settings.allow_bad_references,
                 "allow_bad_rules": settings.allow_bad_rules}
        self.local = LocalAnswerer(cache_source(cache), **rules,
                                   bad_files=lambda: cache.catalog.bad_files)
        self.remote = RemoteAnswerer(cache.client, **rules,
                                     server_info=lambda: cache.server_info,
                                     bad_files=lambda: cache.catalog.bad_files,
                                     mapping_names=self.mapping_names)
        #: set after the server failed once: stop trying remote in auto mode for a while
        self._remote_down_until = 0.0

    # --- which engine -----------------------------------------------------------------------

    def use_remote(self) -> bool:
        """Remote when asked for, or in auto mode while the server answers."""
        if self.engine == "remote":
            return True
        if self.engine == "local":
            return False
        return bool(self.cache.online) and time.monotonic() >= self._remote_down_until

    def _server_failed(self, exc: Exception) -> None:
        log.warning("best references: server unreachable (%s); answering with the local "
                    "engine for the next 60 s", exc)
        self._remote_down_until = time.monotonic() + 60.0

    # --- mappings and the local engine ------------------------------------------------------

    def mapping_names(self, context: str) -> list[str]:
        """Every mapping of *context* (incl. itself): from the server when online, else from
        the local engine over what the cache holds."""
        key = f"{_KEY}mappings:{context}"
        names = self.db.get(key)
        if names is None and self.cache.online:
            try:
                names = list(self.cache.client.get_mapping_names(context))
                self.db.set(key, names)
            except ServerUnreachableError as exc:
                log.info("get_mapping_names(%s) failed (%s); using the local engine", context,
                         exc)
        if names is None:
            names = self.local.mapping_names(context)
        return names

    def local_context(self, context: str) -> Any:
        """The engine's Context for *context*, mappings read (and fetched) through the cache."""
        return self.local.context(context)

    def required_parkeys(self, context: str) -> Any:
        """`get_required_parkeys(context)`: from the server (stored; contexts are immutable)
        when remote, else from the local engine."""
        key = f"{_KEY}parkeys:{context}"
        stored = self.db.get(key)
        if stored is not None:
            return stored
        parkeys = None
        if self.use_remote():
            try:
                parkeys = self.remote.required_parkeys(context)
            except ServerUnreachableError as exc:
                if self.engine == "remote":
                    raise
                self._server_failed(exc)
        if parkeys is None:
            parkeys = self.local.required_parkeys(context)
        self.db.set(key, parkeys)
        return parkeys

    def max_per_rpc(self) -> int:
        return self.remote.max_per_rpc()

    # --- answers ----------------------------------------------------------------------------

    def best_references(
        self, context: str, headers: Mapping[str, Mapping[str, str]],
        reftypes: Iterable[str] | None = None,
    ) -> dict[str, Outcome]:
        """{key: Outcome} for every header of *headers* ({key: header}) under *context*.

        Stored answers are reused; the rest are decided in batches (remote) or one by one
        (local).  A header's failure is its own Outcome.error, never an exception.
        """
        types = sorted({t.lower() for t in reftypes}) if reftypes is not None else None
        results: dict[str, Outcome] = {}
        todo: dict[str, tuple[str, Mapping[str, str]]] = {}
        for key, header in headers.items():
            answer_key = self.answer_key(context, header, types)
            stored = self.db.get(answer_key)
            if stored is not None:
                results[key] = Outcome.from_state(stored)
            else:
                todo[key] = (answer_key, header)
        if todo:
            computed = self._decide(context, {k: h for k, (_, h) in todo.items()}, types)
            for key, outcome in computed.items():
                results[key] = outcome
                if outcome.error is None:  # errors may be transient (offline, server down)
                    self.db.set(todo[key][0], outcome.to_state())
        return results

    def answer_key(self, context: str, header: Mapping[str, str],
                   reftypes: list[str] | None = None) -> str:
        """Index key of one answer: context, engine mode, reftypes asked, header values."""
        text = json.dumps([context, self.engine, reftypes, sorted(header.items())],
                          separators=(",", ":"))
        return f"{_KEY}answer:" + hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _decide(self, context: str, headers: dict[str, Mapping[str, str]],
                reftypes: list[str] | None) -> dict[str, Outcome]:
        if self.use_remote():
            try:
                return self.remote.answer(context, headers, reftypes)
            except ServerUnreachableError as exc:
                if self.engine == "remote":
                    return {key: Outcome({}, "remote", str(exc)) for key in headers}
                self._server_failed(exc)
        return self.local.answer(context, headers, reftypes)


def cache_source(cache: FileCache) -> MappingSource:
    """The engine's mapping source over the cache: mappings are fetched (verified) on first
    use and built ones are shared process-wide per cache folder."""
    from .compiled import compiled_cache
    from .sources import callable_source

    identity = ("crds-fs-cache", str(cache.store.root), cache.observatory)
    return callable_source(cache.ensure, identity,
                           f"crds-fs cache {cache.store.root} ({cache.observatory})",
                           cache.catalog.bad_files,
                           compiled=compiled_cache(cache.settings.cache_dir))


__all__ = [
    "CONTEXT_ALIASES", "DEFAULT_MAX_PER_RPC", "ENGINES", "BestrefsResolver", "LocalAnswerer",
    "Outcome", "RemoteAnswerer", "alias_observatory", "bad_file_error", "cache_source",
    "describe_error", "folder_context", "is_context_alias", "is_reference_name",
    "plain_bestrefs", "screen_header", "server_context",
]
