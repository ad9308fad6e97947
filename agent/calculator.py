"""A calculator for the model: arithmetic parsed with ``ast`` and evaluated node by node.

Nothing is ever passed to ``eval``: only number literals, ``+ - * / // % **``, unary signs,
the names in :data:`CONSTANTS` and calls of the functions in :data:`FUNCTIONS` are accepted;
any other syntax (attributes, subscripts, lambdas, comprehensions, strings, other names) is
refused. Work is bounded: expressions of at most 500 characters and 60 levels of nesting,
integer results of at most 4096 bits (``9**9**9`` is refused before it is computed), exponents
of at most 10,000 and ``factorial`` up to 500.

Why not `simpleeval` (compared on 1.0.8): it also refuses dunder attributes, comprehensions and
huge powers, but it evaluates any attribute without a leading underscore (`(1).real` gives 1)
and strings, so its safety rests on a deny-list; this file is an allow-list of a few node types
in about a hundred lines, with no dependency.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from agent.errors import CalculatorError

MAX_CHARS = 500
MAX_DEPTH = 60
MAX_INT_BITS = 4096
MAX_EXPONENT = 10_000

CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: float) -> int:
    if n != int(n) or not 0 <= n <= 500:
        raise CalculatorError("factorial takes a whole number from 0 to 500")
    return math.factorial(int(n))


FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "atan2": math.atan2, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh,
    "floor": math.floor, "ceil": math.ceil, "abs": abs, "round": round, "min": min, "max": max,
    "hypot": math.hypot, "degrees": math.degrees, "radians": math.radians, "factorial": _factorial,
    "gcd": math.gcd,
}  # fmt: skip

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression, e.g. ``2 * (3 + 4) ** 2`` or ``sqrt(2) / 3``."""
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise CalculatorError(f"not an arithmetic expression: {exc}") from None
    try:
        return _evaluate(tree.body, depth=0)
    except CalculatorError:
        raise
    except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
        raise CalculatorError(f"{type(exc).__name__}: {exc}") from None


def _evaluate(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"expression nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        _check_size(node.op, left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if node.keywords:
            raise CalculatorError("functions take positional arguments only")
        args = [_evaluate(a, depth + 1) for a in node.args]
        return _bounded(FUNCTIONS[node.func.id](*args))
    if isinstance(node, ast.Name):
        raise CalculatorError(f"unknown name {node.id!r}")
    raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _check_size(op: ast.operator, left: float, right: float) -> None:
    """Refuse before computing what would be too big."""
    if isinstance(op, ast.Pow):
        if abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
        if isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left).bit_length() * right > MAX_INT_BITS:
                raise CalculatorError(f"result larger than {MAX_INT_BITS} bits")
    if isinstance(op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
        if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS + 1:
            raise CalculatorError(f"result larger than {MAX_INT_BITS} bits")


def _bounded(value: float) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError("the result is not a number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"result larger than {MAX_INT_BITS} bits")
    return value
