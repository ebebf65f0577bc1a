"""A tiny interpreter for rmap header expressions (rmap_relevance, rmap_omit, parkey_relevance).

crds compiles these strings and ``eval``s them with the dataset header as the only
namespace.  We parse them with ``ast.parse(mode="eval")``, accept crds' whitelist of node
types and interpret the tree ourselves with Python's own operators, so results *and error
messages* (which surface as ``NOT FOUND <message>`` for parkey_relevance) are the same:

* names -> header values (``NameError: name 'X' is not defined`` when absent);
* constants, tuple/list/dict displays;
* ``and``/``or`` (short-circuit, returning the deciding operand), ``not``, unary minus;
* comparisons ``== != < <= > >= in not in`` (chained like Python), ``a if c else b``;
* calls only to selector names (crds' verifier lets them through; evaluating one is a
  NameError because the namespace has no such name).

Everything else (attributes, subscripts, operators, lambdas, comprehensions, ...) is refused
when the rmap is loaded.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .parser import SELECTOR_NAMES


class ExpressionError(ValueError):
    """The expression text is not in the accepted language (raised at load time)."""


def _not_in(left: Any, right: Any) -> bool:
    return left not in right


def _in(left: Any, right: Any) -> bool:
    return left in right


_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: _in,
    ast.NotIn: _not_in,
}

_MAX_EXPR_CHARS = 100_000
_MAX_DEPTH = 100


@dataclass(frozen=True, eq=False)
class Expression:
    """A checked expression, evaluated against a header mapping with :meth:`evaluate`."""

    source: str
    tree: ast.expr

    @property
    def is_constant(self) -> bool:
        """True when the value does not depend on the header (e.g. ``True``)."""
        return isinstance(self.tree, ast.Constant)

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        """Value of the expression with *names* as the only variables."""
        return _evaluate(self.tree, names)


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Parse and check *source*; raise :class:`ExpressionError` if it is not acceptable.

    Memoised: the same few expressions recur in hundreds of rmaps and results are immutable.
    """
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be a string, not {type(source).__name__}")
    if len(source) > _MAX_EXPR_CHARS:
        raise ExpressionError("expression text is too long")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {source!r}: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"invalid expression {source!r}: {exc}") from None
    _check(tree.body, 0, source)
    return Expression(source, tree.body)


def _check(node: ast.AST, depth: int, source: str) -> None:
    if depth > _MAX_DEPTH:
        raise ExpressionError(f"expression nests too deeply: {source!r}")
    kind = type(node)
    if kind is ast.Name or kind is ast.Constant:
        return
    if kind in (ast.Tuple, ast.List):
        children: list[ast.AST] = list(node.elts)  # type: ignore[attr-defined]
    elif kind is ast.Dict:
        if any(k is None for k in node.keys):  # type: ignore[attr-defined]
            raise ExpressionError(f"dict unpacking is not allowed in {source!r}")
        children = [*node.keys, *node.values]  # type: ignore[attr-defined]
    elif kind is ast.BoolOp:
        children = list(node.values)  # type: ignore[attr-defined]
    elif kind is ast.Compare:
        if not all(type(op) in _COMPARE for op in node.ops):  # type: ignore[attr-defined]
            raise ExpressionError(f"comparison operator not allowed in {source!r}")
        children = [node.left, *node.comparators]  # type: ignore[attr-defined]
    elif kind is ast.UnaryOp:
        if not isinstance(node.op, (ast.Not, ast.USub)):  # type: ignore[attr-defined]
            raise ExpressionError(f"operator not allowed in {source!r}")
        children = [node.operand]  # type: ignore[attr-defined]
    elif kind is ast.IfExp:
        children = [node.test, node.body, node.orelse]  # type: ignore[attr-defined]
    elif kind is ast.Call:
        func = node.func  # type: ignore[attr-defined]
        if not isinstance(func, ast.Name) or func.id not in SELECTOR_NAMES:
            raise ExpressionError(f"function calls are not allowed in {source!r}")
        children = [*node.args, *(kw.value for kw in node.keywords)]  # type: ignore[attr-defined]
    else:
        raise ExpressionError(f"{kind.__name__} is not allowed in expression {source!r}")
    for child in children:
        _check(child, depth + 1, source)


def _evaluate(node: ast.AST, names: Mapping[str, Any]) -> Any:
    kind = type(node)
    if kind is ast.Constant:
        return node.value  # type: ignore[attr-defined]
    if kind is ast.Name:
        try:
            return names[node.id]  # type: ignore[attr-defined]
        except KeyError:
            raise NameError(f"name {node.id!r} is not defined") from None  # type: ignore[attr-defined]
    if kind is ast.Compare:
        return _compare(node, names)  # type: ignore[arg-type]
    if kind is ast.BoolOp:
        return _boolean(node, names)  # type: ignore[arg-type]
    if kind is ast.UnaryOp:
        operand = _evaluate(node.operand, names)  # type: ignore[attr-defined]
        return (not operand) if isinstance(node.op, ast.Not) else -operand  # type: ignore[attr-defined]
    if kind is ast.Tuple:
        return tuple(_evaluate(e, names) for e in node.elts)  # type: ignore[attr-defined]
    if kind is ast.List:
        return [_evaluate(e, names) for e in node.elts]  # type: ignore[attr-defined]
    if kind is ast.Dict:
        return {_evaluate(k, names): _evaluate(v, names)  # type: ignore[arg-type]
                for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[attr-defined]
    if kind is ast.IfExp:
        chosen = node.body if _evaluate(node.test, names) else node.orelse  # type: ignore[attr-defined]
        return _evaluate(chosen, names)
    if kind is ast.Call:
        # The function name is looked up first, and no namespace defines selector names.
        return _evaluate(node.func, names)  # type: ignore[attr-defined]
    raise ExpressionError(f"unsupported node {kind.__name__}")  # unreachable after _check


def _compare(node: ast.Compare, names: Mapping[str, Any]) -> Any:
    left = _evaluate(node.left, names)
    result: Any = True
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _evaluate(right_node, names)
        result = _COMPARE[type(op)](left, right)
        if not result:
            return result
        left = right
    return result


def _boolean(node: ast.BoolOp, names: Mapping[str, Any]) -> Any:
    is_and = isinstance(node.op, ast.And)
    value: Any = None
    for operand in node.values:
        value = _evaluate(operand, names)
        if is_and and not value:
            return value
        if not is_and and value:
            return value
    return value
