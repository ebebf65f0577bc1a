"""Built mappings: pipeline (.pmap), instrument (.imap) and reference (.rmap) rules.

Each class is built once from a :class:`~.parser.MappingDoc` and is immutable afterwards, so
built objects can be shared between contexts and threads.  :class:`ReferenceRules` holds the
per-reftype lookup procedure of crds' ``ReferenceMapping._get_best_ref`` (relevance and omit
expressions, hooks, parkey relevance, the selector tree, the HST "do not reprocess" rule,
fallback headers and ``reffile_required``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import MappingFormatError
from .conditioning import dotted_to_underscore, underscore_aliases
from .exceptions import IrrelevantReftype, whole_call_error
from .expressions import Expression, ExpressionError, compile_expression
from .hooks import resolve_hook
from .observatories import Observatory, observatory_policy
from .parser import MappingDoc, SelectorCall, format_error
from .selectors import (
    DEFAULT_SUBSTITUTIONS,
    RmapSettings,
    Selector,
    build_selector,
    restore_selector,
)

NA_VALUES = frozenset(("N/A", "TEMP_N/A", "n/a", "temp_n/a"))
OMIT_VALUES = frozenset(("OMIT", "TEMP_OMIT", "omit", "temp_n/a"))
SPECIAL_VALUES = NA_VALUES | OMIT_VALUES

_BASE_REQUIRED = ("mapping", "parkey", "name", "derived_from")


def is_special(value: Any) -> bool:
    """True for the N/A / OMIT placeholders that name no file."""
    return isinstance(value, str) and value in SPECIAL_VALUES


class HeaderView:
    """Read a mapping header the way crds' LowerCaseDict does.

    Top-level string values come back lower-cased unless wrapped in ``(...)`` (expressions
    stay case-sensitive only when fully parenthesised); nested values are untouched.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def __getitem__(self, key: str) -> Any:
        value = self.raw[key]
        if isinstance(value, str) and not (value.startswith("(") and value.endswith(")")):
            return value.lower()
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.raw else default


def _require(header: HeaderView, keys: tuple[str, ...], name: str) -> None:
    for key in keys:
        if key not in header:
            raise whole_call_error(
                MappingFormatError, "MissingHeaderKeyError",
                f"Can't load file {name} : Required header key {key!r} is missing.",
            )


class ContextRules:
    """A .pmap or .imap: header plus ``{lower-case key: child mapping name | N/A | OMIT}``."""

    child_suffix = ""
    kind = ""

    def __init__(self, doc: MappingDoc, extra_required: tuple[str, ...]) -> None:
        self.name = doc.name
        self.raw_header = doc.header
        header = HeaderView(doc.header)
        _require(header, _BASE_REQUIRED + ("observatory",) + extra_required, doc.name)
        self.observatory = str(header["observatory"])
        parkey = header["parkey"]
        if not isinstance(parkey, (tuple, list)) or not parkey:
            raise format_error(doc.name, "'parkey' must be a non-empty tuple")
        self.parkey: tuple[Any, ...] = tuple(parkey)
        self.extra_keys = tuple(header.get("extra_keys", ()))
        if not isinstance(doc.selector, dict):
            raise format_error(doc.name, f"a {self.kind} selector must be a dict literal")
        self.selections: dict[str, str] = {}
        for key, value in doc.selector.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise format_error(
                    doc.name, f"selector entry {key!r}: {value!r} must map str to str"
                )
            if not is_special(value) and not value.endswith(self.child_suffix):
                raise format_error(
                    doc.name,
                    f"selector entry {key!r} names {value!r}, which is not a "
                    f"{self.child_suffix} mapping (nor N/A or OMIT)",
                )
            self.selections[key.lower()] = value

    def children(self) -> list[str]:
        """Child mapping names (special values excluded), sorted by key like crds."""
        return [self.selections[key] for key in sorted(self.selections)
                if not is_special(self.selections[key])]


class PipelineRules(ContextRules):
    child_suffix = ".imap"
    kind = "pipeline mapping"

    def __init__(self, doc: MappingDoc) -> None:
        super().__init__(doc, ())
        self.instrument_key = str(self.parkey[0]).upper()


class InstrumentRules(ContextRules):
    child_suffix = ".rmap"
    kind = "instrument mapping"

    def __init__(self, doc: MappingDoc) -> None:
        super().__init__(doc, ("instrument",))
        self.instrument = str(HeaderView(doc.header)["instrument"])


