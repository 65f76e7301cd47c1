"""Indexing: `x[...]`."""

from __future__ import annotations

import math
from typing import Any

from pycandle.registry.core import (
    Dim, FromEnd, Op, T, Unsupported, borrow_expr, device, is_int, register_op, runtime, rust_dim,
    rust_dtype, size_as, tensor,
)


_INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "uint32")


def _bound(b: Any, size: str, what: str) -> str | None:
    """A slice bound as a Rust usize (None: the bound is absent). Python clamps a stop past
    the end, and so does the generated code; a start past the end is Candle's error."""
    if b is None:
        return None
    if isinstance(b, FromEnd):  # `x[:-pad]`: the same positions at every length
        return f"{runtime('from_end')}({size}, {b.size.expr})"
    if isinstance(b, T):  # `x[:n]` with `n` a one-element integer tensor, read at run time
        if b.meta.dtype not in _INT_DTYPES or any(math.prod(s) != 1 for s in b.meta.shapes):
            raise Unsupported(f"slice {what} from a {b.meta.dtype} tensor of shape "
                              f"{b.meta.shapes[0]}", hint="a bound must be one integer")
        return f"{runtime('slice_bound')}({b.borrow}, {size})?"
    if isinstance(b, Dim):
        if min(b.values) < 0:
            raise Unsupported(f"slice {what} {b.expr} that is negative in a trace case")
        return b.expr if what == "start" else f"{size}.min({b.expr})"
    if not is_int(b):
        raise Unsupported(f"slice {what} {b!r}")
    if b < 0:
        return f"{size}.saturating_sub({-b})"
    return str(b) if what == "start" else f"{size}.min({b})"


def _slice(x: T, expr: str, it: slice, d: int, size: str) -> str:
    if it.step is not None and not (is_int(it.step) and it.step >= 1):
        raise Unsupported(f"slice step {it.step!r}", hint="steps must be positive integers")
    start = None if it.start in (None, 0) else _bound(it.start, size, "start")
    stop = _bound(it.stop, size, "stop")
    if start is not None or stop is not None:
        stop = stop or size
        length = stop if start is None else f"{stop}.saturating_sub({start})"
        expr = f"{expr}.narrow({d}, {start or 0}, {length})?"
    if it.step not in (None, 1):
        expr = f"{runtime('take_every')}({borrow_expr(expr, x)}, {d}, {it.step})?"
    return expr


