"""The closed sets every stage shares, defined once: node kinds, symbolic-integer kinds, parity
report entry kinds and dtypes.

Each is a `StrEnum`, so it is written to JSON as its plain value and compares equal to it; a
value read from a file goes through `parse`, which refuses anything unknown with the set's
members named (never a silent fallback). No torch here.
"""

from __future__ import annotations

import math
import operator
from enum import StrEnum
from typing import Any, Callable, TypeVar

E = TypeVar("E", bound=StrEnum)


class UnknownValue(ValueError):
    """A value outside a closed set; the message names the set and its members."""


def parse(kind: type[E], value: object, what: str) -> E:
    """`value` as a member of `kind`, or UnknownValue naming `what` and the allowed values."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise UnknownValue(f"unknown {what} {value!r} (one of: {allowed})") from None


class NodeOp(StrEnum):
    """What a graph node does."""

    INPUT = "input"  # a forward() argument
    CALL_MODULE = "call_module"  # a registered layer, run as one opaque call
    CALL_FUNCTION = "call_function"  # a torch function, Tensor method or operator
    CONSTANT = "constant"  # a tensor from outside the traced graph (reported, never lowered)
    # a Python `for` loop whose trip count follows an input size: args (count, [initial loop
    # state]), kwargs `next` (each state's value at the end of a pass) and `collect` (values
    # kept from every pass, as `outs.append(y)`); the nodes of one pass follow it, each with
    # `step` naming it; out: the final states, then one list per collected value
    LOOP = "loop"
    # an `if` on a size: args (comparison, left, right), kwargs `then`/`else` (the values that
    # leave it from each side), `taken` (each trace case's side); the nodes of its body and of
    # its `else` part follow it, each with `branch` naming it and the side; out: the values
    BRANCH = "branch"


class SymKind(StrEnum):
    """How a symbolic integer (a size computed from tensor shapes) is built.

    Besides integers, the Python arithmetic of a model passes through floats on its way to a
    size (`math.ceil(t / s)`, `int(t * 1.25)`): TRUEDIV, and ADD/SUB/MUL with a float operand,
    are float-valued; CEIL, FLOOR, TRUNC (`int()`) and ROUND take such a float back to an
    integer. NEG (`-pad`) is a size counted from the end, which only a slice bound or an index
    takes. The unary kinds leave `b` None."""

    DIM = "dim"  # `a` a tensor reference, `b` its dimension
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    FLOORDIV = "floordiv"
    MOD = "mod"
    MAX = "max"
    MIN = "min"
    NEG = "neg"
    TRUEDIV = "truediv"
    CEIL = "ceil"
    FLOOR = "floor"
    TRUNC = "trunc"
    ROUND = "round"
    STEP = "step"  # the pass number of a loop: `a` a reference to the LOOP node

    @property
    def operator(self) -> str:
        return {"add": "+", "sub": "-", "mul": "*", "floordiv": "/", "mod": "%",
                "truediv": "/"}[self.value]

    @property
    def precedence(self) -> int:
        """Rust precedence class of a binary operator: 1 for `+ -`, 2 for `* / %`."""
        return 1 if self in (SymKind.ADD, SymKind.SUB) else 2

    @property
    def unary(self) -> bool:
        return self in (SymKind.NEG, SymKind.CEIL, SymKind.FLOOR, SymKind.TRUNC, SymKind.ROUND)

    def apply(self, a: Any, b: Any = None) -> Any:
        """Python's value of the operation (a float for the float-valued kinds)."""
        if self in (SymKind.DIM, SymKind.STEP):
            raise ValueError("a dimension is not an arithmetic operation")
        if self in (SymKind.FLOORDIV, SymKind.MOD, SymKind.TRUEDIV) and not b:
            return 0  # never met in a trace (Python raised there); keeps evaluation total
        return _APPLY[self](a, b)


_APPLY: dict[SymKind, Callable[[Any, Any], Any]] = {
    SymKind.ADD: operator.add, SymKind.SUB: operator.sub, SymKind.MUL: operator.mul,
    SymKind.FLOORDIV: operator.floordiv, SymKind.MOD: operator.mod, SymKind.MAX: max,
    SymKind.MIN: min, SymKind.NEG: lambda a, _: -a, SymKind.TRUEDIV: operator.truediv,
    SymKind.CEIL: lambda a, _: math.ceil(a), SymKind.FLOOR: lambda a, _: math.floor(a),
    SymKind.TRUNC: lambda a, _: int(a), SymKind.ROUND: lambda a, _: round(a),
}


class EntryKind(StrEnum):
    """What a line of the parity report checks."""

    LAYER = "layer"  # one layer fed its golden inputs in isolation
    STREAM = "stream"  # a recurrent layer run in two chunks, carrying its state
    BLOCK = "block"  # a user module or container fed the golden inputs of its call
    MODEL = "model"  # the whole model end to end


class DType(StrEnum):
    """Tensor dtypes, by PyTorch's name (`torch.float32` -> `float32`)."""

    FLOAT32 = "float32"
    FLOAT64 = "float64"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT64 = "int64"
    INT32 = "int32"
    INT16 = "int16"
    UINT8 = "uint8"
    UINT32 = "uint32"
    BOOL = "bool"

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def size(self) -> int:
        """Bytes per element."""
        return _SIZES[self]

    @property
    def candle(self) -> str | None:
        """The Candle `DType` variant that holds it (a bool tensor is a u8 mask on the Rust
        side)."""
        return _CANDLE.get(self)

    @property
    def literal_suffix(self) -> str | None:
        """The Rust literal suffix of a scalar of this dtype (`f32`, `i64`), if Rust has one."""
        return _SUFFIX.get(self)


_FLOATS = frozenset({DType.FLOAT32, DType.FLOAT64, DType.FLOAT16, DType.BFLOAT16})
_SIZES = {DType.FLOAT32: 4, DType.FLOAT64: 8, DType.FLOAT16: 2, DType.BFLOAT16: 2,
          DType.INT64: 8, DType.INT32: 4, DType.INT16: 2, DType.UINT8: 1, DType.UINT32: 4,
          DType.BOOL: 1}
_CANDLE = {DType.FLOAT32: "F32", DType.FLOAT64: "F64", DType.FLOAT16: "F16",
           DType.BFLOAT16: "BF16", DType.INT64: "I64", DType.INT32: "I32", DType.INT16: "I16",
           DType.UINT8: "U8", DType.UINT32: "U32", DType.BOOL: "U8"}
_SUFFIX = {DType.FLOAT32: "f32", DType.FLOAT64: "f64", DType.INT64: "i64", DType.INT32: "i32",
           DType.UINT8: "u8", DType.UINT32: "u32"}

# What models.yaml accepts: for the model (`dtype:`) and for its inputs.
MODEL_DTYPES = (DType.FLOAT32, DType.FLOAT64, DType.FLOAT16, DType.BFLOAT16)
INPUT_DTYPES = MODEL_DTYPES + (DType.INT64, DType.INT32)