class ReferenceRules:
    """One .rmap: the selector tree and the per-reftype lookup procedure around it."""

    kind = "reference mapping"

    def __init__(self, doc: MappingDoc, prebuilt: Any = None) -> None:
        self.name = doc.name
        self.raw_header = doc.header
        header = HeaderView(doc.header)
        _require(header, _BASE_REQUIRED + ("observatory", "instrument", "filekind"), doc.name)
        self.observatory = str(header["observatory"])
        self.instrument = str(header["instrument"])
        self.filekind = str(header["filekind"])
        self.policy: Observatory = observatory_policy(self.observatory)
        self.parkey = header["parkey"]
        if not isinstance(self.parkey, (tuple, list)):
            raise format_error(doc.name, "'parkey' must be a tuple of parameter tuples")
        self.extra_keys = tuple(header.get("extra_keys", ()))
        self.reffile_switch = str(header.get("reffile_switch", "NONE")).upper()
        self.reffile_required = str(header.get("reffile_required", "NONE")).upper()
        self.selector = self._build_selector(doc, header, prebuilt)
        self.required_parkeys = self._required_parkeys()
        self._init_expressions(header)
        hooks = header.get("hooks", None)
        if hooks and not isinstance(hooks, dict):
            raise format_error(doc.name, "'hooks' must be a dict")
        self.precondition = resolve_hook(
            self.observatory, self.instrument, self.filekind, "precondition_header", hooks)
        self.fallback = resolve_hook(
            self.observatory, self.instrument, self.filekind, "fallback_header", hooks)

    # -- construction ---------------------------------------------------------------------

    def _build_selector(self, doc: MappingDoc, header: HeaderView, prebuilt: Any) -> Selector:
        if prebuilt is None and not isinstance(doc.selector, SelectorCall):
            raise format_error(
                doc.name, "an rmap selector must be a selector call like Match({...})"
            )
        merge = header.get("merge_overlaps", None)
        settings = RmapSettings(
            name=doc.name,
            merge_overlaps=True if merge is None else str(merge).upper() in ("TRUE", "1"),
            substitutions=_substitutions(header.get("substitutions", {}), doc.name),
        )
        if prebuilt is not None:  # from the compiled cache: built from this text before
            return restore_selector(prebuilt, settings)
        try:
            return build_selector(doc.selector, tuple(self.parkey), settings)
        except MappingFormatError:
            raise
        except Exception as exc:  # crds reports these as "Can't load file <name> : <error>"
            raise format_error(doc.name, str(exc)) from None
        finally:
            settings.clear_scratch()

    def _required_parkeys(self) -> list[str]:
        parkeys: list[str] = []
        for key in self.parkey:
            if isinstance(key, tuple):
                parkeys += list(key)
            else:
                parkeys.append(key)
        if self.reffile_switch != "NONE":
            parkeys.append(self.reffile_switch)
        parkeys.extend(self.extra_keys)
        parkeys.extend(self.policy.extra_keys)
        return parkeys

    def _init_expressions(self, header: HeaderView) -> None:
        relevance = header.get("rmap_relevance", "always")
        self.relevance = self._expression(
            relevance.replace("always", "True") if isinstance(relevance, str) else relevance)
        self.omit = self._expression(header.get("rmap_omit", "False"))
        # Header-independent expressions (the usual True/False) are decided once, here.
        self._omit_constant = _constant_truth(self.omit)
        self._relevance_constant = _constant_truth(self.relevance)
        comment_parkeys = tuple(str(n).lower() for n in header.get("comment_parkeys", ()))
        sources = dict(header.get("parkey_relevance", {}))
        sources.update({name: "keep_comments" for name in comment_parkeys})
        self.parkey_relevance: dict[str, Expression] = {
            str(name).lower(): self._expression(source) for name, source in sources.items()
        }
        # (parkey, expression) in required-parkey order, as crds evaluates them.
        self._relevance_pairs = [
            (parkey, self.parkey_relevance[parkey.lower()]) for parkey in self.required_parkeys
            if parkey.lower() in self.parkey_relevance
        ]

    def _expression(self, source: Any) -> Expression:
        try:
            return compile_expression(dotted_to_underscore(source, self.required_parkeys)
                                      if isinstance(source, str) else source)
        except ExpressionError as exc:
            raise format_error(repr(self.name), str(exc)) from None

    # -- lookup ---------------------------------------------------------------------------

    def best_ref(self, header_in: Mapping[str, Any], expr_header: Mapping[str, Any],
                 memo: dict) -> Any:
        """The result value for this reftype: a filename, ``NOT FOUND ...`` or None (omit).

        *header_in* is the instrument-level minimized header, *expr_header* the same with
        ``_`` aliases of dotted keys (what relevance/omit expressions see).
        """
        try:
            omit = self._omit_constant
            if omit is None:
                omit = _safe_truth(self.omit, expr_header, default=False)
            if omit:
                return None
            relevant = self._relevance_constant
            if relevant is None:
                relevant = _safe_truth(self.relevance, expr_header, default=True)
            if not relevant:
                return "NOT FOUND n/a"
            header = self.precondition(dict(header_in)) if self.precondition else header_in
            if self._relevance_pairs:
                header = self.irrelevant_to_na(header)
            try:
                chosen = self.selector.choose(header, memo)
            except Exception as first:
                dnr = self.policy.do_not_reprocess
                if dnr is not None and dnr(header):
                    return "NOT FOUND n/a"
                if self.fallback is None:  # the common case, without re-raising
                    if self.reffile_required in ("YES", "NONE"):
                        return "NOT FOUND " + str(first)
                    return "NOT FOUND n/a"
                chosen = self._second_try(header_in, first, memo)
        except IrrelevantReftype:
            return "NOT FOUND n/a"
        except Exception as exc:
            return "NOT FOUND " + str(exc)
        if chosen.__class__ is str:
            if chosen in NA_VALUES:
                return "NOT FOUND n/a"
            if chosen in OMIT_VALUES:
                return None
        return chosen

    def _second_try(self, header_in: Mapping[str, Any], first: Exception, memo: dict) -> Any:
        """Fallback header (if a hook gives one), then reffile_required decides.

        As in crds, an error raised by the fallback hook itself is not subject to
        ``reffile_required``; only the failure of the second selection is.
        """
        fallback = self.fallback(dict(header_in)) if self.fallback else None
        try:
            if not fallback:
                raise first
            return self.selector.choose(self.irrelevant_to_na(self.minimize(fallback)), memo)
        except Exception as exc:
            if self.reffile_required in ("YES", "NONE"):
                raise exc from None
            raise IrrelevantReftype() from exc

    def minimize(self, header: Mapping[str, Any]) -> dict[str, Any]:
        """Only this rmap's parameters (missing ones as UNDEFINED), after FITS translation."""
        translated = self.policy.fits_to_parkeys(header)
        return {key: translated.get(key.lower(), translated.get(key.upper(), "UNDEFINED"))
                for key in self.required_parkeys}

    def irrelevant_to_na(self, header: Mapping[str, Any]) -> Mapping[str, Any]:
        """Set parameters whose parkey_relevance expression is false to N/A."""
        if not self._relevance_pairs:
            return header
        names = dict(header)
        for key in self.required_parkeys:
            if key not in names or names[key] in ("UNDEFINED", None):
                names[key] = "UNDEFINED"
        names = underscore_aliases(names)
        names["keep_comments"] = False
        result = dict(header)
        for parkey, expression in self._relevance_pairs:
            if not expression.evaluate(names):
                result[parkey] = "N/A"
        return result

    def reference_names(self) -> set[str]:
        return {name for name in self.selector.reference_names() if not is_special(name)}


