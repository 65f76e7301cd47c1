"""Sizes that remember where they came from.

While tracing, `x.shape`, `x.size()`, `len(x)` and `x.numel()` of a traced tensor return
`ShapeInt`s: real ints (the model runs as usual) that also carry a `SymInt` saying how they were
computed from tensor dimensions. Python arithmetic keeps that record: `+ - * // %`, unary minus,
`max`/`min`, and the detour through floats that real models take to a size (`t / s` is a
`ShapeFloat`; `math.ceil`, `math.floor`, `int()`, `round()` bring it back). When such a number
reaches a torch call, the manifest records the expression instead of the number, so
`F.pad(x, (0, math.ceil(t / s) * s - t))` is generated from `x.dim(2)?`, right at every length,
not only at the traced ones.

`int`, `max`, `min` and `range` are builtins that cannot be taught this from here: while
tracing, the model's own modules see `traced_int`, `traced_max`, `traced_min` and
`traced_range` in their place (the tracer installs them). Anything else (`math.sqrt`, numpy)
gives a plain number; the recorder then falls back to explaining values across trace cases
(pycandle.symbolic). Comparing a size (or testing it for truth) steers Python control flow by
the traced sizes, which the recorder reports as a warning.
"""

from __future__ import annotations

import builtins
import math
from typing import Any, Callable

from pycandle.enums import SymKind
from pycandle.manifest import SymInt


def _sym(v: Any) -> Any:
    return v.sym if isinstance(v, (ShapeInt, ShapeFloat)) else v


def sym_of(v: Any) -> Any:
    """What a traced number was computed from (a SymInt), or the value itself."""
    return _sym(v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> Any:
    return float(v) if isinstance(v, float) else int(v)


def combine(kind: SymKind, a: Any, b: Any) -> Any:
    """The expression `a kind b`, without the steps that change nothing (`+ 0`, `* 1`)."""
    if kind == SymKind.SUB and not isinstance(b, SymInt):
        kind, b = SymKind.ADD, -b
    if kind == SymKind.ADD and b == 0 or kind in (SymKind.MUL, SymKind.FLOORDIV) and b == 1:
        return a
    if kind == SymKind.ADD and a == 0 or kind == SymKind.MUL and a == 1:
        return b
    if kind in (SymKind.MAX, SymKind.MIN) and a == b:
        return a
    return SymInt(kind, a, b)


def _made(value: Any, sym: Any) -> Any:
    """The result of an operation: a plain number when no dimension is left in it."""
    if not isinstance(sym, SymInt):
        return value
    return ShapeFloat(value, sym) if isinstance(value, float) else ShapeInt(value, sym)


def _binary(kind: SymKind, a: Any, b: Any, value: Any) -> Any:
    return _made(value, combine(kind, _sym(a), _sym(b)))


def _unary(kind: SymKind, a: Any, value: Any) -> Any:
    if kind == SymKind.NEG and isinstance(a.sym, SymInt) and a.sym.kind == SymKind.NEG:
        return _made(value, a.sym.a)
    return _made(value, SymInt(kind, a.sym, None))


_OPERATORS: dict[SymKind, Callable[[Any, Any], Any]] = {
    SymKind.ADD: lambda a, b: a + b, SymKind.SUB: lambda a, b: a - b,
    SymKind.MUL: lambda a, b: a * b, SymKind.FLOORDIV: lambda a, b: a // b,
    SymKind.MOD: lambda a, b: a % b, SymKind.TRUEDIV: lambda a, b: a / b,
}


# Python's comparisons by name, as a branch's test records them (`t % 4 != 0`: "ne")
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
}


class TracedNumber:
    """What ShapeInt and ShapeFloat share: arithmetic that records itself, comparisons that
    warn."""

    sym: SymInt
    on_compare: Callable[[Any], None] | None = None  # set by the tracer
    _INT_ONLY = (SymKind.FLOORDIV, SymKind.MOD)

    def _op(self, other: Any, kind: SymKind, reflected: bool = False) -> Any:
        if not _number(other):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        value = _OPERATORS[kind](_plain(a), _plain(b))  # Python's errors, e.g. ZeroDivisionError
        if kind in self._INT_ONLY and isinstance(value, float):
            return value  # `t // 2.0`: no size comes of it
        return _binary(kind, a, b, value)

    def __add__(self, other: Any) -> Any:
        return self._op(other, SymKind.ADD)

    def __radd__(self, other: Any) -> Any:
        return self._op(other, SymKind.ADD, reflected=True)

    def __sub__(self, other: Any) -> Any:
        return self._op(other, SymKind.SUB)

    def __rsub__(self, other: Any) -> Any:
        return self._op(other, SymKind.SUB, reflected=True)

    def __mul__(self, other: Any) -> Any:
        return self._op(other, SymKind.MUL)

    def __rmul__(self, other: Any) -> Any:
        return self._op(other, SymKind.MUL, reflected=True)

    def __truediv__(self, other: Any) -> Any:
        return self._op(other, SymKind.TRUEDIV)

    def __rtruediv__(self, other: Any) -> Any:
        return self._op(other, SymKind.TRUEDIV, reflected=True)

    def __floordiv__(self, other: Any) -> Any:
        return self._op(other, SymKind.FLOORDIV)

    def __rfloordiv__(self, other: Any) -> Any:
        return self._op(other, SymKind.FLOORDIV, reflected=True)

    def __mod__(self, other: Any) -> Any:
        return self._op(other, SymKind.MOD)

    def __rmod__(self, other: Any) -> Any:
        return self._op(other, SymKind.MOD, reflected=True)

    def _compare(self, other: Any, op: str) -> Any:
        result = COMPARISONS[op](_plain(self),
                                 _plain(other) if isinstance(other, TracedNumber) else other)
        if TracedNumber.on_compare is not None:
            TracedNumber.on_compare(self, op, other, result)
        return result

    def __eq__(self, other: Any) -> Any:
        return self._compare(other, "eq")

    def __ne__(self, other: Any) -> Any:
        return self._compare(other, "ne")

    def __lt__(self, other: Any) -> Any:
        return self._compare(other, "lt")

    def __le__(self, other: Any) -> Any:
        return self._compare(other, "le")

    def __gt__(self, other: Any) -> Any:
        return self._compare(other, "gt")

    def __ge__(self, other: Any) -> Any:
        return self._compare(other, "ge")

    def __bool__(self) -> bool:  # `if t % 4:` steers control flow as a comparison does
        return bool(self._compare(0, "ne"))


