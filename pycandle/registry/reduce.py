"""Reductions: sums, means, extremes, norms."""

from __future__ import annotations

import math
from typing import Any, Callable

from pycandle.manifest import TensorMeta
from pycandle.registry.core import (
    Op, T, Unsupported, chained, dims_arg, int_arg, is_number, local_name, register_op, rust_dim,
    rust_dtype, rust_float, shape_tuple, tensor, usize_expr,
)


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
    if a.get("out") is not None:
        raise Unsupported("norm with out=")
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
     # torch.norm's Python wrapper passes out=None and dtype=None on to the tracer
     "torch.norm": "input, p='fro', dim=None, keepdim=False, out=None, dtype=None",
     "Tensor.norm": "input, p='fro', dim=None, keepdim=False, dtype=None"},
    _norm, doc="2-norm / Frobenius, over dims, keepdim"))


# --- sum, mean ------------------------------------------------------------------------------------


def _reduce_dims(x: T, dim: Any) -> list[int]:
    """`dim` of sum/mean/amax: None or () reduce every dimension."""
    if isinstance(dim, (tuple, list)) and not dim:
        return list(range(x.rank))
    return _dims_arg(x, dim)


def _cast_to(expr: str, x: T, out: Any) -> str:
    """PyTorch promotes some reductions (an int32 sum is int64); Candle keeps the dtype."""
    if isinstance(out, TensorMeta) and out.dtype != x.meta.dtype:
        return f"{expr}.to_dtype({rust_dtype(out.dtype)})?"
    return expr


