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

Evaluator = Callable[[Mapping[str, Any]], Any]

_MAX_EXPR_CHARS = 100_000
_MAX_DEPTH = 100


@dataclass(frozen=True, eq=False)
class Expression:
    """A checked expression, evaluated against a header mapping with :meth:`evaluate`."""

    source: str
    tree: ast.expr
    run: Evaluator

    @property
    def is_constant(self) -> bool:
        """True when the value does not depend on the header (e.g. ``True``)."""
        return isinstance(self.tree, ast.Constant)

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        """Value of the expression with *names* as the only variables."""
        return self.run(names)


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
    return Expression(source, tree.body, _build(tree.body))


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


def _build(node: ast.AST) -> Evaluator:
    """Turn a checked tree into nested closures (an interpreter, evaluated without eval).

    Building once per expression keeps evaluation to a few Python calls per node, which
    matters because relevance expressions are evaluated for every header.
    """
    kind = type(node)
    if kind is ast.Constant:
        value = node.value  # type: ignore[attr-defined]
        return lambda names: value
    if kind is ast.Name:
        return _name(node.id)  # type: ignore[attr-defined]
    if kind is ast.Compare:
        return _compare(node)  # type: ignore[arg-type]
    if kind is ast.BoolOp:
        return _boolean(node)  # type: ignore[arg-type]
    if kind is ast.UnaryOp:
        operand = _build(node.operand)  # type: ignore[attr-defined]
        if isinstance(node.op, ast.Not):  # type: ignore[attr-defined]
            return lambda names: not operand(names)
        return lambda names: -operand(names)
    if kind is ast.Tuple:
        items = [_build(e) for e in node.elts]  # type: ignore[attr-defined]
        return lambda names: tuple(item(names) for item in items)
    if kind is ast.List:
        items = [_build(e) for e in node.elts]  # type: ignore[attr-defined]
        return lambda names: [item(names) for item in items]
    if kind is ast.Dict:
        pairs = [(_build(k), _build(v))  # type: ignore[arg-type]
                 for k, v in zip(node.keys, node.values, strict=True)]  # type: ignore[attr-defined]
        return lambda names: {k(names): v(names) for k, v in pairs}
    if kind is ast.IfExp:
        test, body, orelse = (_build(node.test), _build(node.body),  # type: ignore[attr-defined]
                              _build(node.orelse))  # type: ignore[attr-defined]
        return lambda names: body(names) if test(names) else orelse(names)
    if kind is ast.Call:
        # The function name is looked up first, and no namespace defines selector names.
        return _build(node.func)  # type: ignore[attr-defined]
    raise ExpressionError(f"unsupported node {kind.__name__}")  # unreachable after _check


def _name(key: str) -> Evaluator:
    def lookup(names: Mapping[str, Any]) -> Any:
        try:
            return names[key]
        except KeyError:
            raise NameError(f"name {key!r} is not defined") from None
    return lookup


def _compare(node: ast.Compare) -> Evaluator:
    left = _build(node.left)
    steps = [(_COMPARE[type(op)], _build(right))
             for op, right in zip(node.ops, node.comparators, strict=True)]
    if len(steps) == 1:
        compare, right = steps[0]
        target = node.comparators[0]
        if type(node.left) is ast.Name and type(target) is ast.Constant:
            # The usual shape, (DETECTOR != "SBC"): one closure instead of three.
            key, constant = node.left.id, target.value

            def name_vs_constant(names: Mapping[str, Any]) -> Any:
                try:
                    value = names[key]
                except KeyError:
                    raise NameError(f"name {key!r} is not defined") from None
                return compare(value, constant)
            return name_vs_constant
        return lambda names: compare(left(names), right(names))

    def chained(names: Mapping[str, Any]) -> Any:
        current = left(names)
        result: Any = True
        for compare, right in steps:
            following = right(names)
            result = compare(current, following)
            if not result:
                return result
            current = following
        return result
    return chained


def _boolean(node: ast.BoolOp) -> Evaluator:
    operands = [_build(value) for value in node.values]
    is_and = isinstance(node.op, ast.And)

    def combine(names: Mapping[str, Any]) -> Any:
        value: Any = None
        for operand in operands:
            value = operand(names)
            if is_and and not value:
                return value
            if not is_and and value:
                return value
        return value
    return combine
