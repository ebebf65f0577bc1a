"""Best references for headers, decided remotely or locally, cached per context.

`BestrefsResolver` answers "which references for these headers under this context?",
on the server (`get_best_references_by_header_map`, batched up to the server's
`max_bestrefs_per_rpc`) or with the local engine over mappings fetched through the cache.
`auto` means remote while the server is reachable and local otherwise, like crds'
CRDS_MODE=auto.  Answers are stored in the cache's diskcache index keyed by context and
the header values that matter (the reduced header), so they survive restarts and a
header seen once is never asked about again.  Contexts are immutable, so such an answer
never goes stale; a *new* context is simply a different key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigError,
    CrdsFsError,
    ServerUnreachableError,
    ServiceError,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..cache import FileCache

log = logging.getLogger(__name__)

ENGINES = ("auto", "remote", "local")
#: Used when the server does not advertise max_bestrefs_per_rpc.
DEFAULT_MAX_PER_RPC = 500
_KEY = "bestrefs:"


def is_reference_name(value: str) -> bool:
    """True for an answer that names a file (not ``NOT FOUND ...``, ``N/A`` or empty)."""
    text = value.strip()
    return bool(text) and not text.upper().startswith("NOT FOUND") and text.upper() not in (
        "N/A", "OMIT", "UNDEFINED")


# --- deciding best references -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one header got: per-reftype answers, or a whole-call error; and who decided."""

    bestrefs: dict[str, str]
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


class BestrefsResolver:
    """Best references for headers under one context, remote or local (thread-safe)."""

    def __init__(self, cache: FileCache, *, engine: str = "auto") -> None:
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        self.cache = cache
        self.engine = engine
        self.db = cache.index.db
        self._contexts: dict[str, Any] = {}
        self._lock = threading.Lock()
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
            names = list(self.local_context(context).mapping_names())
        return names

    def local_context(self, context: str) -> Any:
        """The engine's Context for *context*, mappings read (and fetched) through the cache."""
        with self._lock:
            loaded = self._contexts.get(context)
            if loaded is None:
                loaded = cache_source(self.cache).load_context(context)
                self._contexts[context] = loaded
            return loaded

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
                parkeys = self.cache.client.get_required_parkeys(context)
            except ServerUnreachableError as exc:
                if self.engine == "remote":
                    raise
                self._server_failed(exc)
        if parkeys is None:
            parkeys = self.local_context(context).required_parkeys()
        self.db.set(key, parkeys)
        return parkeys

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
                return self._remote(context, headers, reftypes)
            except ServerUnreachableError as exc:
                if self.engine == "remote":
                    return {key: Outcome({}, "remote", str(exc)) for key in headers}
                self._server_failed(exc)
        return {key: self._local(context, header, reftypes) for key, header in headers.items()}

    def max_per_rpc(self) -> int:
        value = self.cache.server_info.get("max_bestrefs_per_rpc")
        try:
            return max(1, int(value))
        except (TypeError, ValueError):
            return DEFAULT_MAX_PER_RPC

    def _remote(self, context: str, headers: dict[str, Mapping[str, str]],
                reftypes: list[str] | None) -> dict[str, Outcome]:
        """Batched get_best_references_by_header_map; a batch refused as a whole is retried
        header by header so one bad header cannot hide the others' answers."""
        client = self.cache.client
        results: dict[str, Outcome] = {}
        keys = list(headers)
        step = self.max_per_rpc()
        for start in range(0, len(keys), step):
            batch = {key: dict(headers[key]) for key in keys[start: start + step]}
            answer: Any = {}
            if len(batch) > 1:
                try:
                    answer = client.get_best_references_by_header_map(context, batch, reftypes)
                except ServiceError as exc:
                    log.info("get_best_references_by_header_map refused the batch (%s); "
                             "asking header by header", exc)
            if not answer:
                for key, header in batch.items():
                    try:
                        answer[key] = client.get_best_references(context, header, reftypes)
                    except ServiceError as exc:
                        answer[key] = _service_message(exc)
            for key in batch:
                value = answer.get(key) if isinstance(answer, dict) else None
                results[key] = self._check_bad(context, _remote_outcome(value, key))
        return results

    def _check_bad(self, context: str, outcome: Outcome) -> Outcome:
        """crds' client-side bad-file checks for server answers (the server leaves them to
        clients): rules or a recommended reference on the bad files list fail the header
        unless CRDS_ALLOW_BAD_RULES / CRDS_ALLOW_BAD_REFERENCES."""
        if outcome.error is not None:
            return outcome
        settings = self.cache.settings
        error = bad_file_error(
            context, outcome.bestrefs, self.cache.catalog.bad_files,
            lambda: self.mapping_names(context),
            allow_bad_rules=settings.allow_bad_rules,
            allow_bad_references=settings.allow_bad_references,
        )
        return outcome if error is None else Outcome({}, outcome.engine, error)

    def _local(self, context: str, header: Mapping[str, str],
               reftypes: list[str] | None = None) -> Outcome:
        settings = self.cache.settings
        try:
            loaded = self.local_context(context)
            bestrefs = loaded.best_references(
                dict(header), reftypes, bad_files=self.cache.catalog.bad_files,
                allow_bad_references=settings.allow_bad_references,
                allow_bad_rules=settings.allow_bad_rules,
            )
        except CrdsFsError as exc:
            name = getattr(exc, "crds_name", type(exc).__name__)
            return Outcome({}, "local", f"{name}: {exc}")
        return Outcome(dict(bestrefs), "local")


def bad_file_error(context: str, bestrefs: Mapping[str, Any], bad_files: frozenset[str],
                   mapping_names: Callable[[], Iterable[str]], *, allow_bad_rules: bool,
                   allow_bad_references: bool) -> str | None:
    """crds' client-side bad-file verdict on a server's answer (None: the answer stands).

    A server leaves these checks to its clients, so every remote path (the resolver,
    `crds-fs bestrefs --remote`) applies this one.  *mapping_names* is only called when
    bad files exist and bad rules are not allowed (it may cost an RPC).
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


def _service_message(exc: ServiceError) -> str:
    message = getattr(exc, "server_message", None) or str(exc)
    name = getattr(exc, "remote_name", None)
    return f"{name}: {message}" if name else str(message)


def _remote_outcome(value: Any, key: str) -> Outcome:
    if isinstance(value, dict):
        return Outcome({str(t).lower(): str(v) for t, v in value.items()}, "remote")
    if isinstance(value, str):
        return Outcome({}, "remote", value)
    if isinstance(value, list | tuple) and len(value) == 2:
        ok, refs = value  # CRDS servers answer [True, {type: name}] or [False, "message"]
        if ok and isinstance(refs, dict):
            return Outcome({str(t).lower(): str(v) for t, v in refs.items()}, "remote")
        if not ok:
            return Outcome({}, "remote", str(refs).removeprefix("FAILED: "))
    return Outcome({}, "remote", f"the server returned no answer for '{key}'")


def cache_source(cache: FileCache) -> Any:
    """The engine's mapping source over the cache: mappings are fetched (verified) on first
    use and built ones are shared process-wide per cache folder."""
    from .compiled import compiled_cache
    from .sources import callable_source

    identity = ("crds-fs-cache", str(cache.store.root), cache.observatory)
    return callable_source(cache.ensure, identity,
                           f"crds-fs cache {cache.store.root} ({cache.observatory})",
                           cache.catalog.bad_files,
                           compiled=compiled_cache(cache.settings.cache_dir))


