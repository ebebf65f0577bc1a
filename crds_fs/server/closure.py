"""Names a mapping refers to, found by walking its syntax tree (ast.parse, never eval).

The server needs only two things from rules files: which files they name (for the
get_mapping_names / get_reference_names closures) and a few header fields.  A mapping is a
header dict and a selector expression; file names are the string leaves in *value*
positions of the selector's dicts (keys are match values such as 'WFC').  Walking the tree
is exact where a regex over the text would also pick up the header's `derived_from`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from ..client.names import is_mapping, is_safe_basename
from ..errors import MappingFormatError

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
    try:
        tree = ast.parse(text, filename=name, mode="exec")
    except (SyntaxError, ValueError) as exc:
        raise MappingFormatError(f"mapping '{name}' is not valid mapping syntax: {exc}") from None
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
        except (ValueError, TypeError, SyntaxError):
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