def _sum_mean(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        if a.get("dtype") is not None:  # PyTorch casts the input first
            x = T(f"{x.name}.to_dtype({rust_dtype(a['dtype'].name)})?",
                  TensorMeta(a["dtype"].name, x.meta.shapes))
        dims = _reduce_dims(x, a["dim"])
        if len(dims) == x.rank and not a["keepdim"]:
            return _cast_to(f"{x.name}.{kind}_all()?", x, out)
        fn = f"{kind}_keepdim" if a["keepdim"] else kind
        return _cast_to(f"{x.name}.{fn}({dims_arg(x, dims)})?", x, out)

    return emit


_SUM_SIG = "input, dim=None, keepdim=False, *, dtype=None"
register_op(Op("sum", {"torch.sum": _SUM_SIG, "Tensor.sum": _SUM_SIG}, _sum_mean("sum"),
               doc="over all, one or several dims; keepdim; dtype"))
register_op(Op("mean", {"torch.mean": _SUM_SIG, "Tensor.mean": _SUM_SIG}, _sum_mean("mean"),
               doc="over all, one or several dims; keepdim; dtype"))

# --- max, min, amax, amin, argmax, argmin ---------------------------------------------------------


def _extreme_over(x: T, kind: str, dims: list[int], keepdim: bool) -> str:
    """max/min over several dimensions: one dimension at a time, the highest first."""
    if len(dims) == x.rank and not keepdim:
        return f"{x.name}.{kind}_all()?"
    fn = f"{kind}_keepdim" if keepdim else kind
    return x.name + "".join(f".{fn}({rust_dim(d, x.rank) if len(dims) == 1 else d})?"
                            for d in sorted(dims, reverse=True))


def _arg_extreme(x: T, kind: str, dim: Any, keepdim: bool) -> str:
    """argmax/argmin as PyTorch's int64 indices (Candle returns u32)."""
    i64 = rust_dtype("int64")
    if dim is None:
        expr = f"{x.name}.flatten_all()?.arg{kind}(0)?"
        if keepdim:
            expr += f".reshape({shape_tuple(['1'] * x.rank)})?"
        return f"{expr}.to_dtype({i64})?"
    d = x.norm_dim(int_arg(dim, "dim"))
    fn = f"arg{kind}_keepdim" if keepdim else f"arg{kind}"
    return f"{x.name}.{fn}({rust_dim(d, x.rank)})?.to_dtype({i64})?"


def _elementwise_extreme(kind: str, x: T, other: T) -> str:
    """torch.max(x, other) and torch.maximum(x, other): elementwise, broadcast."""
    fn = "maximum" if kind == "max" else "minimum"
    if x.meta.shapes != other.meta.shapes:
        fn = f"broadcast_{fn}"
    return f"{x.name}.{fn}({other.borrow})?"


def _max_min(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    """torch.max(x), torch.max(x, dim) -> (values, indices), torch.max(x, other)."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        other = a["other"] if a["other"] is not None else a["dim"]
        if isinstance(other, T):
            return _elementwise_extreme(kind, x, other)
        if a["dim"] is None:
            if a["keepdim"]:
                raise Unsupported(f"{kind} with keepdim and no dim")
            return f"{x.name}.{kind}_all()?"
        d = x.norm_dim(int_arg(a["dim"], "dim"))
        values = _extreme_over(x, kind, [d], a["keepdim"])
        return f"[{values}, {_arg_extreme(x, kind, d, a['keepdim'])}]"  # (values, indices)

    return emit


def _amax_amin(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        return chained(x, _extreme_over(x, kind, _reduce_dims(x, a["dim"]), a["keepdim"]))

    return emit


def _arg_op(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        return _arg_extreme(tensor(a["input"]), kind, a["dim"], a["keepdim"])

    return emit


for _kind in ("max", "min"):
    _sig = "input, dim=None, keepdim=False, *, other=None"
    register_op(Op(_kind, {f"torch.{_kind}": _sig, f"Tensor.{_kind}": _sig}, _max_min(_kind),
                   doc="of all; over a dim -> (values, int64 indices); elementwise with a tensor"))
    _sig = "input, dim=(), keepdim=False"
    register_op(Op(f"a{_kind}", {f"torch.a{_kind}": _sig, f"Tensor.a{_kind}": _sig},
                   _amax_amin(_kind), doc="over all, one or several dims; keepdim"))
    _sig = "input, dim=None, keepdim=False"
    register_op(Op(f"arg{_kind}", {f"torch.arg{_kind}": _sig, f"Tensor.arg{_kind}": _sig},
                   _arg_op(_kind), doc="int64 indices, over a dim or all"))

    _sig = "input, other"
    register_op(Op(f"{_kind}imum", {f"torch.{_kind}imum": _sig, f"Tensor.{_kind}imum": _sig},
                   lambda s, a, out, k=_kind: _elementwise_extreme(
                       k, tensor(a["input"]), tensor(a["other"], "other")),
                   doc="elementwise, broadcast"))

# --- F.normalize ----------------------------------------------------------------------------------


def _normalize(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    if a["out"] is not None:
        raise Unsupported("normalize with out=")
    p = a["p"]
    if not is_number(p) or p <= 0:
        raise Unsupported(f"normalize with p={p!r}")
    d = rust_dim(x.norm_dim(int_arg(a["dim"], "dim")), x.rank)
    if p == 2:
        norm = f"{x.name}.sqr()?.sum_keepdim({d})?.sqrt()?"
    elif p == 1:
        norm = f"{x.name}.abs()?.sum_keepdim({d})?"
    elif math.isinf(p):
        norm = f"{x.name}.abs()?.max_keepdim({d})?"
    else:
        norm = (f"{x.name}.abs()?.powf({rust_float(float(p))})?.sum_keepdim({d})?"
                f".powf({rust_float(1.0 / p)})?")
    eps = a["eps"]
    if not is_number(eps):
        raise Unsupported(f"normalize with eps={eps!r}")
    return f"{x.name}.broadcast_div(&{norm}.maximum({rust_float(float(eps))})?)?"


register_op(Op("normalize", {"torch.nn.functional.normalize":
                             "input, p=2.0, dim=1, eps=1e-12, out=None"}, _normalize,
               doc="any p > 0 (also inf), dim, eps"))

# --- prod, cumsum ---------------------------------------------------------------------------------


def _in_out_dtype(x: T, out: Any) -> T:
    """`x` cast to the result's dtype first (`dtype=`, or PyTorch's promotion of integers to
    int64), which is what PyTorch computes in."""
    if isinstance(out, TensorMeta) and out.dtype != x.meta.dtype:
        return T(f"{x.name}.to_dtype({rust_dtype(out.dtype)})?",
                 TensorMeta(out.dtype, x.meta.shapes))
    return x


def _prod(spelling: str, a: dict[str, Any], out: Any) -> str:
    """A product along one dimension, in order: a fold over its slices (Candle has no prod)."""
    x = tensor(a["input"])
    cast = _in_out_dtype(x, out)
    acc, i = local_name("acc", x), local_name("i", x)
    if a["dim"] is None:
        flat = local_name("flat", x)
        return (f"{{ let {flat} = {cast.name}.flatten_all()?; "
                f"(1..{flat}.dim(0)?).try_fold({flat}.narrow(0, 0, 1)?, "
                f"|{acc}, {i}| {acc}.mul(&{flat}.narrow(0, {i}, 1)?))?.squeeze(0)? }}")
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    src = x.name if cast is x else local_name("cast", x)
    expr = (f"(1..{src}.dim({d})?).try_fold({src}.narrow({d}, 0, 1)?, "
            f"|{acc}, {i}| {acc}.mul(&{src}.narrow({d}, {i}, 1)?))?")
    if not a["keepdim"]:
        expr += f".squeeze({d})?"
    return expr if cast is x else f"{{ let {src} = {cast.name}; {expr} }}"


_PROD_SIG = "input, dim=None, keepdim=False, *, dtype=None"
register_op(Op("prod", {"torch.prod": _PROD_SIG, "Tensor.prod": _PROD_SIG}, _prod,
               doc="of all or over a dim; keepdim; dtype"))


def _cumsum(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    if a.get("out") is not None:
        raise Unsupported("cumsum with out=")
    cast = _in_out_dtype(x, out)
    if not cast.meta.dtype.startswith(("float", "bfloat")):
        raise Unsupported(f"cumsum of a {x.meta.dtype} tensor (only floating-point results here)",
                          hint="pass dtype=torch.float32, or cast first")
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    return f"{cast.name}.cumsum({rust_dim(d, x.rank)})?"


register_op(Op("cumsum", {"torch.cumsum": "input, dim, *, dtype=None, out=None",
                          "Tensor.cumsum": "input, dim, *, dtype=None",
                          "Tensor.cumsum_": "input, dim, *, dtype=None"}, _cumsum,
               doc="floating-point (or dtype=); over a dim"))

# --- var, std -------------------------------------------------------------------------------------


def _var_std(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    """sum((x - mean)^2) / (N - correction) over the dims; std is its square root."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        if a["out"] is not None:
            raise Unsupported(f"{kind} with out=")
        if not x.meta.dtype.startswith(("float", "bfloat")):
            raise Unsupported(f"{kind} of a {x.meta.dtype} tensor")
        dim, unbiased = a["dim"], a["unbiased"]
        if isinstance(dim, bool):  # torch.var(x, False): the old (input, unbiased) form
            dim, unbiased = None, dim
        if unbiased is not None and a["correction"] is not None:
            raise Unsupported(f"{kind} with both unbiased and correction")
        correction = a["correction"] if a["correction"] is not None else \
            (1 if unbiased in (None, True) else 0)
        if not is_number(correction):
            raise Unsupported(f"{kind} with correction={correction!r}")
        dims = _reduce_dims(x, dim)
        mu = local_name("mean", x)
        if len(dims) == x.rank:
            every, n = shape_tuple([str(d) for d in dims]), f"{x.name}.elem_count()"
        else:
            every = dims_arg(x, dims)
            n = x.dim(dims[0]) if len(dims) == 1 else f"({' * '.join(x.dim(d) for d in dims)})"
        if len(dims) == x.rank and not a["keepdim"]:
            total = "sum_all()?"
        else:
            total = f"{'sum_keepdim' if a['keepdim'] else 'sum'}({every})?"
        count = f"{n} as f64" if correction == 0 else \
            f"({n} as f64 - {rust_float(float(correction))})"
        expr = (f"({x.name}.broadcast_sub(&{mu})?.sqr()?.{total} / {count})?"
                + (".sqrt()?" if kind == "std" else ""))
        return f"{{ let {mu} = {x.name}.mean_keepdim({every})?; {expr} }}"

    return emit


_VAR_SIG = "input, dim=None, unbiased=None, keepdim=False, *, correction=None, out=None"
for _kind in ("var", "std"):
    register_op(Op(_kind, {f"torch.{_kind}": _VAR_SIG, f"Tensor.{_kind}": _VAR_SIG},
                   _var_std(_kind), doc="over all or dims; unbiased, correction, keepdim"))

# --- topk -----------------------------------------------------------------------------------------


def _topk(spelling: str, a: dict[str, Any], out: Any) -> str:
    """Candle sorts along the last dimension: the dim is moved there and back."""
    x = tensor(a["input"])
    if a.get("out") is not None:
        raise Unsupported("topk with out=")
    if not a["sorted"]:
        raise Unsupported("topk with sorted=False (PyTorch's order is then unspecified)",
                          hint="sorted=True gives the same elements, in order")
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    last = x.rank - 1
    moved, idx = local_name("moved", x), local_name("order", x)
    at_end = f"{x.name}.contiguous()?" if d == last else \
        f"{x.name}.transpose({d}, {last})?.contiguous()?"
    back = "" if d == last else f".transpose({d}, {last})?"
    asc = "false" if a["largest"] else "true"
    m1 = rust_dim(-1, 2)
    return (f"{{ let {moved} = {at_end}; "
            f"let {idx} = {moved}.arg_sort_last_dim({asc})?.narrow({m1}, 0, "
            f"{usize_expr(a['k'])})?.contiguous()?; "
            f"[{moved}.gather(&{idx}, {m1})?{back}, "
            f"{idx}{back}.to_dtype({rust_dtype('int64')})?] }}")


_TOPK_SIG = "input, k, dim=-1, largest=True, sorted=True, *, out=None"
register_op(Op("topk", {"torch.topk": _TOPK_SIG, "Tensor.topk": _TOPK_SIG}, _topk,
               doc="values and int64 indices; largest or smallest; sorted"))
