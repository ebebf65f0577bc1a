"""Contexts: a loaded .pmap and, on demand, its instruments (imap + all their rmaps).

:meth:`Context.load` takes a ``loader(name) -> str`` (mapping text, or raise
``MissingMappingError``).  Loading is lazy per instrument, like crds: the pmap at once, an
instrument's imap and *all* of its rmaps the first time a header names that instrument
(crds needs every rmap to compute the instrument's required parameters, so one broken rmap
fails every lookup for that instrument, as it does in crds).

Contexts are immutable from the outside and thread-safe: built mapping objects are
immutable and shared, the lazy loading runs under a lock.  Pass ``memo`` (any
``MutableMapping``) to share built mappings between contexts of the same source; the engine
itself keeps no global state.

Two lookup entry points:

* :meth:`Context.compute_best_references` = crds' ``hv_best_references`` (what a CRDS
  server answers), no bad-file checks;
* :meth:`Context.best_references` = crds' ``getrecommendations``: parameter screening, Roman
  key prefixing, then the bad-rules / bad-reference checks against ``bad_files``.
"""

from __future__ import annotations

import gc
import pprint
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import (
    BadReferenceError,
    BadRulesError,
    ChecksumError,
    ConfigError,
    LookupFailure,
    MissingInstrumentError,
    UnknownInstrumentError,
)
from .compiled import pack, text_key, unpack
from .conditioning import (
    condition_header,
    condition_value,
    screen_parameters,
    underscore_aliases,
)
from .exceptions import whole_call_error
from .observatories import (
    INSTRUMENT_ALIASES,
    INSTRUMENT_FIXERS,
    INSTRUMENT_KEYWORDS,
    KeywordAmbiguityError,
    Observatory,
    identity_parkeys,
    observatory_policy,
)
from .parser import MAX_MAPPING_CHARS, format_error, parse_mapping
from .rules import (
    NA_VALUES,
    OMIT_VALUES,
    InstrumentRules,
    PipelineRules,
    ReferenceRules,
    build_rules,
    is_special,
)

Loader = Callable[[str], str]


class CompiledStore(Protocol):
    """Where compiled mappings are kept (see :mod:`.compiled`); the engine only hands it
    bytes.  Implementations do the I/O and must not raise: a failed get is a miss.

    ``put`` receives a function making the entry's bytes, so a store can pack and write
    entries after the load (off the caller's critical path); it must ignore exceptions
    from it (an entry that cannot be packed is simply not stored).
    """

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, make: Callable[[], bytes]) -> None: ...

    def discard(self, key: str) -> None: ...

BestRefs = dict[str, Any]
_MISSING = object()
_SIMPLE = (str, float, int, bool)
_STR_TYPE = frozenset((str,))


@dataclass(frozen=True, eq=False)
class _Built:
    """A memo entry: the built rules and crds' checksum complaint about the text (if any)."""

    rules: PipelineRules | InstrumentRules | ReferenceRules
    checksum_error: str | None


@dataclass(frozen=True, eq=False)
class Instrument:
    """An instrument of a context with all of its rmaps loaded."""

    imap: InstrumentRules
    rmaps: dict[str, ReferenceRules]
    required_parkeys: list[str]

    def header_keys(self, instrument_key: str) -> list[tuple[str, str, str]]:
        """(key, key.lower(), key.upper()) for every key of the minimized header."""
        return [(key, key.lower(), key.upper()) for key in [*self.required_parkeys, instrument_key]]

    def mapping_names(self) -> list[str]:
        return list(self.closure)

    @property
    def closure(self) -> tuple[str, ...]:
        """Sorted names of the imap and its rmaps (computed once)."""
        names = self.__dict__.get("_closure")
        if names is None:
            names = tuple(sorted({self.imap.name, *(r.name for r in self.rmaps.values())}))
            object.__setattr__(self, "_closure", names)
        return names


