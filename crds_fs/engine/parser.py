"""Mapping text -> plain data, by walking Python's own parse tree (never eval/exec/compile).

A mapping (.pmap/.imap/.rmap) is a tiny subset of Python::

    header = { ...literal dict... }
    comment = '''optional text'''
    selector = { ...literal dict... }            # pmap / imap
    selector = Match({ key : UseAfter({...}) })  # rmap: nested selector calls

crds checks the parse tree against a whitelist and then *executes* the text.  We only use
``ast.parse`` and convert the tree ourselves, accepting exactly:

* statements: assignments to ``header``, ``selector`` or ``comment`` (a later assignment
  replaces an earlier one, as executing the text would) and bare string constants;
* expressions: dict/tuple/list displays, str/int/float/bool/None constants, negative numbers,
  and calls ``Match|UseAfter|VersionAfter|SelectVersion|ClosestTime|GeometricallyNearest|
  Bracket({...})`` with exactly one dict argument.

Anything else (names, attribute access, subscripts, lambdas, comprehensions, f-strings,
operators, imports, other calls, ...) is a :class:`MappingFormatError` naming the file and line.

Duplicate dict keys follow Python dict-display semantics, like crds (which executes the
text): the *last* value wins, kept at the position (and with the key object) of the first
occurrence.  Keys that are equal in Python (``1``, ``1.0``, ``True``) collapse the same way.

Limits keep hostile input bounded: text over :data:`MAX_MAPPING_CHARS` is refused before
parsing, nesting deeper than :data:`MAX_DEPTH` is refused while converting.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any

from ..errors import MappingFormatError
from .checksum import mapping_checksum
from .exceptions import whole_call_error

#: Largest mapping text accepted (characters).  The largest real mapping (HST synphot
#: thruput) is ~0.4 MB; 16 MiB leaves 40x headroom while bounding parse memory (~20x text).
MAX_MAPPING_CHARS = 16 * 1024 * 1024

#: Deepest literal nesting accepted (real rmaps nest ~6 levels).
MAX_DEPTH = 64

SELECTOR_NAMES = frozenset(
    ("Match", "UseAfter", "VersionAfter", "SelectVersion", "ClosestTime",
     "GeometricallyNearest", "Bracket")
)

_SECTIONS = ("header", "selector", "comment")


class SelectorCall:
    """One selector call of an rmap: its class name, entries (key -> value) and source line.

    Treat as immutable.  A slotted class rather than a frozen dataclass because rmaps hold
    thousands of calls and a frozen dataclass' ``__init__`` (``object.__setattr__`` per
    field) costs several times more.
    """

    __slots__ = ("kind", "entries", "line")

    def __init__(self, kind: str, entries: dict[Any, Any], line: int) -> None:
        self.kind = kind
        self.entries = entries
        self.line = line

    def __repr__(self) -> str:
        return f"SelectorCall(kind={self.kind!r}, entries={self.entries!r}, line={self.line!r})"


@dataclass(frozen=True, eq=False)
class MappingDoc:
    """A parsed mapping: raw header dict, selector (dict or :class:`SelectorCall`), comment.

    ``checksum_error`` is the crds message for a missing/mismatched header sha1sum (None if
    the checksum is right); the builder raises it unless checksums are ignored, after the
    structural checks, which is the order crds reports problems in.
    """

    name: str
    header: dict[str, Any]
    selector: dict[Any, Any] | SelectorCall
    comment: str | None
    checksum_error: str | None


def format_error(name: str, message: str, line: int | None = None) -> MappingFormatError:
    """A MappingFormatError in crds' ``Can't load file <name> : <message>`` form."""
    where = f" at line {line}" if line is not None else ""
    return whole_call_error(
        MappingFormatError, "MappingError", f"Can't load file {name} : {message}{where}"
    )


def parse_mapping(text: str, name: str, *, max_chars: int = MAX_MAPPING_CHARS) -> MappingDoc:
    """Parse mapping *text* (named *name* for messages) into a :class:`MappingDoc`."""
    if not isinstance(text, str):
        raise format_error(name, f"mapping text must be str, not {type(text).__name__}")
    if len(text) > max_chars:
        raise format_error(
            name,
            f"mapping text is {len(text)} characters, over the limit of {max_chars}; "
            "real mappings are far smaller, so this file is not a usable mapping",
        )
    tree = _parse_tree(text, name)
    sections: dict[str, Any] = {}
    for statement in tree.body:
        _take_statement(statement, name, sections)
    if "header" not in sections:
        raise format_error(name, "no 'header = {...}' assignment")
    if "selector" not in sections:
        raise format_error(name, "no 'selector = ...' assignment")
    header = sections["header"]
    if not isinstance(header, dict):
        raise format_error(name, "'header' must be a dict literal")
    selector = sections["selector"]
    if not isinstance(selector, (dict, SelectorCall)):
        raise format_error(name, "'selector' must be a dict literal or a selector call")
    comment = sections.get("comment")
    return MappingDoc(name, header, selector, comment if isinstance(comment, str) else None,
                      _checksum_problem(text, header, name))


def _parse_tree(text: str, name: str) -> ast.Module:
    try:
        return ast.parse(text, filename=name, mode="exec")
    except SyntaxError as exc:
        raise format_error(name, f"syntax error: {exc.msg}", exc.lineno) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        # ValueError: NUL bytes; Memory/RecursionError: pathological nesting.
        raise format_error(name, f"cannot parse: {type(exc).__name__}: {exc}") from None


def _take_statement(statement: ast.stmt, name: str, sections: dict[str, Any]) -> None:
    if isinstance(statement, ast.Expr) and _is_str_constant(statement.value):
        return  # a bare string (docstring-like) is inert
    if not isinstance(statement, ast.Assign):
        raise _illegal(statement, name)
    if len(statement.targets) != 1 or not isinstance(statement.targets[0], ast.Name):
        raise format_error(name, "Invalid 'header' or 'selector' definition", statement.lineno)
    target = statement.targets[0].id
    if target not in _SECTIONS:
        raise format_error(
            name, "Only define 'header' or 'selector' or 'comment' sections", statement.lineno
        )
    allow_call = target == "selector"
    sections[target] = _Converter(name).convert(statement.value, 0, allow_call)


def _is_str_constant(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _illegal(node: ast.AST, name: str) -> MappingFormatError:
    return format_error(
        name,
        f"Illegal statement or expression in mapping: {type(node).__name__}",
        getattr(node, "lineno", None),
    )


_CONSTANT_TYPES = (str, int, float, bool, type(None))
_PLAIN = frozenset(_CONSTANT_TYPES)
_CONSTANT_NODE = {ast.Constant}
_VALUE = operator.attrgetter("value")


class _Converter:
    """Turns whitelisted expression nodes into Python values / SelectorCall objects."""

    def __init__(self, name: str) -> None:
        self.name = name

    def convert(self, node: ast.AST, depth: int, allow_call: bool) -> Any:
        if depth > MAX_DEPTH:
            raise format_error(self.name, f"nesting deeper than {MAX_DEPTH} levels",
                               getattr(node, "lineno", None))
        kind = type(node)
        if kind is ast.Constant:
            if isinstance(node.value, _CONSTANT_TYPES):  # type: ignore[attr-defined]
                return node.value  # type: ignore[attr-defined]
            raise _illegal(node, self.name)
        if kind is ast.Dict:
            return self._dict(node, depth, allow_call)  # type: ignore[arg-type]
        if kind is ast.Tuple:
            elts = node.elts  # type: ignore[attr-defined]
            if set(map(type, elts)) == _CONSTANT_NODE:  # Match keys: tuples of constants
                values = tuple([e.value for e in elts])  # type: ignore[attr-defined]
                if set(map(type, values)) <= _PLAIN:
                    return values
            return tuple([self.convert(e, depth + 1, False) for e in elts])
        if kind is ast.List:
            return [self.convert(e, depth + 1, False) for e in node.elts]  # type: ignore[attr-defined]
        if kind is ast.UnaryOp:
            return self._negative(node)  # type: ignore[arg-type]
        if kind is ast.Call and allow_call:
            return self._call(node, depth)  # type: ignore[arg-type]
        raise _illegal(node, self.name)

    def _dict(self, node: ast.Dict, depth: int, allow_call: bool) -> dict[Any, Any]:
        keys, values = node.keys, node.values
        # Fast path for all-constant dicts (UseAfter bodies: 'date' : 'file'), which make up
        # most of every rmap; dict(zip()) keeps dict-display semantics for duplicate keys.
        # (Node types are checked exactly: other nodes may have a .value too.)
        key_types = set(map(type, keys))
        value_types = set(map(type, values))
        if key_types == _CONSTANT_NODE and value_types == _CONSTANT_NODE:
            plain_keys = list(map(_VALUE, keys))
            plain_values = list(map(_VALUE, values))
            if set(map(type, plain_keys)) <= _PLAIN and set(map(type, plain_values)) <= _PLAIN:
                return dict(zip(plain_keys, plain_values, strict=True))
        # Match bodies: (constant, ...) tuple keys -> selector calls or constants.  Those
        # node kinds are handled inline (same checks and error order as convert()): this
        # loop runs once per Match row, thousands of times per rmap.
        inner = depth + 1
        if inner > MAX_DEPTH:  # the inline paths below skip convert()'s depth check
            return self._dict_generic(keys, values, inner, allow_call)
        constant, tuple_node, call_node = ast.Constant, ast.Tuple, ast.Call
        convert, call = self.convert, self._call
        result: dict[Any, Any] = {}
        for key_node, value_node in zip(keys, values, strict=True):
            key_type = type(key_node)
            if key_type is tuple_node:
                elts = key_node.elts  # type: ignore[union-attr]
                key = None
                if set(map(type, elts)) == _CONSTANT_NODE:
                    plain = tuple(map(_VALUE, elts))
                    if set(map(type, plain)) <= _PLAIN:
                        key = plain
                if key is None:
                    key = convert(key_node, inner, False)
            elif key_type is constant and type(key_node.value) is str:  # type: ignore[union-attr]
                key = key_node.value  # type: ignore[union-attr]
            elif key_node is None:  # {**other}
                raise _illegal(value_node, self.name)
            else:
                key = convert(key_node, inner, False)
            value_type = type(value_node)
            if value_type is call_node and allow_call:
                value = call(value_node, inner)  # type: ignore[arg-type]
            elif value_type is constant and type(value_node.value) is str:  # type: ignore[attr-defined]
                value = value_node.value  # type: ignore[attr-defined]
            else:
                value = convert(value_node, inner, allow_call)
            try:
                result[key] = value
            except TypeError as exc:  # e.g. a list inside a tuple key
                raise format_error(self.name, str(exc), key_node.lineno) from None
        return result

    def _dict_generic(self, keys: list[ast.expr | None], values: list[ast.expr], inner: int,
                      allow_call: bool) -> dict[Any, Any]:
        """Entry by entry through convert() (which checks the nesting depth)."""
        constant = ast.Constant
        result: dict[Any, Any] = {}
        for key_node, value_node in zip(keys, values, strict=True):
            if (type(key_node) is constant and type(value_node) is constant
                    and type(key_node.value) is str and type(value_node.value) is str):
                result[key_node.value] = value_node.value
                continue
            if key_node is None:  # {**other}
                raise _illegal(value_node, self.name)
            key = self.convert(key_node, inner, False)
            value = self.convert(value_node, inner, allow_call)
            try:
                result[key] = value
            except TypeError as exc:  # e.g. a list inside a tuple key
                raise format_error(self.name, str(exc), key_node.lineno) from None
        return result

    def _negative(self, node: ast.UnaryOp) -> Any:
        operand = node.operand
        if (
            isinstance(node.op, ast.USub)
            and isinstance(operand, ast.Constant)
            and type(operand.value) in (int, float)
        ):
            return -operand.value
        raise _illegal(node, self.name)

    def _call(self, node: ast.Call, depth: int) -> SelectorCall:
        if depth > MAX_DEPTH:  # (also checked by convert(); _dict() calls here directly)
            raise format_error(self.name, f"nesting deeper than {MAX_DEPTH} levels", node.lineno)
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in SELECTOR_NAMES:
            shown = func.id if isinstance(func, ast.Name) else type(func).__name__
            raise format_error(
                self.name,
                f"Selector {shown!r} is not one of supported Selectors: {sorted(SELECTOR_NAMES)}",
                node.lineno,
            )
        if node.keywords or len(node.args) != 1 or not isinstance(node.args[0], ast.Dict):
            raise format_error(
                self.name, f"{func.id}(...) takes exactly one dict literal argument", node.lineno
            )
        entries = self._dict(node.args[0], depth + 1, True)
        return SelectorCall(func.id, entries, node.lineno)


def _checksum_problem(text: str, header: dict[str, Any], name: str) -> str | None:
    """crds' checksum verdict: None when right, else its ChecksumError message."""
    basename = name.rsplit("/", 1)[-1]
    recorded = header.get("sha1sum")
    if recorded is None:
        return f"sha1sum is missing in {basename!r}"
    if not isinstance(recorded, str) or mapping_checksum(text) != recorded.lower():
        return f"sha1sum mismatch in {basename!r}"
    return None
