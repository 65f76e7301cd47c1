"""Indexing: `x[...]`."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import Op, T, Unsupported, register_op, tensor


def _getitem(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    index = a["index"]
    items = list(index) if isinstance(index, tuple) else [index]
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
        elif isinstance(it, int) and not isinstance(it, bool):
            idx = str(it) if it >= 0 else f"{x.dim(od)} - {-it}"
            expr += f".get_on_dim({d}, {idx})?"
            od += 1
        elif isinstance(it, slice):
            if it.step not in (None, 1):
                raise Unsupported(f"slice with step {it.step}",
                                  hint="strided slices are not supported yet")
            for bound in (it.start, it.stop):
                if bound is not None and not isinstance(bound, int):
                    raise Unsupported(f"slice bound {bound!r} (only integer literals)")
            if it.start in (None, 0) and it.stop is None:
                pass  # a full slice
            else:
                # Python clamps out-of-range bounds; so does the generated code.
                size = x.dim(od)
                start = "0" if it.start in (None, 0) else (
                    str(it.start) if it.start > 0 else f"{size}.saturating_sub({-it.start})")
                if it.stop is None:
                    stop = size
                elif it.stop >= 0:
                    stop = f"{size}.min({it.stop})"
                else:
                    stop = f"{size}.saturating_sub({-it.stop})"
                length = stop if start == "0" else f"{stop}.saturating_sub({start})"
                expr += f".narrow({d}, {start}, {length})?"
            d += 1
            od += 1
        elif isinstance(it, T):
            raise Unsupported("indexing with a tensor (advanced indexing)")
        else:
            raise Unsupported(f"index {it!r}")
    return expr if expr != x.name else f"{x.name}.clone()"


register_op(Op("getitem", {"Tensor.__getitem__": "input, index"}, _getitem,
               doc="integers (also negative), slices with step 1, None, Ellipsis"))
