"""Reductions."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import Op, T, Unsupported, register_op, rust_dim, tensor


def _dims_arg(x: T, dim: Any) -> list[int]:
    if dim is None:
        return list(range(x.rank))
    if isinstance(dim, int) and not isinstance(dim, bool):
        return [x.norm_dim(dim)]
    if isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim):
        return sorted(x.norm_dim(d) for d in dim)
    raise Unsupported(f"dim={dim!r}")


def _norm(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    if a.get("dtype") is not None:
        raise Unsupported(f"norm with dtype={a['dtype']!r}")
    order = a.get("ord", a.get("p"))
    dim = a["dim"]
    euclidean = order in (None, 2, 2.0, "fro") if spelling != "torch.linalg.norm" else (
        order is None or (order in (2, 2.0) and not isinstance(dim, (tuple, list))))
    if spelling == "torch.linalg.norm" and dim is None and x.rank > 2 and order is not None:
        raise Unsupported("torch.linalg.norm with ord and no dim on a tensor of rank > 2")
    if not euclidean:
        raise Unsupported(f"norm of order {order!r} (only the 2-norm / Frobenius norm is supported)",
                          hint="write it out with abs/pow/sum, or ask for this order")
    dims = _dims_arg(x, dim)
    if dims == list(range(x.rank)) and not a["keepdim"]:
        return f"{x.name}.sqr()?.sum_all()?.sqrt()?"
    dim_expr = rust_dim(dims[0], x.rank) if len(dims) == 1 else "(" + ", ".join(map(str, dims)) + ")"
    fn = "sum_keepdim" if a["keepdim"] else "sum"
    return f"{x.name}.sqr()?.{fn}({dim_expr})?.sqrt()?"


register_op(Op(
    "norm",
    {"torch.linalg.norm": "input, ord=None, dim=None, keepdim=False, *, dtype=None",
     "torch.linalg.vector_norm": "input, ord=2, dim=None, keepdim=False, *, dtype=None",
     "torch.norm": "input, p='fro', dim=None, keepdim=False, dtype=None",
     "Tensor.norm": "input, p='fro', dim=None, keepdim=False, dtype=None"},
    _norm, uses=("candle_core::D",), doc="2-norm / Frobenius, over dims, keepdim"))