def _getitem(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    index = a["index"]
    items = list(index) if isinstance(index, tuple) else [index]
    # PyTorch reads a uint8 index tensor as a mask too (a deprecated form), never as indices
    if any(isinstance(it, T) and it.meta.dtype in ("bool", "uint8") for it in items):
        return _masked(x, items)
    advanced = [i for i, it in enumerate(items) if isinstance(it, (T, list))]
    if len(advanced) > 1:
        raise Unsupported("more than one tensor or list index",
                          hint="index one dimension at a time")
    if advanced:
        # PyTorch puts the index's dimensions where the advanced indices (this one and any
        # integers) are, if they are adjacent; otherwise first
        group = [i for i, it in enumerate(items) if i in advanced or is_int(it)
                 or isinstance(it, Dim)]
        if group != list(range(group[0], group[-1] + 1)):
            raise Unsupported("an integer index apart from a tensor index",
                              hint="index in two steps")
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    if consumed > x.rank:
        raise Unsupported(f"too many indices ({consumed}) for a rank-{x.rank} tensor")
    if sum(1 for it in items if it is Ellipsis) > 1:
        raise Unsupported("more than one Ellipsis in an index")
    expr = x.name
    d = 0  # dimension in the tensor being built
    od = 0  # dimension in the original tensor
    for it in items:
        if it is Ellipsis:
            skip = x.rank - consumed
            d += skip
            od += skip
        elif it is None:
            expr += f".unsqueeze({d})?"
            d += 1
        elif is_int(it):
            idx = str(it) if it >= 0 else f"{x.dim(od)} - {-it}"
            expr += f".get_on_dim({d}, {idx})?"
            od += 1
        elif isinstance(it, FromEnd):
            expr += f".get_on_dim({d}, {runtime('from_end')}({x.dim(od)}, {it.size.expr}))?"
            od += 1
        elif isinstance(it, Dim):
            if min(it.values) < 0:
                raise Unsupported(f"index {it.expr} that is negative in a trace case")
            expr += f".get_on_dim({d}, {it.expr})?"
            od += 1
        elif isinstance(it, slice):
            expr = _slice(x, expr, it, d, x.dim(od))
            d += 1
            od += 1
        elif isinstance(it, T):
            if it.meta.dtype not in _INT_DTYPES:
                raise Unsupported(f"indexing with a {it.meta.dtype} tensor")
            expr = f"{runtime('take')}({borrow_expr(expr, x)}, {it.borrow}, {d})?"
            d += it.rank
            od += 1
        elif isinstance(it, list):
            if not it or not all(is_int(v) for v in it):
                raise Unsupported(f"index list {it!r}", hint="only lists of integers")
            values = ", ".join(f"{v}i64" if i == 0 else str(v) for i, v in enumerate(it))
            index = f"&Tensor::new(&[{values}], {device()})?"
            expr = f"{runtime('take')}({borrow_expr(expr, x)}, {index}, {d})?"
            d += 1
            od += 1
        else:
            raise Unsupported(f"index {it!r}")
    return expr if expr != x.name else f"{x.name}.clone()"


def _masked(x: T, items: list[Any]) -> str:
    """`x[mask]` (also `x[mask, ...]`): the mask covers the leading dimensions."""
    mask = items[0]
    if not isinstance(mask, T) or any(it is not Ellipsis for it in items[1:]):
        raise Unsupported("a boolean mask together with other indices",
                          hint="only x[mask] and x[mask, ...] are supported")
    if mask.rank > x.rank or any(tuple(m[:mask.rank]) != tuple(s[:mask.rank])
                                 for m, s in zip(mask.meta.shapes, x.meta.shapes)):
        raise Unsupported("a boolean mask whose shape is not that of the leading dimensions")
    return f"{runtime('masked_select')}({x.borrow}, {mask.borrow})?"


register_op(Op("getitem", {"Tensor.__getitem__": "input, index"}, _getitem,
               doc="integers (also negative or from shapes), slices with positive steps and "
                   "bounds from shapes (also `:-pad`) or one-element integer tensors, None, "
                   "Ellipsis, one integer tensor or list index, a "
                   "boolean mask over the leading dimensions"))


# --- gather, one_hot ------------------------------------------------------------------------------


def _gather(spelling: str, a: dict[str, Any], out: Any) -> str:
    """Candle's gather reads its operands as contiguous and of the same sizes outside `dim`;
    PyTorch's index may be smaller there, so the input is narrowed to it first."""
    x, index = tensor(a["input"]), tensor(a["index"], "index")
    if a.get("out") is not None:
        raise Unsupported("gather with out=")
    if index.meta.dtype != "int64":
        raise Unsupported(f"gather with a {index.meta.dtype} index (PyTorch wants int64)")
    if index.rank != x.rank:
        raise Unsupported("gather with an index of another rank than the input")
    if not is_int(a["dim"]):
        raise Unsupported(f"gather with dim={a['dim']!r}")
    d = x.norm_dim(a["dim"])
    expr = x.name
    for k in range(x.rank):
        if k != d and any(s[k] != t[k] for s, t in zip(x.meta.shapes, index.meta.shapes)):
            expr += f".narrow({k}, 0, {index.dim(k)})?"
    return f"{expr}.contiguous()?.gather(&{index.name}.contiguous()?, {rust_dim(d, x.rank)})?"


_GATHER = "input, dim, index, *, sparse_grad=False, out=None"
register_op(Op("gather", {"torch.gather": _GATHER, "Tensor.gather": _GATHER}, _gather,
               doc="an int64 index, also smaller than the input outside dim"))


def _one_hot(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, n = tensor(a["tensor"], "tensor"), a["num_classes"]
    if x.meta.dtype != "int64":
        raise Unsupported(f"one_hot of a {x.meta.dtype} tensor (PyTorch wants int64)")
    if is_int(n) and n < 0:
        raise Unsupported("one_hot without num_classes (the output's size would be the largest "
                          "value plus one: it depends on the values)",
                          hint="pass num_classes=")
    if not (is_int(n) or isinstance(n, Dim)):
        raise Unsupported(f"one_hot with num_classes={n!r}")
    classes = f"{n}i64" if is_int(n) else size_as(n, "i64")
    return (f"{x.name}.unsqueeze({x.rank})?.broadcast_eq(&Tensor::arange(0i64, {classes}, "
            f"{x.name}.device())?)?.to_dtype({rust_dtype('int64')})?")


register_op(Op("one_hot", {"torch.nn.functional.one_hot": "tensor, num_classes=-1"}, _one_hot,
               doc="int64 classes, num_classes given"))
