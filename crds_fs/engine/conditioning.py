"""Value and header conditioning exactly as crds 14.0.3 does it (pure functions).

crds normalises both the dataset header and every rmap match value with the same value
conditioner, so ``2``, ``'2'``, ``' 2.00 '`` and ``2.0`` all compare equal as ``'2.0'``.  The
rules (and their quirks) define today's answers, so they are reproduced literally:

* ``str()``, strip, upper-case;
* numbers (``[-+]digits[.digits][e±digits]`` or ``digits.``) become ``str(float(x))``;
* anything that *starts* with ``-2147483648`` + one char + ``0``, ``()``, ``N/A`` or ``NOT
  APPLICABLE``, or equals ``NOT_APPLICABLE``, becomes ``N/A`` (crds' regex alternation only
  anchors its first and last branch, so e.g. ``N/AXYZ`` is also ``N/A``);
* ``ANY`` -> ``*``; ``4294967295.0`` -> ``-1.0``; ``T``/``TRUE`` -> ``T``; ``F``/``FALSE`` -> ``F``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

# Same language as crds' NUMBER_RE: an optional sign, digits with an optional fraction and
# exponent, or digits followed by a bare dot.
_NUMBER = re.compile(r"^(?:[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[+-]?[0-9]+\.)$")

# crds' DONT_CARE_RE is "^-2147483648.0|\(\)|N/A|NOT APPLICABLE|NOT_APPLICABLE$" used with
# re.match: every branch is anchored at the start, only the last one at the end.
_DONT_CARE = re.compile(r"-2147483648.0|\(\)|N/A|NOT APPLICABLE|NOT_APPLICABLE$")

_SPECIAL = {"ANY": "*", "4294967295.0": "-1.0", "T": "T", "TRUE": "T", "F": "F", "FALSE": "F"}

# First characters that can start a number / a don't-care value (cheap pre-tests).
_NUMBER_START = frozenset("+-.0123456789")
_DONT_CARE_START = frozenset("-(N")


def condition_value(value: Any) -> str:
    """Normalise one header or rmap value to the string form crds matches on."""
    try:
        return _condition_memo(value)
    except TypeError:  # unhashable: not memoisable
        return _condition(value)


def _condition(value: Any) -> str:
    text = str(value).strip().upper()
    if not text:
        return text
    if text[0] in _NUMBER_START and _NUMBER.match(text):
        text = str(float(text))
    if text[0] in _DONT_CARE_START and _DONT_CARE.match(text):
        return "N/A"
    return _SPECIAL.get(text, text)


# Header values repeat across datasets (PERFORM, OMIT, detector names, ...).  typed=True
# keeps 1, 1.0 and True apart: they are equal as keys but condition differently.
_condition_memo = lru_cache(maxsize=65536, typed=True)(_condition)


def condition_header(header: Mapping[str, Any]) -> dict[str, str]:
    """Upper-case every key and condition every value (later duplicate keys win, like crds)."""
    upper = {str(key).upper(): value for key, value in header.items()}
    condition = condition_value
    return {key: condition(value) for key, value in upper.items()}


def screen_parameters(header: Mapping[Any, Any]) -> dict[str, Any]:
    """Drop values that are not str/int/float/bool, as crds' parameter screening does.

    crds asserts that keys are strings; we raise TypeError with the same intent.
    """
    screened: dict[str, Any] = {}
    for key, value in header.items():
        if not isinstance(key, str):
            raise TypeError(f"Non-string key {key!r} in parameters.")
        if isinstance(value, (str, float, int, bool)):
            screened[key] = value
    return screened


def underscore_aliases(header: Mapping[str, Any]) -> dict[str, Any]:
    """Header plus ``META_X_Y`` aliases for dotted keys, so expressions can name them."""
    result = dict(header)
    if "." not in "".join(header):  # HST: no dotted keys (a C-speed check)
        return result
    for key in list(header):
        alias = key.replace(".", "_")
        if alias != key:
            result[alias] = header[key]
    return result


def dotted_to_underscore(source: str, parkeys: Iterable[str]) -> str:
    """Rewrite dotted parkey names inside expression text to their underscore aliases.

    crds does a plain substring replace for every dotted required parkey, in order.
    """
    seen: dict[str, str] = {}
    for key in parkeys:
        alias = key.replace(".", "_")
        if alias != key:
            seen[key] = alias
    for key, alias in seen.items():
        source = source.replace(key, alias)
    return source
