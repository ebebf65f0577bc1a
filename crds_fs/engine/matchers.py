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

Hostile regexes: Python's ``re`` backtracks, so ``((A|AA)+$)`` takes seconds per lookup and
doubles with every few characters of the header value (crds has the same problem).  A
``(regex)`` value is therefore checked when the rmap is built (:func:`check_regex`) and
refused with a MappingFormatError naming the file when it could backtrack without bound
(a repeated group holding a repetition or an alternation, a backreference, more than
:data:`MAX_REGEX_REPEATS` unbounded repetitions, or a pattern longer than
:data:`MAX_REGEX_CHARS`); header values longer than :data:`MAX_REGEX_INPUT` characters
never match a ``(regex)`` value.  Together these bound one regex match to milliseconds.
Real rmaps use no ``(regex)`` values at all.
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


#: Longest ``(regex)`` pattern accepted in an rmap (characters).
MAX_REGEX_CHARS = 1000
#: Most unbounded repetitions (``*``, ``+``, ``{n,}``, ``{n,m}`` with m > 1) in one pattern;
#: k consecutive ones cost up to ~n^k steps on an n-character value.
MAX_REGEX_REPEATS = 3
#: Longest header value tested against a ``(regex)`` value; longer values do not match.
MAX_REGEX_INPUT = 256


class HostileRegexError(ValueError):
    """A ``(regex)`` match value that could take unbounded time to match."""


def _scan_repeat(pattern: str, index: int) -> tuple[bool, int]:
    """(is the quantifier at *index* a repetition of more than once, index after it)."""
    char = pattern[index]
    if char in "*+":
        repeats, end = True, index + 1
    elif char == "?":
        return False, index + 1
    else:  # "{": {m}, {m,}, {,n}, {m,n}; anything else is a literal brace for re
        close = pattern.find("}", index)
        body = pattern[index + 1:close] if close > 0 else ""
        low, comma, high = body.partition(",")
        if close < 0 or not (low.isdigit() or (comma and not low)) or (
                high and not high.isdigit()) or (not comma and not low):
            return False, index + 1
        if comma and not high:
            repeats = True
        else:
            top = int(high if comma else low)
            if top > MAX_REGEX_CHARS:
                raise HostileRegexError(f"repetition count {top} is over {MAX_REGEX_CHARS}")
            repeats = top > 1
        end = close + 1
    if end < len(pattern) and pattern[end] in "?+":  # lazy / possessive forms
        end += 1
    return repeats, end


def check_regex(pattern: str) -> None:
    """Raise HostileRegexError when *pattern* could backtrack without bound (see module doc).

    A conservative scan of the pattern text: groups are tracked on a stack with whether
    their body repeats or alternates; a repeated group whose body does either is refused
    (``(A|AA)+``, ``(a+)+``), as are backreferences and too many repetitions overall.
    """
    if len(pattern) > MAX_REGEX_CHARS:
        raise HostileRegexError(f"pattern is {len(pattern)} characters, over {MAX_REGEX_CHARS}")
    stack: list[list[bool]] = [[False, False]]  # per open group: [repeats inside, has "|"]
    repeats = 0
    last_group: list[bool] | None = None  # the group that just closed (quantifier target)
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            follower = pattern[index + 1:index + 2]
            if follower.isdigit() and follower != "0":
                raise HostileRegexError("backreferences are not allowed")
            last_group = None
            index += 2
            continue
        if char == "[":  # a character class: skip to its end
            end = index + 1
            if pattern[end:end + 1] == "^":
                end += 1
            if pattern[end:end + 1] == "]":
                end += 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            last_group = None
            index = end + 1
            continue
        if char == "(":
            if pattern.startswith("(?P=", index):
                raise HostileRegexError("backreferences are not allowed")
            stack.append([False, False])
            last_group = None
            index += 1
            continue
        if char == ")" and len(stack) > 1:
            last_group = stack.pop()
            index += 1
            if index < len(pattern) and pattern[index] in "*+?{":
                repeated, index = _scan_repeat(pattern, index)
                if repeated:
                    if last_group[0] or last_group[1]:
                        raise HostileRegexError(
                            "a repeated group contains a repetition or alternatives "
                            "(nested quantifiers backtrack exponentially)")
                    repeats += 1
                    stack[-1][0] = True
                if last_group[0]:
                    stack[-1][0] = True
            elif last_group[0]:
                stack[-1][0] = True
            continue
        if char == "|":
            stack[-1][1] = True
        elif char in "*+{" and index > 0:
            repeated, end = _scan_repeat(pattern, index)
            if repeated:
                repeats += 1
                stack[-1][0] = True
            index = end
            continue
        index += 1
    if repeats > MAX_REGEX_REPEATS:
        raise HostileRegexError(
            f"{repeats} unbounded repetitions, over the limit of {MAX_REGEX_REPEATS}")


class RegexMatcher(Matcher):
    __slots__ = ("regex", "bounded")

    def __init__(self, pattern: str, *, trusted: bool = False) -> None:
        super().__init__(pattern)
        if not trusted:
            try:
                check_regex(pattern)
            except HostileRegexError as exc:
                raise HostileRegexError(
                    f"Match value '({pattern})' is refused: {exc}; such a regex can take "
                    "minutes per lookup (limits: docs/limits.md)") from None
        self.regex = re.compile(pattern)
        self.bounded = not trusted

    def match(self, value: str) -> int:
        result = Matcher.match(self, value)
        if result != -1:
            return result
        if self.bounded and len(value) > MAX_REGEX_INPUT:
            return -1
        return 1 if self.regex.match(value) else -1


class GlobMatcher(RegexMatcher):
    """``A|B*|C``: fnmatch alternatives; :attr:`literals` lists them when none has wildcards."""

    __slots__ = ("literals",)

    def __init__(self, key: str) -> None:
        parts = glob_parts(key)
        # fnmatch's translation is linear-time (it avoids nested repetition), so trusted.
        super().__init__("^(" + "|".join(fnmatch.translate(part) for part in parts) + ")$",
                         trusted=True)
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