class ShapeInt(TracedNumber, int):
    """An int derived from traced tensor dimensions; `sym` says how."""

    def __new__(cls, value: int, sym: SymInt) -> ShapeInt:
        obj = super().__new__(cls, value)
        obj.sym = sym
        return obj

    def __neg__(self) -> Any:
        return _unary(SymKind.NEG, self, -int(self))

    def __pos__(self) -> ShapeInt:
        return self

    def __abs__(self) -> Any:
        return self if self >= 0 else -self

    def __ceil__(self) -> ShapeInt:
        return self

    __floor__ = __trunc__ = __ceil__

    def __round__(self, ndigits: int | None = None) -> ShapeInt:
        return self

    __hash__ = int.__hash__

    def __repr__(self) -> str:
        return int.__repr__(self)


class ShapeFloat(TracedNumber, float):
    """A float computed from traced tensor dimensions (`t / s`, `t * 1.25`) on its way back to
    an integer size."""

    def __new__(cls, value: float, sym: SymInt) -> ShapeFloat:
        obj = super().__new__(cls, value)
        obj.sym = sym
        return obj

    def __neg__(self) -> Any:
        return _binary(SymKind.MUL, self, -1, -float(self))

    def __pos__(self) -> ShapeFloat:
        return self

    def __ceil__(self) -> Any:
        return _unary(SymKind.CEIL, self, math.ceil(float(self)))

    def __floor__(self) -> Any:
        return _unary(SymKind.FLOOR, self, math.floor(float(self)))

    def __trunc__(self) -> Any:
        return _unary(SymKind.TRUNC, self, math.trunc(float(self)))

    def __round__(self, ndigits: int | None = None) -> Any:
        if ndigits is not None:
            return round(float(self), ndigits)
        return _unary(SymKind.ROUND, self, round(float(self)))

    __hash__ = float.__hash__

    def __repr__(self) -> str:
        return float.__repr__(self)


# --- the builtins the model's modules see while tracing ----------------------------------------


class _IntType(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, int)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, int)


class traced_int(int, metaclass=_IntType):  # noqa: N801 (it stands for `int`)
    """`int` for the model's own modules while tracing: `int(t * 1.25)` and `int(n)` of a size
    keep their provenance; everything else, `isinstance(v, int)` included, is the builtin's."""

    def __new__(cls, value: Any = 0, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            if isinstance(value, ShapeInt):
                return value
            if isinstance(value, ShapeFloat):
                return value.__trunc__()
        return int(value, *args, **kwargs)


def _extreme(kind: SymKind, builtin: Callable[..., Any]) -> Callable[..., Any]:
    def extreme(*args: Any, **kwargs: Any) -> Any:
        if kwargs or not args:
            return builtin(*args, **kwargs)
        items = list(args[0]) if len(args) == 1 else list(args)
        if not items or not all(_number(v) for v in items) \
                or not any(isinstance(v, TracedNumber) for v in items):
            return builtin(items) if len(args) == 1 else builtin(*args)
        result = items[0]
        for v in items[1:]:
            value = builtin(_plain(result), _plain(v))
            result = _binary(kind, result, v, value)
        return result

    extreme.__name__ = extreme.__qualname__ = builtin.__name__
    return extreme


traced_max = _extreme(SymKind.MAX, builtins.max)
traced_min = _extreme(SymKind.MIN, builtins.min)


class _RangeType(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, builtins.range)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, builtins.range)


class traced_range(metaclass=_RangeType):  # noqa: N801 (it stands for `range`)
    """`range` for the model's own modules while tracing: Python's range, and, when its bounds
    are sizes, its length as a size (`range(0, t, hop)` has `math.ceil(t / hop)` items) handed
    to `on_range`, so that a loop over it runs as many passes in Rust at any length."""

    on_range: Callable[[Any, int], None] | None = None  # set by the tracer

    def __new__(cls, *args: Any) -> Any:
        items = builtins.range(*args)  # Python's errors
        if cls.on_range is not None and any(isinstance(a, TracedNumber) for a in args):
            start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
            if step <= 0:  # a loop run backwards is not folded into a Rust loop
                return items
            length = stop - start if step == 1 else math.ceil((stop - start) / step)
            if isinstance(length, ShapeInt) and int(length) == len(items):
                cls.on_range(length.sym, len(items))
        return items


BUILTINS = {"int": traced_int, "max": traced_max, "min": traced_min, "range": traced_range}


class TracedSize(tuple):
    """What `x.shape` returns while tracing: a tuple of ShapeInts with torch.Size's `numel`."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return TracedSize(item) if isinstance(index, slice) else item

    def numel(self) -> int:
        total: Any = 1
        for v in self:
            total = total * v
        return total


def traced_size(ref: Any, shape: tuple[int, ...]) -> TracedSize:
    return TracedSize(ShapeInt(v, SymInt("dim", ref, d)) for d, v in enumerate(shape))