class _Store:
    """Loads and builds mappings once per store (and per shared memo), under a lock."""

    def __init__(self, loader: Loader, ignore_checksum: bool,
                 memo: MutableMapping[Any, Any] | None, max_chars: int,
                 compiled: CompiledStore | None = None) -> None:
        self.loader = loader
        self.compiled = compiled
        self.ignore_checksum = ignore_checksum
        self.memo: MutableMapping[Any, Any] = memo if memo is not None else {}
        self.max_chars = max_chars
        self.lock = threading.RLock()

    def rules(self, name: str) -> Any:
        entry = self.memo.get(name)
        if entry is None:
            with self.lock:
                entry = self.memo.get(name)
                if entry is None:
                    text = self.loader(name)
                    with _gc_paused():
                        entry = self._build(text, name)
                    self.memo[name] = entry
        if entry.checksum_error and not self.ignore_checksum:
            raise whole_call_error(ChecksumError, "ChecksumError", entry.checksum_error)
        return entry.rules

    def _build(self, text: str, name: str) -> _Built:
        """Parse and build one mapping, or restore it from the compiled store.

        The compiled entry is keyed by the SHA-1 of the text, so a changed file is a new
        key; it is written only after the mapping parsed and built successfully, so a
        restore reproduces a successful build.  An entry that fails to restore (damaged,
        foreign) is discarded and the mapping is built from its text again, which also
        rewrites the entry.
        """
        compiled = self.compiled
        if compiled is None or not isinstance(text, str) or len(text) > self.max_chars:
            doc = parse_mapping(text, name, max_chars=self.max_chars)
            return _Built(build_rules(doc), doc.checksum_error)
        key = text_key(text)
        data = compiled.get(key)
        if data is not None:
            try:
                doc, prebuilt = unpack(data, name)
                return _Built(build_rules(doc, prebuilt), doc.checksum_error)
            except Exception:  # noqa: BLE001 - damaged or foreign entry: rebuild from the text
                compiled.discard(key)
        doc = parse_mapping(text, name, max_chars=self.max_chars)
        rules = build_rules(doc)
        selector = rules.selector if isinstance(rules, ReferenceRules) else None
        compiled.put(key, lambda: pack(doc, selector))  # (built objects are immutable)
        return _Built(rules, doc.checksum_error)

    def instrument(self, imap_name: str) -> Instrument:
        key = ("instrument", imap_name)
        found = self.memo.get(key)
        if found is not None:
            for rmap_name in found.imap.children():
                self.rules(rmap_name)  # re-checks checksums for a strict store
            self.rules(imap_name)
            return found
        with self.lock, _gc_paused():  # one pause for the imap and all its rmaps
            imap = self.rules(imap_name)
            if not isinstance(imap, InstrumentRules):
                raise format_error(imap_name, "is not an instrument mapping (.imap)")
            rmaps: dict[str, ReferenceRules] = {}
            parkeys = set(imap.parkey) | set(imap.extra_keys)
            for reftype in sorted(imap.selections):
                value = imap.selections[reftype]
                if is_special(value):
                    continue
                rmap = self.rules(value)
                if not isinstance(rmap, ReferenceRules):
                    raise format_error(value, "is not a reference mapping (.rmap)")
                rmaps[reftype] = rmap
                parkeys |= set(rmap.required_parkeys)
            found = Instrument(imap, rmaps, sorted(parkeys))
            self.memo[key] = found
        return found


