"""Selector classes: the nested decision tree of an rmap, reimplemented from crds 14.0.3.

Each selector is built once from parsed mapping data (:class:`~.parser.SelectorCall`) and is
immutable afterwards (the only mutable parts are thread-safe caches of pure results).
``choose(header, memo)`` returns a leaf (a filename string, ``'N/A'``, a tuple of tied
filenames, ...) or raises one of the engine exceptions whose *kind* decides what the caller
does next (see :mod:`.exceptions`).

Behaviour kept from crds on purpose, because it defines today's answers:

* Match validates every header value against the values present in its column before
  matching; an unknown value is an error unless the column has ``*``/``ANY``/``N/A`` or an
  esoteric value.
* Match weighs a row by the number of columns that positively match; ``N/A`` counts 0, every
  other kind of match (exact, ``*``, glob, range, NOT) counts 1.  The best weight group is
  tried first; on a lookup failure of its nested selector the next group is tried.  Ties
  merge nested UseAfters (union of dates; on equal dates the greater filename wins) or return
  a tuple of tied leaves.
* UseAfter compares the reformatted dataset date with its keys *as strings*.

Performance: Match columns are indexed at load time.  Exact values (and ``A|B|C`` literal
alternatives) go into a dict value -> bitmask of rows, so one header value costs one dict
lookup per column; only globs, regexes, ranges and NOT values are evaluated per header.
"""

from __future__ import annotations

import ast
import operator
import re
import struct
import sys
import threading
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import Any

from .conditioning import condition_value
from .dates import parse_date, reformat_date
from .exceptions import (
    AmbiguousMatchError,
    InvalidDatetimeError,
    MatchingError,
    SelectorLookupError,
    UseAfterError,
    ValidationError,
    VersionAfterError,
)
from .matchers import (
    GlobMatcher,
    Matcher,
    NaMatcher,
    glob_parts,
    is_esoteric,
    make_matcher,
)
from .parser import SelectorCall

#: Built-in substitutions crds applies to every rmap (header ``substitutions`` add to them).
DEFAULT_SUBSTITUTIONS: dict[str, dict[Any, Any]] = {
    "META.SUBARRAY.NAME": {"GENERIC": "N/A"},
    "SUBARRAY": {"GENERIC": "N/A"},
}

_VERSION = re.compile(r"^(\d{1,8}(\.\d{1,8}(\.\d{1,8})?)?)[a-zA-Z0-9_\+\-\.]{0,128}$")

Memo = dict  # per-lookup scratch space (parsed dates), owned by one call

#: Match results are memoised per tuple of column values (a pure function of them); the
#: memo is emptied when it reaches this size, bounding memory per selector.
_GROUP_CACHE_SIZE = 1024


class RmapSettings:
    """The rmap-header facts selectors need, read once with crds' lower-casing rules."""

    __slots__ = ("name", "merge_overlaps", "substitutions", "scratch")

    def __init__(self, name: str, merge_overlaps: bool, substitutions: Mapping[str, Any]):
        self.name = name
        self.merge_overlaps = merge_overlaps
        self.substitutions = substitutions
        # Build-time memo of pure per-value work (conditioning, matcher classification);
        # rmaps repeat the same few values thousands of times.  Emptied after the build.
        self.scratch: dict[str, dict[Any, Any]] = {
            "classify": {}, "cell": {}, "cond": {}, "cond_str": {}}

    def clear_scratch(self) -> None:
        for table in self.scratch.values():
            table.clear()


def build_selector(call: SelectorCall, levels: tuple[Any, ...], settings: RmapSettings) -> Selector:
    """Instantiate the selector tree of *call*; ``levels`` is the rmap ``parkey`` tuple."""
    if not levels:
        raise IndexError("tuple index out of range")
    selections: dict[Any, Any] = {}
    for key, value in call.entries.items():
        if isinstance(value, SelectorCall):
            selections[key] = build_selector(value, levels[1:], settings)
        else:
            selections[key] = value
    return SELECTOR_CLASSES[call.kind](levels[0], selections, settings)


# ---------------------------------------------------------------------------------------------


