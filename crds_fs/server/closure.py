"""Names a mapping refers to, found by walking its syntax tree (ast.parse, never eval).

The server needs only two things from rules files: which files they name (for the
get_mapping_names / get_reference_names closures) and a few header fields.  A mapping is a
header dict and a selector expression; file names are the string leaves in *value*
positions of the selector's dicts (keys are match values such as 'WFC').  Walking the tree
is exact where a regex over the text would also pick up the header's `derived_from`.

Limits (the engine's, so both readers of a mapping agree): text over
`engine.MAX_MAPPING_CHARS` is refused before parsing, syntax trees deeper than
`MAX_TREE_DEPTH` are refused before anything recursive walks them, and the parser's own
RecursionError/MemoryError on pathological nesting becomes a MappingFormatError naming the
file.  A broken mapping is reported once per file version (the result, error included, is
cached by path, size and mtime), never as an internal server error.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..client.names import is_mapping, is_safe_basename
from ..engine import MAX_MAPPING_CHARS
from ..errors import MappingError, MappingFormatError

log = logging.getLogger(__name__)

#: Deepest syntax tree scanned.  A real rmap's tree is ~20 nodes deep (6 literal levels);
#: 200 keeps `ast.literal_eval` far from the interpreter's recursion limit.
MAX_TREE_DEPTH = 200

#: reads a served mapping: (path, byte limit) -> text (raises OSError, UnicodeDecodeError)
TextReader = Callable[[str, int], str]

#: Leaf values that name no file.
SPECIAL_VALUES = frozenset({"N/A", "OMIT", "UNDEFINED"})


@dataclass(frozen=True)
class MappingRefs:
    """What one mapping names: its header (literal fields only) and its file leaves."""

    header: dict[str, Any] = field(default_factory=dict)
    #: every file name in the selector's value positions, sorted, without duplicates
    names: tuple[str, ...] = ()

    @property
    def mappings(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if is_mapping(n))

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if not is_mapping(n))


def scan_mapping(text: str, name: str) -> MappingRefs:
    """Parse mapping *text* (file *name*, for messages) and return what it names."""
    if len(text) > MAX_MAPPING_CHARS:
        raise MappingFormatError(
            f"mapping '{name}' is {len(text)} characters, over the limit of "
            f"{MAX_MAPPING_CHARS}; real mappings are far smaller, so it is not used")
    try:
        tree = ast.parse(text, filename=name, mode="exec")
    except (SyntaxError, ValueError) as exc:
        raise MappingFormatError(f"mapping '{name}' is not valid mapping syntax: {exc}") from None
    except (RecursionError, MemoryError):
        raise MappingFormatError(
            f"mapping '{name}' nests expressions too deeply for the parser "
            f"(limit {MAX_TREE_DEPTH} levels); it is not a usable mapping") from None
    _check_depth(tree, name)
    header: dict[str, Any] = {}
    names: set[str] = set()
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        if not isinstance(target, ast.Name):
            continue
        if target.id == "header":
            header = _literal_header(stmt.value, name)
        elif target.id == "selector":
            names.update(leaf for leaf in _value_leaves(stmt.value) if _is_file_name(leaf))
    return MappingRefs(header=header, names=tuple(sorted(names)))


@lru_cache(maxsize=8192)
def _scan_file_cached(reader: TextReader, path: str, size: int, mtime_ns: int,
                      name: str) -> MappingRefs | MappingError:
    try:
        text = reader(path, MAX_MAPPING_CHARS)
    except UnicodeDecodeError as exc:
        error: MappingError = MappingFormatError(f"mapping '{name}' is not UTF-8 text: {exc}")
    else:
        try:
            return scan_mapping(text, name)
        except MappingError as exc:
            error = exc
    log.warning("ignoring mapping %s: %s", path, error)
    return error


def scan_mapping_file(reader: TextReader, path: str, size: int, mtime_ns: int,
                      name: str) -> MappingRefs:
    """`scan_mapping` of a served file, cached per (path, size, mtime), failures included:
    a broken mapping is parsed and logged once per version, not once per request.
    Raises MappingError (cached) or OSError (not cached: may be transient)."""
    result = _scan_file_cached(reader, path, size, mtime_ns, name)
    if isinstance(result, MappingError):
        raise result
    return result


def _check_depth(tree: ast.AST, name: str) -> None:
    """Refuse trees deeper than MAX_TREE_DEPTH (walked with an explicit stack)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            line = getattr(node, "lineno", None)
            raise MappingFormatError(
                f"mapping '{name}' nests expressions deeper than {MAX_TREE_DEPTH} levels"
                + (f" (line {line})" if line else "") + "; it is not a usable mapping")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _is_file_name(value: str) -> bool:
    return (
        value not in SPECIAL_VALUES
        and not value.startswith("NOT FOUND")
        and "." in value
        and is_safe_basename(value)
    )


def _literal_header(node: ast.expr, name: str) -> dict[str, Any]:
    if not isinstance(node, ast.Dict):
        raise MappingFormatError(f"mapping '{name}': header is not a dict literal")
    header: dict[str, Any] = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if not isinstance(key, ast.Constant) or not isinstance(key.value, str):
            continue
        try:
            header[key.value] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            continue  # e.g. an expression-valued field; not needed by the server
    return header


def _value_leaves(node: ast.AST) -> list[str]:
    """String constants reachable through dict values, call arguments and tuples/lists."""
    leaves: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Dict):
            stack.extend(current.values)
        elif isinstance(current, ast.Call):
            stack.extend(current.args)
            stack.extend(kw.value for kw in current.keywords)
        elif isinstance(current, (ast.Tuple, ast.List)):
            stack.extend(current.elts)
        elif isinstance(current, ast.Constant) and isinstance(current.value, str):
            leaves.append(current.value)
    return leaves