class Context:
    """A pipeline context (.pmap): ask it for best references and what it contains."""

    def __init__(self, store: _Store, pmap: PipelineRules) -> None:
        self._store = store
        self._pmap = pmap
        self.name = pmap.name
        self.observatory = pmap.observatory
        self.instrument_key = pmap.instrument_key
        self.policy: Observatory = observatory_policy(pmap.observatory)
        self._instruments: dict[str, Instrument] = {}  # verified instruments, by name
        self._header_keys: dict[str, list[tuple[str, str, str]]] = {}
        self._bad_mappings: dict[tuple[str, frozenset[str]], list[str]] = {}
        self._instrument_keys = (self.instrument_key.upper(), self.instrument_key.lower(),
                                 *INSTRUMENT_KEYWORDS)
        self._translate = (None if self.policy.fits_to_parkeys is identity_parkeys
                           else self.policy.fits_to_parkeys)
        self._plans: dict[str, list[tuple[str, Any, str | None]]] = {}

    @classmethod
    def load(cls, name: str, loader: Loader, *, ignore_checksum: bool = False,
             memo: MutableMapping[Any, Any] | None = None,
             max_chars: int = MAX_MAPPING_CHARS,
             compiled: CompiledStore | None = None) -> Context:
        """Load pipeline context *name* through *loader* (instruments load on demand).

        *compiled* (optional) keeps parsed mappings between processes (see
        :class:`CompiledStore`); answers are the same with or without it.
        """
        if not isinstance(name, str) or not name.endswith(".pmap"):
            raise ConfigError(f"{name!r} is not a pipeline context name (*.pmap)")
        store = _Store(loader, ignore_checksum, memo, max_chars, compiled)
        pmap = store.rules(name)
        if not isinstance(pmap, PipelineRules):
            raise format_error(name, "is not a pipeline mapping")
        return cls(store, pmap)

    def __repr__(self) -> str:
        return f"Context({self.name!r})"

    # -- contents -------------------------------------------------------------------------

    @property
    def header(self) -> Mapping[str, Any]:
        """The pmap header as written."""
        return self._pmap.raw_header

    def instruments(self) -> list[str]:
        """Instrument names (lower case) that have an instrument mapping."""
        return sorted(k for k, v in self._pmap.selections.items() if not is_special(v))

    def instrument(self, instrument: str) -> Instrument:
        """The loaded instrument (imap and all rmaps); raises for unknown instruments."""
        found = self._instruments.get(instrument)
        if found is not None:
            return found
        key = instrument.lower()
        key = INSTRUMENT_ALIASES.get(key, key)
        value = self._pmap.selections.get(key)
        if value is None:
            raise whole_call_error(
                UnknownInstrumentError, "CrdsUnknownInstrumentError",
                f"Unknown instrument {key!r} for context {self.name!r}",
            )
        if is_special(value):
            raise whole_call_error(
                UnknownInstrumentError, "CrdsUnknownInstrumentError",
                f"Instrument {key!r} is {value} in context {self.name!r}",
            )
        found = self._store.instrument(value)
        self._instruments[instrument] = found
        return found

    def reftypes(self, instrument: str) -> list[str]:
        """All reftypes (lower case) of *instrument*, including N/A and OMIT ones."""
        return sorted(self.instrument(instrument).imap.selections)

    def mapping_names(self) -> list[str]:
        """Sorted closure of mapping names, including this pmap (loads everything)."""
        names = {self.name}
        for instrument in self.instruments():
            names.update(self.instrument(instrument).mapping_names())
        return sorted(names)

    def reference_names(self) -> list[str]:
        """Sorted reference file names named anywhere in the context (loads everything)."""
        names: set[str] = set()
        for instrument in self.instruments():
            for rmap in self.instrument(instrument).rmaps.values():
                names |= rmap.reference_names()
        return sorted(names)

    def required_parkeys(self) -> dict[str, list[str]]:
        """``{instrument: [pmap parkey, ...sorted union of its rmaps' parameters]}`` (RPC)."""
        return {instrument: [*self._pmap.parkey, *self.instrument(instrument).required_parkeys]
                for instrument in self.instruments()}

    # -- best references -------------------------------------------------------------------

    def compute_best_references(self, header: Mapping[str, Any],
                                reftypes: Iterable[str] | None = None) -> BestRefs:
        """crds ``hv_best_references``: ``{reftype: filename | "NOT FOUND ..."}``.

        Whole-call failures (no/unknown instrument, unloadable mappings) raise
        ``LookupFailure`` / ``MappingError`` subclasses carrying ``crds_name``.
        """
        return self._compute(condition_header(header), reftypes)

    def _compute(self, conditioned: dict[str, str], reftypes: Iterable[str] | None) -> BestRefs:
        if reftypes is None:
            self.instrument(self._find_instrument(conditioned))
            include: list[str] = []
        elif isinstance(reftypes, str):
            raise TypeError("reftypes must be a list of reftype names, not a string")
        else:
            include = [str(reftype) for reftype in reftypes]
        minimal = self._minimize(conditioned)
        return self._best_refs(minimal, include)

    def best_references(self, header: Mapping[str, Any], reftypes: Iterable[str] | None = None,
                        *, bad_files: Iterable[str] = frozenset(),
                        allow_bad_references: bool = False,
                        allow_bad_rules: bool = False) -> BestRefs:
        """crds ``getrecommendations``: like :meth:`compute_best_references` plus the checks.

        Raises ``BadRulesError`` if the instrument's mappings include a file of *bad_files*,
        ``BadReferenceError`` if a recommended reference is in it (unless allowed).
        """
        if self.policy.prepare_parameters is not None:
            parameters = self.policy.prepare_parameters(screen_parameters(header))
            conditioned = condition_header(parameters)
        else:  # screening and conditioning in one pass (the common case)
            parameters = header
            if not set(map(type, header)) <= _STR_TYPE:
                for key in header:
                    if not isinstance(key, str):
                        raise TypeError(f"Non-string key {key!r} in parameters.")
            condition = condition_value
            conditioned = {key.upper(): condition(value) for key, value in header.items()
                           if isinstance(value, _SIMPLE)}
        refs = self._compute(conditioned, reftypes)
        instrument = _header_to_instrument(parameters)
        bad = frozenset(bad_files)
        if bad:
            self._check_bad_rules(instrument, bad, allow_bad_rules)
        for reftype, ref in refs.items():
            if not isinstance(ref, str):
                raise whole_call_error(
                    LookupFailure, "TypeError",
                    f"expected str, bytes or os.PathLike object, not {type(ref).__name__}",
                )
            if not bad:
                continue
            base = ref.rpartition("/")[2]  # os.path.basename (even of "NOT FOUND n/a")
            if base in bad and not allow_bad_references:
                raise whole_call_error(
                    BadReferenceError, "CrdsBadReferenceError",
                    f"Recommended reference {base!r} of type {reftype!r} "
                    "is designated scientifically invalid.",
                )
        return refs

    def bad_mappings(self, instrument: str, bad_files: Iterable[str]) -> list[str]:
        """Mappings of *instrument*'s closure (else of the whole context) in *bad_files*."""
        bad = bad_files if isinstance(bad_files, frozenset) else frozenset(bad_files)
        key = (instrument, bad)
        found = self._bad_mappings.get(key)
        if found is None:
            try:
                names = set(self.instrument(instrument).closure)
            except Exception:
                names = set(self.mapping_names())
            found = sorted(names & bad)
            if len(self._bad_mappings) > 256:
                self._bad_mappings.clear()
            self._bad_mappings[key] = found
        return list(found)

    def _check_bad_rules(self, instrument: str, bad: frozenset[str], allow: bool) -> None:
        contained = self.bad_mappings(instrument, bad)
        if contained and not allow:
            raise whole_call_error(
                BadRulesError, "CrdsBadRulesError",
                f"Final context {self.name!r} is marked as scientifically invalid based on: "
                + pprint.pformat(contained),
            )

    # -- internals --------------------------------------------------------------------------

    def _find_instrument(self, header: Mapping[str, Any]) -> str:
        key = self.instrument_key
        for name in self._instrument_keys:
            value = header.get(name)
            if value is not None and value.upper() != "UNDEFINED":
                return value.upper()
        raise whole_call_error(
            MissingInstrumentError, "CrdsError",
            f"Missing {key!r} keyword in header for determining instrument.",
        )

    def _minimize(self, conditioned: Mapping[str, str]) -> dict[str, Any]:
        try:
            # HST/Roman translation is the identity: skip the copy (nothing mutates it).
            translated = self._translate(conditioned) if self._translate else conditioned
        except KeywordAmbiguityError as exc:
            raise whole_call_error(LookupFailure, "AssertionError", str(exc)) from None
        instrument = self.instrument(self._find_instrument(translated))
        keys = self._header_keys.get(instrument.imap.name)
        if keys is None:
            keys = self._header_keys[instrument.imap.name] = instrument.header_keys(
                self.instrument_key)
        minimal: dict[str, Any] = {}
        get = translated.get
        for key, lower, upper in keys:
            value = get(lower, _MISSING)
            minimal[key] = get(upper, "UNDEFINED") if value is _MISSING else value
        return minimal

    def _best_refs(self, header: dict[str, Any], include: list[str]) -> BestRefs:
        instrument = self.instrument(self._find_instrument(header))
        expr_header = underscore_aliases(header)
        memo: dict[Any, Any] = {}
        refs: BestRefs = {}
        plan = self._plan(instrument) if not include else [
            self._step(instrument, reftype.lower()) for reftype in include]
        for reftype, rmap, fixed in plan:
            if rmap is None:
                if fixed is not None:
                    refs[reftype] = fixed
                continue
            ref = rmap.best_ref(header, expr_header, memo)
            if ref is not None:
                refs[reftype] = ref
        return refs

    def _plan(self, instrument: Instrument) -> list[tuple[str, Any, str | None]]:
        """(reftype, rmap | None, fixed answer | None) for every imap entry, in imap order."""
        plan = self._plans.get(instrument.imap.name)
        if plan is None:
            plan = [self._step(instrument, reftype) for reftype in instrument.imap.selections]
            self._plans[instrument.imap.name] = plan
        return plan

    @staticmethod
    def _step(instrument: Instrument, reftype: str) -> tuple[str, Any, str | None]:
        value = instrument.imap.selections.get(reftype)
        if value is None:
            return reftype, None, f"NOT FOUND Unknown reference type {reftype!r}"
        if value in NA_VALUES:
            return reftype, None, "NOT FOUND n/a"
        if value in OMIT_VALUES:
            return reftype, None, None
        return reftype, instrument.rmaps[reftype], None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while one mapping is parsed and built.

    ``ast.parse`` allocates ~100k GC-tracked nodes per MB of mapping text; none can form a
    reference cycle (they are freed by reference counting), yet the collector would scan
    them over and over, costing about a fifth of the load time.  The pause lasts one
    mapping (milliseconds); the collector is re-enabled only if it was enabled before.
    """
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _header_to_instrument(parameters: Mapping[str, Any]) -> str:
    """crds' utils.header_to_instrument on the raw (screened) parameters (bad-file checks)."""
    value: Any = None
    for key in INSTRUMENT_KEYWORDS:
        found = parameters.get(key.upper())
        if found is not None and not isinstance(found, _SIMPLE):
            found = None  # screened away by crds before this point
        if found is None:
            found = parameters.get(key.lower())
            if found is not None and not isinstance(found, _SIMPLE):
                found = None
        if found is not None and found not in ("undefined", "UNDEFINED"):
            value = found
            break
    value = INSTRUMENT_FIXERS.get(value, value) if isinstance(value, str) else value
    if value is None:
        raise whole_call_error(
            LookupFailure, "KeyError", "'No instrument keyword defined in header.'"
        )
    if not isinstance(value, str):
        raise whole_call_error(
            LookupFailure, "AttributeError",
            f"{type(value).__name__!r} object has no attribute 'upper'",
        )
    return value.upper()


def mapping_required_parkeys(name: str, loader: Loader, *, ignore_checksum: bool = False,
                             memo: MutableMapping[Any, Any] | None = None,
                             compiled: CompiledStore | None = None) -> Any:
    """get_required_parkeys RPC for any mapping: pmap -> dict, imap/rmap -> list."""
    if name.endswith(".pmap"):
        context = Context.load(name, loader, ignore_checksum=ignore_checksum, memo=memo,
                               compiled=compiled)
        return context.required_parkeys()
    store = _Store(loader, ignore_checksum, memo, MAX_MAPPING_CHARS, compiled)
    if name.endswith(".imap"):
        return list(store.instrument(name).required_parkeys)
    rules = store.rules(name)
    if isinstance(rules, ReferenceRules):
        return list(rules.required_parkeys)
    raise format_error(name, "is not a mapping name (.pmap, .imap or .rmap)")