class Selector:
    """Common construction (substitutions, key conditioning, sorting) and the choose loop."""

    short_name = "Selector"

    def __init__(self, parameters: Any, selections: dict[Any, Any] | None,
                 settings: RmapSettings, merged: list[tuple[Any, Any]] | None = None) -> None:
        if not isinstance(parameters, (list, tuple)):
            raise AssertionError("parameters should be a list or tuple of header keys")
        self.parameters: tuple[str, ...] = tuple(parameters)
        self.settings = settings
        if merged is not None:
            self.selections = merged
        else:
            assert selections is not None
            substituted = self._substitute(selections)
            if type(self).condition_key is Selector.condition_key:
                # Identity conditioning: dict keys are already unique.
                self.selections = sorted(substituted.items())
            else:
                conditioned = [(self.condition_key(k), v) for k, v in substituted.items()]
                _check_duplicates(conditioned)
                self.selections = sorted(conditioned)
        self.keys = [key for key, _ in self.selections]
        self.parkey_map = self.get_parkey_map()

    # -- construction helpers -------------------------------------------------------------

    def _substitute(self, selections: dict[Any, Any]) -> dict[Any, Any]:
        substitutions = self.settings.substitutions
        if not any(keyword in substitutions for keyword in self.parameters):
            return selections
        selections = dict(selections)
        for keyword in self.parameters:
            if keyword not in substitutions:
                continue
            table = substitutions[keyword]
            for match in list(selections):
                if isinstance(match, tuple):
                    which = self.parameters.index(keyword)
                    old = match[which]
                    if old not in table:
                        continue
                    new_match = list(match)
                    new_match[which] = _as_tuple(table[old])
                    selections[tuple(new_match)] = selections.pop(match)
                elif match in table:
                    selections[_as_tuple(table[match])] = selections.pop(match)
        return selections

    def condition_key(self, key: Any) -> Any:
        return key

    def get_parkey_map(self) -> dict[str, Any]:
        """crds' per-parameter list of values in use ([] = unchecked)."""
        return self._parkey_map(lambda value: (is_esoteric(value), set(glob_parts(value))))

    def _parkey_map(
        self, cell: Callable[[Any], tuple[bool, set[str] | frozenset[str]]]
    ) -> dict[str, Any]:
        """crds' parkey-map loop; *cell* gives (esoteric?, values) of one key element."""
        parmap: dict[str, Any] = {}
        count = len(self.parameters)
        for i, par in enumerate(self.parameters):
            if par not in parmap:
                parmap[par] = set()
            for key in self.keys:
                if not isinstance(key, tuple):
                    key = (key,)
                if len(key) != count:
                    raise ValidationError(
                        self.short_name + " key=" + repr(key)
                        + " is wrong length for parameters " + repr(self.parameters)
                    )
                esoteric, parts = cell(key[i])
                if esoteric:
                    parmap[par] = []
                    break
                parmap[par] |= parts
        return {par: sorted(values) for par, values in parmap.items()}

    # -- lookup ---------------------------------------------------------------------------

    def choose(self, header: Mapping[str, Any], memo: Memo) -> Any:
        self._check_defined(header)
        lookup = self.validate_header(header, memo)
        last: Exception | None = None
        for choice in self.candidates(lookup, header):
            try:
                return choose_value(choice, header, memo)
            except SelectorLookupError as exc:
                last = exc
        more = " last exception: " + str(last) if last else ""
        raise SelectorLookupError("All lookup attempts failed." + more)

    def _check_defined(self, header: Mapping[str, Any]) -> None:
        for name in self.parameters:
            if name in header or name not in self.parkey_map:
                continue
            if "N/A" not in self.parkey_map[name]:
                raise ValidationError(
                    self.short_name + " required lookup parameter " + repr(name) + " is undefined."
                )

    def validate_header(self, header: Mapping[str, Any], memo: Memo) -> Any:
        raise NotImplementedError

    def candidates(self, lookup: Any, header: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def merge(self, other: Any) -> Selector:
        raise AmbiguousMatchError(
            "More than one match was found at the same weight and "
            + self.short_name + " does not support merging."
        )

    # -- introspection --------------------------------------------------------------------

    def reference_names(self) -> set[str]:
        """Every leaf filename reachable from this selector."""
        names: set[str] = set()
        for _, choice in self.selections:
            if isinstance(choice, Selector):
                names |= choice.reference_names()
            elif isinstance(choice, str):
                names.add(choice)
            elif isinstance(choice, tuple):
                names.update(str(c) for c in choice)
            elif isinstance(choice, dict):
                names.update(str(c) for c in choice.values())
        return names

    def __repr__(self) -> str:
        return f"{self.short_name}({self.parameters!r}, n={len(self.selections)})"


def choose_value(choice: Any, header: Mapping[str, Any], memo: Memo) -> Any:
    """A leaf as is, or the choice of a nested selector."""
    if isinstance(choice, Selector):
        return choice.choose(header, memo)
    return choice


def _as_tuple(replacement: Any) -> Any:
    return tuple(replacement) if isinstance(replacement, list) else replacement


def _check_duplicates(items: list[tuple[Any, Any]]) -> None:
    seen: set[Any] = set()
    for key, _ in items:
        if key in seen:
            raise ValueError("Key " + repr(key) + " appears more than once ")
        seen.add(key)


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


# ---------------------------------------------------------------------------------------------


class _Column:
    """One Match parameter: indexed matchers plus the data to validate header values."""

    __slots__ = ("name", "exact", "exact_all", "na", "special", "valid", "valid_set", "lenient")

    def __init__(self, name: str, valid: Any) -> None:
        self.name = name
        self.exact: dict[str, int] = {}
        self.exact_all = 0
        self.na = 0
        self.special: dict[str, list[Any]] = {}
        self.set_valid(valid)

    def set_valid(self, valid: Any) -> None:
        """The column's values in use (crds' parkey map entry; [] = unchecked)."""
        self.valid = valid
        self.valid_set = frozenset(valid) if isinstance(valid, list) else frozenset()
        self.lenient = not valid or any(w in self.valid_set for w in ("*", "ANY", "N/A"))

    def add(self, key: str, rows: int, scratch: dict[Any, Any]) -> None:
        """Index the rows (a bitmask) whose value in this column is *key*."""
        found = scratch.get(key)
        kind, payload = found if found is not None else _classify(key, scratch)
        if kind == "exact":
            exact = self.exact
            for part in payload:
                exact[part] = exact.get(part, 0) | rows
            self.exact_all |= rows
        elif kind == "na":
            self.na |= rows
        else:
            entry = self.special.setdefault(key, [payload, 0])
            entry[1] |= rows

    def statuses(self, value: str) -> tuple[int, int]:
        """(rows matching with 1, rows matching with 0) for header *value*."""
        if value == "*":
            ones, zeros = self.exact_all, self.na
        elif value == "N/A":
            ones, zeros = 0, self.exact_all | self.na
        else:
            ones, zeros = self.exact.get(value, 0), self.na
        for matcher, mask in self.special.values():
            status = matcher.match(value)
            if status == 1:
                ones |= mask
            elif status == 0:
                zeros |= mask
        return ones, zeros


#: First characters / upper-case prefixes that make a Match value more than a plain literal
#: (matchers, esoteric values); "NOT" without the space covers both _classify and is_esoteric.
_SPECIAL_FIRST = ("(", "{", "#", ">", "<")
_SPECIAL_WORDS = ("BETWEEN", "NOT")


def _classify(key: str, scratch: dict[Any, Any]) -> tuple[str, Any]:
    """("exact", values) | ("na", None) | ("special", matcher) for one conditioned value."""
    upper = key.upper()
    special_prefix = (key.startswith(("(", "{", "#", ">", "<"))
                      or upper.startswith("BETWEEN") or upper.startswith("NOT "))
    if key == "N/A":
        result: tuple[str, Any] = ("na", None)
    elif not special_prefix and "|" not in key and "*" not in key:
        result = ("exact", (key,))  # make_matcher() would build a plain Matcher
    elif not special_prefix and "*" not in key and not any(c in key for c in "?["):
        result = ("exact", tuple(glob_parts(key)))  # 'A|B|C': literal alternatives
    else:
        matcher = make_matcher(key)
        kind = type(matcher)
        if kind is Matcher:
            result = ("exact", (matcher.key,))
        elif kind is NaMatcher:
            result = ("na", None)
        elif kind is GlobMatcher and matcher.literals is not None:  # type: ignore[attr-defined]
            result = ("exact", matcher.literals)  # type: ignore[attr-defined]
        else:
            result = ("special", matcher)
    scratch[key] = result
    return result


def _cell_info(cell: Any, scratch: dict[Any, Any]) -> tuple[bool, frozenset[str]]:
    """(is esoteric, glob parts) of one conditioned Match value (for the parkey map)."""
    found = scratch.get(cell)
    if found is None:
        found = scratch[cell] = (is_esoteric(cell), frozenset(glob_parts(cell)))
    return found


class MatchSelector(Selector):
    """Parameter tuple -> choice, with validation, weighting, ties and fallback."""

    short_name = "Match"

    def __init__(self, parameters: Any, selections: dict[Any, Any], settings: RmapSettings):
        self._fused = False
        super().__init__(parameters, selections, settings)
        self.choices = [choice for _, choice in self.selections]
        self.all_rows = (1 << len(self.selections)) - 1
        if self._fused:
            self._index_columns(settings)
        else:
            self.columns = [_Column(name, self.parkey_map[name]) for name in self.parameters]
            scratch = settings.scratch["classify"]
            for row, key in enumerate(self.keys):
                bit = 1 << row
                for column, value in zip(self.columns, key, strict=False):
                    column.add(value, bit, scratch)
        self._merged: dict[tuple[int, ...], Any] = {}
        self._groups: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
        self._lock = threading.Lock()
        self._values = _tuple_getter(self.parameters)

    def _index_columns(self, settings: RmapSettings) -> None:
        """Parkey map (any esoteric value -> [] i.e. unchecked) and column indexes, per column
        over its distinct values: rmaps repeat a few values across thousands of rows."""
        if not self.keys:  # no rows at all: nothing to index, nothing to check
            self.columns = [_Column(name, []) for name in self.parameters]
            self.parkey_map = {name: [] for name in self.parameters}
            return
        cells = settings.scratch["cell"]
        classify = settings.scratch["classify"]
        self.columns = []
        for name, column_cells in zip(self.parameters, zip(*self.keys, strict=True),
                                      strict=True):
            rows_by_value: dict[str, int] = {}
            for row, cell in enumerate(column_cells):
                rows_by_value[cell] = rows_by_value.get(cell, 0) | (1 << row)
            values: set[str] | None = set()
            column = _Column(name, [])
            exact = column.exact
            for cell, rows in rows_by_value.items():
                if (cell != "N/A" and "|" not in cell and "*" not in cell
                        and not cell.startswith(_SPECIAL_FIRST)
                        and not cell.upper().startswith(_SPECIAL_WORDS)):
                    # A plain literal (most cells): what _classify() and _cell_info() would
                    # find, ("exact", (cell,)) and (not esoteric, {cell}), without the calls.
                    exact[cell] = exact.get(cell, 0) | rows
                    column.exact_all |= rows
                    if values is not None:
                        values.add(cell)
                    continue
                column.add(cell, rows, classify)
                if values is not None:
                    esoteric, parts = _cell_info(cell, cells)
                    if esoteric:
                        values = None
                    else:
                        values |= parts
            valid = [] if values is None else sorted(values)
            column.set_valid(valid)
            self.parkey_map[name] = valid
            self.columns.append(column)

    def choose(self, header: Mapping[str, Any], memo: Memo) -> Any:
        """Validate, rank rows, try weight groups best first (same as the generic loop)."""
        try:
            values = self._values(header)
        except KeyError:  # some parameter is absent: crds' "undefined" rules apply
            self._check_defined(header)
            values = tuple([header.get(column.name, "UNDEFINED") for column in self.columns])
        groups = self._groups.get(values)
        if groups is None:
            for column, value in zip(self.columns, values, strict=True):
                if value not in column.valid_set and not column.lenient:
                    self._validate_value(column.name, value, column.valid)
            groups = self._weight_groups(values)
            if len(self._groups) >= _GROUP_CACHE_SIZE:
                self._groups.clear()
            self._groups[values] = groups
        for rows in groups:
            if len(rows) > 1:
                if not self.settings.merge_overlaps:
                    raise AmbiguousMatchError("More than one match clause matched.")
                choice = self._combine(rows)
            else:
                choice = self.choices[rows[0]]
            if not isinstance(choice, Selector):
                return choice
            try:
                return choice.choose(header, memo)
            except SelectorLookupError:
                continue
        raise MatchingError("No match found.")

    def condition_key(self, key: Any) -> tuple[str, ...]:
        strings = self.settings.scratch["cond_str"]
        scratch = self.settings.scratch["cond"]
        elements = key if isinstance(key, tuple) else (key,)
        conditioned = []
        for element in elements:
            if element.__class__ is str:
                value = strings.get(element)
                if value is None:
                    value = strings[element] = _condition_element(element)
                conditioned.append(value)
                continue
            # type is part of the memo key: 1, 1.0 and True are equal but condition apart.
            memo_key = (element.__class__, element)
            try:
                value = scratch.get(memo_key)
            except TypeError:  # unhashable element (a list): no memo
                value = None
            if value is None:
                value = _condition_element(element)
                try:
                    scratch[memo_key] = value
                except TypeError:
                    pass
            conditioned.append(value)
        return tuple(conditioned)

    def get_parkey_map(self) -> dict[str, Any]:
        """As Selector.get_parkey_map, with per-value results memoised during the build.

        In the usual case (distinct parameter names, every key of the right length) the map
        is computed by :meth:`_index_columns` in the same pass that indexes the columns;
        crds' loop below only runs when it could raise or order could matter.
        """
        count = len(self.parameters)
        if (count and len(set(self.parameters)) == count
                and all(len(key) == count for key in self.keys)):
            self._fused = True
            return {}
        scratch = self.settings.scratch["cell"]
        return self._parkey_map(lambda value: _cell_info(value, scratch))

    def _validate_value(self, name: str, value: Any, valid: list[str]) -> None:
        """crds' runtime value check, including its odd corners (NOT prefixes, substitutions)."""
        if value in valid or condition_value(value) in valid:
            return
        if "*" in valid or "ANY" in valid or "N/A" in valid or not valid:
            return
        if value.startswith("NOT"):
            self._validate_value(name, value[len("NOT"):].strip(), valid)
            return
        if is_esoteric(value) or value in ("*", "ANY", "N/A"):
            return
        if len(valid) == 1 and ":" in valid[0]:
            low, high = (float(x) for x in valid[0].split(":"))
            if low <= float(value) <= high:
                return
            raise ValidationError(
                " parameter=" + repr(name) + " value =" + repr(value)
                + " is not in range [" + str(low) + " .. " + str(high) + "]"
            )
        substitutions = self.settings.substitutions
        if name in substitutions and value in substitutions[name]:
            self._validate_value(name, substitutions[name][value], valid)
            return
        raise ValidationError(
            " parameter=" + repr(name) + " value=" + repr(value) + " is not in " + repr(valid)
        )

    def _weight_groups(self, values: tuple[str, ...]) -> list[tuple[int, ...]]:
        """Surviving rows grouped by weight (most positive matches first), rows in key order."""
        alive = self.all_rows
        positives: list[int] = []
        for column, value in zip(self.columns, values, strict=True):
            ones, zeros = column.statuses(value)
            alive &= ones | zeros
            if not alive:
                return []
            positives.append(ones)
        groups: dict[int, list[int]] = {}
        row = 0
        remaining = alive
        while remaining:
            if remaining & 1:
                bit = 1 << row
                weight = sum(1 for ones in positives if ones & bit)
                groups.setdefault(weight, []).append(row)
            remaining >>= 1
            row += 1
        return [tuple(groups[w]) for w in sorted(groups, reverse=True)]

    def _combine(self, rows: tuple[int, ...]) -> Any:
        choices = [self.choices[row] for row in rows]
        if not isinstance(choices[0], Selector):
            return tuple(choices)
        merged = self._merged.get(rows)
        if merged is None:
            combined = choices[0]
            for other in choices[1:]:
                combined = combined.merge(other)
            with self._lock:
                merged = self._merged.setdefault(rows, combined)
        return merged



def _tuple_getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """Fast ``lambda header: tuple(header[n] for n in names)`` (KeyError when one is absent)."""
    if not names:
        return lambda header: ()
    if len(names) == 1:
        name = names[0]
        return lambda header: (header[name],)
    return operator.itemgetter(*names)  # type: ignore[return-value]


def _condition_element(element: Any) -> str:
    if isinstance(element, str):
        if (element.startswith("{") and element.endswith("}")) or (
            element.startswith("(") and element.endswith(")")
        ):
            return element
        if "|" in element:
            return "|".join(condition_value(part) for part in glob_parts(element))
        return condition_value(element)
    if isinstance(element, (tuple, list)):
        return "|".join(condition_value(part) for part in element)
    return condition_value(element)


# ---------------------------------------------------------------------------------------------


class UseAfterSelector(Selector):
    """Greatest date key <= the dataset date, compared as strings (crds' behaviour)."""

    short_name = "UseAfter"
    error_class: type[SelectorLookupError] = UseAfterError

    def get_parkey_map(self) -> dict[str, Any]:
        self._values = _tuple_getter(self.parameters)
        return {par: "*" for par in self.parameters}

    def choose(self, header: Mapping[str, Any], memo: Memo) -> Any:
        if type(self) is not UseAfterSelector:
            return Selector.choose(self, header, memo)
        try:
            raw_values = self._values(header)
        except KeyError:
            for name in self.parameters:
                if name not in header:
                    raise ValidationError(
                        "UseAfter required lookup parameter " + repr(name) + " is undefined."
                    ) from None
            raise
        date = memo.get(raw_values)  # the same date keywords recur in every rmap of a lookup
        if date is None:
            date = _reformat_cached(self._raw_date(header), self.parameters, self.short_name,
                                    memo)
            memo[raw_values] = date
        index = bisect_right(self.keys, date) - 1
        if index < 0:
            raise UseAfterError("No selection <= " + repr(date))
        choice = self.selections[index][1]
        if not isinstance(choice, Selector):
            return choice
        try:
            return choice.choose(header, memo)
        except SelectorLookupError as exc:
            raise SelectorLookupError(
                "All lookup attempts failed. last exception: " + str(exc)) from None

    def validate_header(self, header: Mapping[str, Any], memo: Memo) -> Any:
        raw = self._raw_date(header)
        return _reformat_cached(raw, self.parameters, self.short_name, memo)

    def _raw_date(self, header: Mapping[str, Any]) -> str:
        parts = []
        for par in self.parameters:
            value = header[par].strip()
            if value == "UNDEFINED":
                raise InvalidDatetimeError("UseAfter parameter", repr(par), "is UNDEFINED.")
            parts.append(value)
        return " ".join(parts)

    def candidates(self, date: Any, header: Any) -> Any:
        index = bisect_right(self.keys, date) - 1
        if index < 0:
            raise self.error_class("No selection <= " + repr(date))
        yield self.selections[index][1]

    def merge(self, other: Any) -> Selector:
        if not isinstance(other, Selector):
            # crds reads other._selections: a tied plain leaf (e.g. 'N/A') fails like this.
            raise AttributeError(f"{type(other).__name__!r} object has no attribute '_selections'")
        merged: list[tuple[Any, Any]] = []
        mine, theirs = list(self.selections), list(other.selections)
        i = j = 0
        while i < len(mine) and j < len(theirs):
            own, oth = mine[i], theirs[j]
            if own[0] < oth[0]:
                merged.append(own)
                i += 1
            elif oth[0] < own[0]:
                merged.append(oth)
                j += 1
            else:  # same date: the greater filename wins (own on equality)
                merged.append(own if own[1] >= oth[1] else oth)
                i += 1
                j += 1
        merged.extend(mine[i:])
        merged.extend(theirs[j:])
        return type(self)(self.parameters, None, self.settings, merged=merged)


def _reformat_cached(raw: str, parameters: tuple[str, ...], short_name: str, memo: Memo) -> str:
    cached = memo.get(raw)
    if cached is not None:
        return cached
    try:
        result = reformat_date(raw)
    except Exception as exc:
        raise ValidationError(
            short_name, "Invalid date/time format for", repr(parameters),
            "value =", repr(raw), "exception is", repr(str(exc)),
        ) from exc
    memo[raw] = result
    return result


class VersionAfterSelector(UseAfterSelector):
    """Greatest version key <= the dataset's software version (3-int tuples)."""

    short_name = "VersionAfter"
    error_class = VersionAfterError

    def condition_key(self, key: Any) -> tuple[int, ...]:
        return _version_tuple(key)

    def validate_header(self, header: Mapping[str, Any], memo: Memo) -> Any:
        raw = "|".join(glob_parts(".".join(header[par] for par in self.parameters)))
        return _version_tuple(raw)


def _version_tuple(version: Any) -> tuple[int, ...]:
    if not (isinstance(version, str) and _VERSION.match(version)):
        raise AssertionError("Invalid version string " + repr(version))
    parts = _VERSION.match(version).group(1).split(".")  # type: ignore[union-attr]
    numbers = tuple(int(x, base=10) for x in parts[:3])
    return numbers + (0,) * (3 - len(numbers))


class ClosestTimeSelector(UseAfterSelector):
    """The date key nearest in absolute time (single precision, earliest key on ties)."""

    short_name = "ClosestTime"

    def candidates(self, date: Any, header: Any) -> Any:
        target = parse_date(date)
        deltas = [_float32(abs((target - parse_date(key)).total_seconds())) for key in self.keys]
        yield self.selections[deltas.index(min(deltas))][1]


class GeometricallyNearestSelector(Selector):
    """The numeric key nearest the header value (single precision, first on ties)."""

    short_name = "GeometricallyNearest"

    def condition_key(self, key: Any) -> str:
        return condition_value(key)

    def validate_header(self, header: Mapping[str, Any], memo: Memo) -> Any:
        return _number(self.short_name, self.parameters[0], header[self.parameters[0]])

    def candidates(self, value: float, header: Any) -> Any:
        target = _float32(value)
        deltas = [abs(_float32(_float32(float(key)) - target)) for key in self.keys]
        yield self.selections[deltas.index(min(deltas))][1]


class BracketSelector(Selector):
    """The pair of choices bracketing the header value (exact key -> the same choice twice)."""

    short_name = "Bracket"

    def get_parkey_map(self) -> dict[str, Any]:
        return {}

    def validate_header(self, header: Mapping[str, Any], memo: Memo) -> Any:
        return _number(self.short_name, self.parameters[0], header[self.parameters[0]])

    def candidates(self, value: float, header: Any) -> Any:
        index = 0
        count = len(self.selections)
        while index < count and value > self.keys[index]:
            index += 1
        if index == count:
            low = high = count - 1
        elif index == 0 or value == self.keys[index]:
            low = high = index
        else:
            low, high = index - 1, index
        yield _Bracket(self.selections[low][1], self.selections[high][1], low == high)

    def choose(self, header: Mapping[str, Any], memo: Memo) -> Any:
        self._check_defined(header)
        lookup = self.validate_header(header, memo)
        last: Exception | None = None
        for pair in self.candidates(lookup, header):
            try:
                first = choose_value(pair.low, header, memo)
                second = first if pair.same else choose_value(pair.high, header, memo)
                return (first, second)
            except SelectorLookupError as exc:
                last = exc
        more = " last exception: " + str(last) if last else ""
        raise SelectorLookupError("All lookup attempts failed." + more)


class _Bracket:
    __slots__ = ("low", "high", "same")

    def __init__(self, low: Any, high: Any, same: bool) -> None:
        self.low, self.high, self.same = low, high, same


def _number(short_name: str, name: str, value: Any) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise ValidationError(
            short_name, "Invalid number for", repr(name), "value =", repr(value)
        ) from exc


class VersionRelation:
    """``<X``, ``=X``, ``==X``, ``X`` or ``default``; X a number or tuple literal."""

    __slots__ = ("text", "relation", "version")

    def __init__(self, text: Any) -> None:
        self.text = str(text)
        if self.text.replace("=", "").strip() == "default":
            self.relation, self.version = "=", sys.maxsize
            return
        if not self.text.startswith(("<", "=")):
            self.text = "=" + self.text
        relation = "<" if self.text.startswith("<") else "="
        rest = self.text[2:] if self.text[:2] in ("<=", "==") else self.text[1:]
        if self.text.startswith("<="):
            relation = "<="
        self.relation = relation
        try:
            self.version = ast.literal_eval(rest.strip())
        except (ValueError, SyntaxError) as exc:
            raise ValidationError("Invalid version expression in:", repr(self.text)) from exc

    def _key(self, other: Any) -> tuple[tuple[Any, str], tuple[Any, str]]:
        if not isinstance(other, VersionRelation):
            other = VersionRelation(str(other))
        numbers = (int, float)
        if not (
            (isinstance(self.version, numbers) and isinstance(other.version, numbers))
            or isinstance(self.version, type(other.version))
        ):
            raise ValidationError(
                "Incompatible version expression types:", str(self.version), "and",
                str(other.version),
            )
        return (self.version, self.relation), (other.version, other.relation)

    def __lt__(self, other: Any) -> bool:
        mine, theirs = self._key(other)
        return mine < theirs

    def __eq__(self, other: object) -> bool:
        mine, theirs = self._key(other)
        return mine == theirs

    def __hash__(self) -> int:
        return hash((self.version, self.relation))

    def __repr__(self) -> str:
        return f"VersionRelation({self.text!r})"


class SelectVersionSelector(Selector):
    """The first relation not less than the header version (``default`` sorts last)."""

    short_name = "SelectVersion"

    def condition_key(self, key: Any) -> VersionRelation:
        return key if isinstance(key, VersionRelation) else VersionRelation(key)

    def get_parkey_map(self) -> dict[str, Any]:
        return {}

    def validate_header(self, header: Mapping[str, Any], memo: Memo) -> Any:
        value = header[self.parameters[0]]
        if value.replace("=", "").strip() != "default":
            _number(self.short_name, self.parameters[0], value)
        return value

    def candidates(self, version: Any, header: Any) -> Any:
        index = 0
        while self.selections[index][0] < version:
            index += 1
        yield self.selections[index][1]


SELECTOR_CLASSES: dict[str, Callable[..., Selector]] = {
    "Match": MatchSelector,
    "UseAfter": UseAfterSelector,
    "VersionAfter": VersionAfterSelector,
    "SelectVersion": SelectVersionSelector,
    "ClosestTime": ClosestTimeSelector,
    "GeometricallyNearest": GeometricallyNearestSelector,
    "Bracket": BracketSelector,
}


# -- built selectors as plain data (the compiled-context cache) -------------------------------
#
# A built selector tree is exported as nested tuples of plain values and restored without
# conditioning, sorting or indexing again.  Exported node: (b"S", short name, parameters,
# selections, parkey map, match columns | None) where selections is [(key, value), ...] in
# built (sorted) order; a value that is itself a selector is such a node, a VersionRelation
# key is (b"V", text).  Parsed mapping data never holds bytes, so a tuple starting with bytes
# is never a leaf.  Everything else a selector holds is derived (keys, choices, getters) or
# a per-process cache (merged ties, weight groups, locks), rebuilt on restore.

_EXPORTED_FIELDS = frozenset(("parameters", "selections", "parkey_map", "_fused", "columns",
                              "settings", "keys", "choices", "all_rows", "_merged", "_groups",
                              "_lock", "_values"))


class NotExportable(ValueError):
    """A selector holding state this exporter does not know (the caller keeps the parse)."""


def export_selector(selector: Selector) -> tuple[Any, ...]:
    """*selector* (just built, before any lookup) as plain data for :func:`restore_selector`.

    Leaves are not inspected: they come from the parse (plain data), and marshal refuses
    anything else, which makes the caller keep the parse instead.
    """
    state = selector.__dict__
    unknown = set(state) - _EXPORTED_FIELDS
    if unknown or type(selector) not in _CLASS_NAMES:
        raise NotExportable(f"{type(selector).__name__} holds {sorted(unknown)}")
    nested = any(issubclass(kind, Selector)
                 for kind in set(map(type, map(_SECOND, selector.selections))))
    versions = isinstance(selector, SelectVersionSelector)
    if nested or versions:
        selections: list[tuple[Any, Any]] = [
            ((b"V", key.text) if versions else key,
             export_selector(value) if isinstance(value, Selector) else value)
            for key, value in selector.selections]
    else:
        selections = selector.selections
    columns = None
    if isinstance(selector, MatchSelector):
        columns = (selector._fused, [
            (c.name, c.exact, c.exact_all, c.na, [(key, rows) for key, (_, rows)
                                                   in c.special.items()], c.valid)
            for c in selector.columns])
    return (b"S", _CLASS_NAMES[type(selector)], selector.parameters, selections,
            selector.parkey_map, columns, nested)


def restore_selector(node: Any, settings: RmapSettings) -> Selector:
    """The selector exported as *node* (raises ValueError/TypeError when it is malformed)."""
    if type(node) is not tuple or len(node) != 7 or node[0] != b"S":
        raise ValueError("not an exported selector")
    _, kind, parameters, selections, parkey_map, columns, nested = node
    cls = SELECTOR_CLASSES[kind]
    selector = cls.__new__(cls)  # type: ignore[call-overload]
    selector.parameters = tuple(parameters)
    selector.settings = settings
    if type(selections) is not list or type(parkey_map) is not dict:
        raise TypeError("malformed exported selector")
    if nested:
        selections = [(key, restore_selector(value, settings)
                       if type(value) is tuple and value and type(value[0]) is bytes else value)
                      for key, value in selections]
    if cls is SelectVersionSelector:
        selections = [(VersionRelation(key[1]), value) for key, value in selections]
    selector.selections = selections
    selector.keys = [key for key, _ in selections]
    selector.parkey_map = parkey_map
    if isinstance(selector, UseAfterSelector):
        selector._values = _tuple_getter(selector.parameters)
    if isinstance(selector, MatchSelector):
        _restore_match(selector, columns)
    return selector


def _restore_match(selector: MatchSelector, columns: Any) -> None:
    fused, exported = columns
    selector._fused = bool(fused)
    selector.choices = [choice for _, choice in selector.selections]
    selector.all_rows = (1 << len(selector.selections)) - 1
    selector.columns = []
    classify: dict[Any, Any] = {}
    for name, exact, exact_all, na, special, valid in exported:
        column = _Column.__new__(_Column)
        column.name = name
        column.exact = exact
        column.exact_all = exact_all
        column.na = na
        column.special = {key: [_classify(key, classify)[1], rows] for key, rows in special}
        column.set_valid(valid)
        selector.columns.append(column)
    if len(selector.columns) != len(selector.parameters):
        raise ValueError("column count differs from the parameters")
    selector._merged = {}
    selector._groups = {}
    selector._lock = threading.Lock()
    selector._values = _tuple_getter(selector.parameters)


_SECOND = operator.itemgetter(1)
_CLASS_NAMES: dict[type, str] = {cls: name for name, cls in SELECTOR_CLASSES.items()}