def _constant_truth(expression: Expression) -> bool | None:
    if not expression.is_constant:
        return None
    return bool(expression.evaluate({}))


def _safe_truth(expression: Expression, names: Mapping[str, Any], *, default: bool) -> bool:
    """Evaluate a relevance/omit expression; crds only warns on errors and uses *default*."""
    try:
        return bool(expression.evaluate(names))
    except Exception:
        return default


def _substitutions(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise format_error(name, "'substitutions' must be a dict")
    table: dict[str, Any] = dict(DEFAULT_SUBSTITUTIONS)
    table.update(value)
    return table


def build_rules(doc: MappingDoc, prebuilt: Any = None
                ) -> PipelineRules | InstrumentRules | ReferenceRules:
    """Build the rules object for a parsed mapping, by file extension like crds.

    *prebuilt*: an rmap's exported selector tree (compiled cache) to restore instead of
    building it from ``doc.selector``.
    """
    if prebuilt is not None:
        if not doc.name.endswith(".rmap"):
            raise ValueError("only reference mappings have a prebuilt selector")
        return ReferenceRules(doc, prebuilt)
    if doc.name.endswith(".pmap"):
        return PipelineRules(doc)
    if doc.name.endswith(".imap"):
        return InstrumentRules(doc)
    if doc.name.endswith(".rmap"):
        return ReferenceRules(doc)
    raise format_error(doc.name, "mapping names must end in .pmap, .imap or .rmap")


__all__ = [
    "ContextRules", "HeaderView", "InstrumentRules", "NA_VALUES", "OMIT_VALUES",
    "PipelineRules", "ReferenceRules", "SPECIAL_VALUES", "build_rules", "is_special",
    "underscore_aliases",
]
