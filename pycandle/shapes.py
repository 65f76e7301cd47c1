"""Sizes that remember where they came from.

While tracing, `x.shape`, `x.size()`, `len(x)` and `x.numel()` of a traced tensor return
`ShapeInt`s: real ints (the model runs as usual) that also carry a `SymInt` saying how they were
computed from tensor dimensions, through `+ - * //`. When such an int reaches a torch call, the
manifest records the expression instead of the number, so `x.view(b * t, -1)` is generated as
`x.reshape((x.dim(0)? * x.dim(1)?, ()))` by provenance, not by guessing from the values.

Anything else (`/`, `%`, `int()`, `math.*`) gives a plain int; the recorder then falls back to
explaining values across trace cases (pycandle.symbolic). Comparing a ShapeInt steers Python
control flow by the traced sizes, which the recorder reports as a warning.
"""

from __future__ import annotations

from typing import Any, Callable

from pycandle.manifest import SymInt


def _sym(v: Any) -> SymInt | int:
    return v.sym if isinstance(v, ShapeInt) else int(v)


def _int_like(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _combine(kind: str, a: SymInt | int, b: SymInt | int) -> SymInt | int:
    if kind == "add" and b == 0 or kind in ("mul", "floordiv") and b == 1:
        return a
    if kind == "add" and a == 0 or kind == "mul" and a == 1:
        return b
    return SymInt(kind, a, b)


class ShapeInt(int):
    """An int derived from traced tensor dimensions; `sym` says how."""

    sym: SymInt
    on_compare: Callable[[ShapeInt], None] | None = None  # set by the tracer

    def __new__(cls, value: int, sym: SymInt) -> ShapeInt:
        obj = super().__new__(cls, value)
        obj.sym = sym
        return obj

    def _op(self, other: Any, kind: str, reflected: bool = False) -> Any:
        if not _int_like(other):
            return NotImplemented
        a, b = (int(other), int(self)) if reflected else (int(self), int(other))
        value = {"add": a + b, "sub": a - b, "mul": a * b, "floordiv": a // b if b else None}[kind]
        if value is None:
            raise ZeroDivisionError("integer division or modulo by zero")
        sa, sb = (_sym(other), self.sym) if reflected else (self.sym, _sym(other))
        if kind == "sub" and isinstance(sb, int):
            kind, sb = "add", -sb
        sym = _combine(kind, sa, sb)
        return ShapeInt(value, sym) if isinstance(sym, SymInt) else value

    def __add__(self, other: Any) -> Any:
        return self._op(other, "add")

    def __radd__(self, other: Any) -> Any:
        return self._op(other, "add", reflected=True)

    def __sub__(self, other: Any) -> Any:
        return self._op(other, "sub")

    def __rsub__(self, other: Any) -> Any:
        return self._op(other, "sub", reflected=True)

    def __mul__(self, other: Any) -> Any:
        return self._op(other, "mul")

    def __rmul__(self, other: Any) -> Any:
        return self._op(other, "mul", reflected=True)

    def __floordiv__(self, other: Any) -> Any:
        return self._op(other, "floordiv")

    def __rfloordiv__(self, other: Any) -> Any:
        return self._op(other, "floordiv", reflected=True)

    def _compare(self, other: Any, op: Callable[[int, Any], Any]) -> Any:
        if ShapeInt.on_compare is not None:
            ShapeInt.on_compare(self)
        return op(int(self), int(other) if isinstance(other, ShapeInt) else other)

    def __eq__(self, other: Any) -> Any:
        return self._compare(other, int.__eq__)

    def __ne__(self, other: Any) -> Any:
        return self._compare(other, int.__ne__)

    def __lt__(self, other: Any) -> Any:
        return self._compare(other, int.__lt__)

    def __le__(self, other: Any) -> Any:
        return self._compare(other, int.__le__)

    def __gt__(self, other: Any) -> Any:
        return self._compare(other, int.__gt__)

    def __ge__(self, other: Any) -> Any:
        return self._compare(other, int.__ge__)

    __hash__ = int.__hash__

    def __repr__(self) -> str:
        return int.__repr__(self)


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
