"""Match-value matchers: one conditioned rmap value -> ``match(header_value) -> 1 | 0 | -1``.

1 is a match, 0 "don't care" (counts nothing), -1 eliminates the row.  The factory order and
every rule follow crds 14.0.3 (``matcher()`` in crds/core/selectors.py):

=================  =====================================================================
rmap value         meaning
=================  =====================================================================
``(regex)``        ``re.match`` of the inner text (anchored at the start only)
``{text}``         literal equality with the inner text
``#expr#``         relational; `` AND ``/`` OR `` split once into two sub-matchers
``BETWEEN lo hi``  ``>= lo AND < hi``; ``lo > hi`` is a load error
``NOT x``          inverts the sub-matcher (0 stays 0)
has ``|`` or ``*`` fnmatch alternatives, any may match the whole value
``N/A``            always 0
``>x``/``<=x``...  numeric inequality on ``float(value)``; non-numbers do not match
anything else      string equality
=================  =====================================================================

Every matcher except ``N/A`` and ``NOT`` first applies the header-side rules: a value equal
to the matcher's key, or ``*``, is a match; ``N/A`` is "don't care".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

_INEQUALITY = re.compile(r"^([><]=?)\s*([-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)")

_INEQUALITY_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def glob_parts(value: str) -> list[str]:
    """crds' glob_list: ``A | B|`` -> sorted stripped non-empty parts (esoteric values whole)."""
    if not is_esoteric(value) and "|" in value:
        return sorted(part.strip() for part in value.split("|") if part.strip())
    return [value]


def is_esoteric(value: str) -> bool:
    """True for values crds does not validate against a column's value list."""
    upper = value.upper()
    return (
        (upper.startswith(("{", "(", "#")) and upper.endswith(("}", ")", "#")))
        or upper.startswith("BETWEEN")
        or upper.startswith("NOT")
    )


class Matcher:
    """Exact matcher, and the header-side rules shared by all but N/A and NOT."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def match(self, value: str) -> int:
        if value == self.key or value == "*":
            return 1
        if value == "N/A":
            return 0
        return -1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class RegexMatcher(Matcher):
    __slots__ = ("regex",)

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.regex = re.compile(pattern)

    def match(self, value: str) -> int:
        result = Matcher.match(self, value)
        if result != -1:
            return result
        return 1 if self.regex.match(value) else -1


class GlobMatcher(RegexMatcher):
    """``A|B*|C``: fnmatch alternatives; :attr:`literals` lists them when none has wildcards."""

    __slots__ = ("literals",)

    def __init__(self, key: str) -> None:
        parts = glob_parts(key)
        super().__init__("^(" + "|".join(fnmatch.translate(part) for part in parts) + ")$")
        plain = all(not any(c in part for c in "*?[") for part in parts)
        self.literals: tuple[str, ...] | None = tuple(parts) if plain else None


class InequalityMatcher(Matcher):
    __slots__ = ("compare", "bound")

    def __init__(self, key: str) -> None:
        super().__init__(key)
        found = _INEQUALITY.match(key)
        if found is None:
            raise ValueError(f"invalid inequality match value {key!r}")
        self.compare = _INEQUALITY_OPS[found.group(1)]
        self.bound = float(found.group(2))

    def match(self, value: str) -> int:
        result = Matcher.match(self, value)
        if result != -1:
            return result
        try:
            number = float(value)
        except Exception:
            return -1
        return 1 if self.compare(number, self.bound) else -1


class BinaryMatcher(Matcher):
    """Two sub-matchers joined by AND/OR (``#...#`` relations and BETWEEN)."""

    __slots__ = ("is_and", "first", "second")

    def __init__(self, key: str, op: str) -> None:
        super().__init__(key)
        self.is_and = op == "AND"
        inner = key.strip()[1:-1] if key.strip().startswith("#") else key
        parts = [part.strip() for part in inner.split(op)]
        self.first = make_matcher(parts[0])
        self.second = make_matcher(parts[1])

    def match(self, value: str) -> int:
        value = value.upper()
        result = Matcher.match(self, value)
        if result != -1:
            return result
        first = self.first.match(value) == 1
        if self.is_and:
            return 1 if first and self.second.match(value) == 1 else -1
        return 1 if first or self.second.match(value) == 1 else -1


class NaMatcher(Matcher):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("N/A")

    def match(self, value: str) -> int:
        return 0


class NotMatcher(Matcher):
    __slots__ = ("inner",)

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.inner = make_matcher(key[len("NOT "):].strip())

    def match(self, value: str) -> int:
        return -self.inner.match(value)


def make_matcher(key: str) -> Matcher:
    """The matcher for one conditioned rmap value (crds' factory order)."""
    if key.startswith("(") and key.endswith(")"):
        return RegexMatcher(key[1:-1])
    if key.startswith("{") and key.endswith("}"):
        return Matcher(key[1:-1])
    if key.startswith("#") and key.endswith("#"):
        key = key.upper()
        if " AND " in key:
            return BinaryMatcher(key, "AND")
        if " OR " in key:
            return BinaryMatcher(key, "OR")
        return make_matcher(key[1:-1])
    if key.upper().startswith("BETWEEN"):
        parts = key.split()
        if len(parts) != 3:
            raise ValueError(f"Invalid between relation {key!r}")
        if not float(parts[1]) <= float(parts[2]):
            raise ValueError(
                f"Invalid between relation {key!r} should be 'between lower_bound upper_bound'"
            )
        return BinaryMatcher(">=" + parts[1] + " AND <" + parts[2], "AND")
    if key.upper().startswith("NOT "):
        return NotMatcher(key)
    if "|" in key or "*" in key:
        return GlobMatcher(key)
    if key == "N/A":
        return NaMatcher()
    if key.startswith((">", "<")):
        return InequalityMatcher(key)
    return Matcher(key)
