"""Arithmetic: tensor-tensor (with broadcasting) and tensor-scalar, also reflected and in-place;
comparisons, matrix products, elementwise math, clamp, where and masked_fill."""

from __future__ import annotations

import math
from typing import Any, Callable

from pycandle.manifest import TensorMeta
from pycandle.registry.core import (
    Dim, FloatSize, Op, Rust, T, Unsupported, alias, chained, int_arg, is_number, local_name,
    minus, register_op, runtime, rust_dtype, rust_float, rust_scalar, size_as, tensor, unary_op,
)

_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_SCALAR_FORMS = {"add": "({x.borrow} + {s})?", "sub": "({x.borrow} - {s})?",
                 "mul": "({x.borrow} * {s})?", "div": "({x.borrow} / {s})?"}
_NEUTRAL = {"add": 0, "sub": 0, "mul": 1, "div": 1}
_REFLECTED_SCALAR_FORMS = {"add": "({x.borrow} + {s})?", "sub": "{x.name}.affine(-1.0, {s})?",
                           "mul": "({x.borrow} * {s})?", "div": "({x.name}.recip()? * {s})?"}


def _promoted(v: Any, out: Any) -> Any:
    if isinstance(v, T) and isinstance(out, TensorMeta) and v.meta.dtype != out.dtype:
        return T(f"{v.name}.to_dtype({rust_dtype(out.dtype)})?",
                 TensorMeta(out.dtype, v.meta.shapes))
    return v


def _binary(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        if a.get("alpha", 1) != 1:
            raise Unsupported(f"{kind} with alpha={a['alpha']!r}")
        mode = a.get("rounding_mode")
        if mode == "floor":
            return _modulo("floor_divide")(spelling, a, out)
        if mode is not None:
            raise Unsupported(f"div with rounding_mode={mode!r}")
        x, y = a["input"], a["other"]
        reflected = spelling.startswith("Tensor.__r")
        if reflected:  # `other <op> self`
            x, y = y, x
        # PyTorch promotes (an integer tensor plus 0.5, or divided, is a float one); Candle
        # keeps the tensor's dtype, so the operands are cast to the result's first
        x, y = _promoted(x, out), _promoted(y, out)
        if isinstance(x, T) and isinstance(y, T):
            if x.meta.shapes == y.meta.shapes:
                return f"{x.name}.{_BINARY_METHODS[kind]}({y.borrow})?"
            return f"{x.name}.broadcast_{_BINARY_METHODS[kind]}({y.borrow})?"
        if isinstance(x, T) and isinstance(y, (Dim, FloatSize)):  # `x / t`, `x * (t / s)`
            return _SCALAR_FORMS[kind].format(x=x, s=size_as(y, "f64"))
        if isinstance(y, T) and isinstance(x, (Dim, FloatSize)):  # `t - x`
            return _REFLECTED_SCALAR_FORMS[kind].format(x=y, s=size_as(x, "f64"))
        if isinstance(x, T) and isinstance(y, (int, float)) and not isinstance(y, bool):
            if y == _NEUTRAL[kind] and isinstance(out, TensorMeta) and out.dtype == x.meta.dtype:
                return alias(x)  # `x + 0`, `x * 1` (Python's `sum` starts at 0): x itself
            return _SCALAR_FORMS[kind].format(x=x, s=rust_float(float(y)))
        if isinstance(y, T) and isinstance(x, (int, float)) and not isinstance(x, bool):
            if kind in ("add", "mul") and x == _NEUTRAL[kind] and isinstance(out, TensorMeta) \
                    and out.dtype == y.meta.dtype:
                return alias(y)
            return _REFLECTED_SCALAR_FORMS[kind].format(x=y, s=rust_float(float(x)))
        raise Unsupported(f"{kind} of {x!r} and {y!r}")

    return emit


def _binary_spellings(kind: str, torch_names: tuple[str, ...]) -> dict[str, str]:
    sig = "input, other, *, alpha=1" if kind in ("add", "sub") else "input, other"
    if kind == "div":
        sig = "input, other, *, rounding_mode=None"
    out = {f"torch.{n}": sig for n in torch_names}
    out.update({f"Tensor.{n}": sig for n in torch_names})
    out.update({f"Tensor.{n}_": sig for n in torch_names})
    dunder = {"add": "add", "sub": "sub", "mul": "mul", "div": "truediv"}[kind]
    for form in ("__{}__", "__r{}__", "__i{}__"):
        out["Tensor." + form.format(dunder)] = "input, other"
    return out


register_op(Op("add", _binary_spellings("add", ("add",)), _binary("add")))
register_op(Op("sub", _binary_spellings("sub", ("sub", "subtract")), _binary("sub")))
register_op(Op("mul", _binary_spellings("mul", ("mul", "multiply")), _binary("mul")))
register_op(Op("div", _binary_spellings("div", ("div", "divide", "true_divide")), _binary("div")))


# --- comparisons ----------------------------------------------------------------------------------

_COMPARISONS = {"gt": ("gt", "__gt__", "greater"), "lt": ("lt", "__lt__", "less"),
                "ge": ("ge", "__ge__", "greater_equal"), "le": ("le", "__le__", "less_equal"),
                "eq": ("eq", "__eq__", None), "ne": ("ne", "__ne__", "not_equal")}
_MIRRORED = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge", "eq": "eq", "ne": "ne"}


def _compare(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    """Elementwise comparisons; Candle's result is a u8 mask (PyTorch's is bool)."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x, y = a["input"], a["other"]
        op = kind
        if not isinstance(x, T):  # `0.5 < t` reaches us as t.__gt__(0.5) already; be safe
            x, y, op = y, x, _MIRRORED[kind]
        x = tensor(x)
        if isinstance(y, T):
            if x.meta.shapes != y.meta.shapes:
                return f"{x.name}.broadcast_{op}({y.borrow})?"
            return f"{x.name}.{op}({y.borrow})?"
        if not is_number(y):
            raise Unsupported(f"comparison of a tensor with {y!r}")
        if not x.meta.dtype.startswith(("float", "bfloat")) and not float(y).is_integer():
            raise Unsupported(f"comparison of a {x.meta.dtype} tensor with {y!r}")
        return f"{x.name}.{op}({rust_float(float(y))})?"

    return emit


for _kind, (_method, _dunder, _alias) in _COMPARISONS.items():
    _names = {f"torch.{_kind}": "input, other", f"Tensor.{_kind}": "input, other",
              f"Tensor.{_dunder}": "input, other"}
    if _alias is not None:  # (torch.equal is another op: one bool for the whole tensors)
        _names.update({f"torch.{_alias}": "input, other", f"Tensor.{_alias}": "input, other"})
    register_op(Op(_kind, _names, _compare(_kind), doc="with a tensor (broadcast) or a number"))

# --- matrix products ------------------------------------------------------------------------------


def _matmul(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, y = tensor(a["input"]), tensor(a["other"], "other")
    if spelling == "Tensor.__rmatmul__":
        x, y = y, x
    if x.rank == 1 and y.rank == 1:
        return f"({x.borrow} * {y.borrow})?.sum_all()?"
    if x.rank == 1:  # a row vector, then dropped
        return f"{x.name}.unsqueeze(0)?.broadcast_matmul({y.borrow})?.squeeze({minus(2)})?"
    if y.rank == 1:  # a column vector, then dropped
        return f"{x.name}.broadcast_matmul(&{y.name}.unsqueeze(1)?)?.squeeze({minus(1)})?"
    same_batch = x.rank == y.rank and all(
        sx[:-2] == sy[:-2] for sx, sy in zip(x.meta.shapes, y.meta.shapes))
    fn = "matmul" if same_batch else "broadcast_matmul"
    return f"{x.name}.{fn}({y.borrow})?"


register_op(Op("matmul", {"torch.matmul": "input, other", "Tensor.matmul": "input, other",
                          "Tensor.__matmul__": "input, other", "Tensor.__rmatmul__": "input, other",
                          "torch.bmm": "input, mat2", "Tensor.bmm": "input, mat2",
                          "torch.mm": "input, mat2", "Tensor.mm": "input, mat2"},
               lambda s, a, out: _matmul(s, {**a, "other": a.get("other", a.get("mat2"))}, out),
               doc="with PyTorch's 1-D and broadcasting rules"))

# --- unary math -----------------------------------------------------------------------------------

_UNARY = {"exp": "{x.name}.exp()?", "log": "{x.name}.log()?", "sqrt": "{x.name}.sqrt()?",
          "rsqrt": "{x.name}.sqrt()?.recip()?", "abs": "{x.name}.abs()?",
          "neg": "{x.name}.neg()?", "reciprocal": "{x.name}.recip()?", "square": "{x.name}.sqr()?",
          "expm1": "({x.name}.exp()? - 1.0)?"}

def _negation(spelling: str, a: dict[str, Any], out: Any) -> str:
    """`-x`: Candle's `neg` serves floats only (it panics on integers), so an integer tensor
    is subtracted from zero."""
    x = tensor(a["input"])
    if x.meta.dtype.startswith(("float", "bfloat")):
        return f"{x.name}.neg()?"
    return f"({x.name}.zeros_like()? - {x.borrow})?"


for _name, _template in _UNARY.items():
    _names = {f"torch.{_name}": "input", f"Tensor.{_name}": "input", f"Tensor.{_name}_": "input",
              f"torch.{_name}_": "input"}
    if _name == "neg":
        _names.update({"Tensor.__neg__": "input", "torch.negative": "input",
                       "Tensor.negative": "input"})
    if _name == "abs":
        _names.update({"Tensor.__abs__": "input", "torch.absolute": "input"})
    register_op(Op(_name, _names, _negation if _name == "neg" else unary_op(_template)))


_LN_CONSTS = {2.0: "std::f64::consts::LN_2", 10.0: "std::f64::consts::LN_10"}


def _pow(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, e = a["input"], a["exponent"]
    if spelling == "Tensor.__rpow__":  # number ** tensor
        base, t = e, tensor(x)
        if not is_number(base) or base <= 0:
            raise Unsupported(f"{base!r} ** tensor (only a positive number base)")
        if base == math.e:
            return f"{t.name}.exp()?"
        ln = _LN_CONSTS.get(float(base), rust_float(math.log(base)))
        return f"{t.name}.affine({ln}, 0.0)?.exp()?"
    x = tensor(x)
    if isinstance(e, T):
        raise Unsupported("pow with a tensor exponent", hint="only a number exponent")
    if not is_number(e):
        raise Unsupported(f"pow with exponent {e!r}")
    if e == 1:
        return alias(x)
    if e == 2:
        return f"{x.name}.sqr()?"
    if e == 0.5:
        return f"{x.name}.sqrt()?"
    if e == -1:
        return f"{x.name}.recip()?"
    return f"{x.name}.powf({rust_float(float(e))})?"


register_op(Op("pow", {"torch.pow": "input, exponent", "Tensor.pow": "input, exponent",
                       "Tensor.pow_": "input, exponent", "Tensor.__pow__": "input, exponent",
                       "Tensor.__ipow__": "input, exponent", "Tensor.__rpow__": "input, exponent"},
               _pow, doc="a number exponent; a positive number base"))

# --- clamp ----------------------------------------------------------------------------------------


def _bound(x: T, v: Any, fn: str) -> str:
    if isinstance(v, T):
        b = "broadcast_" if v.meta.shapes != x.meta.shapes else ""
        return f".{b}{fn}({v.borrow})?"
    if not is_number(v):
        raise Unsupported(f"clamp bound {v!r}")
    return f".{fn}({rust_float(float(v))})?"


def _clamp(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    lo, hi = a.get("min"), a.get("max")
    if lo is None and hi is None:
        raise Unsupported("clamp without min or max")
    if is_number(lo) and is_number(hi):
        return f"{x.name}.clamp({rust_float(float(lo))}, {rust_float(float(hi))})?"
    expr = x.name
    if lo is not None:
        expr += _bound(x, lo, "maximum")
    if hi is not None:
        expr += _bound(x, hi, "minimum")
    return chained(x, expr)


_CLAMP = "input, min=None, max=None"
register_op(Op("clamp", {"torch.clamp": _CLAMP, "Tensor.clamp": _CLAMP, "Tensor.clamp_": _CLAMP,
                         "torch.clip": _CLAMP, "Tensor.clip": _CLAMP, "Tensor.clip_": _CLAMP},
               _clamp, doc="number or tensor bounds"))
register_op(Op("clamp_min", {"torch.clamp_min": "input, min", "Tensor.clamp_min": "input, min",
                             "Tensor.clamp_min_": "input, min"}, _clamp))
register_op(Op("clamp_max", {"torch.clamp_max": "input, max", "Tensor.clamp_max": "input, max",
                             "Tensor.clamp_max_": "input, max"}, _clamp))

# --- where, masked_fill ---------------------------------------------------------------------------


def _filled(value: Any, like: T, out: Any) -> str:
    """A tensor shaped like `like` holding the number `value`, in the output's dtype."""
    dtype = out.dtype if isinstance(out, TensorMeta) else like.meta.dtype
    if float(value) == 0.0:
        if dtype == like.meta.dtype:
            return f"{like.name}.zeros_like()?"
        return (f"Tensor::zeros({like.name}.shape(), {rust_dtype(dtype)}, "
                f"{like.name}.device())?")
    return f"Tensor::full({rust_scalar(value, dtype)}, {like.name}.shape(), {like.name}.device())?"


def _where(spelling: str, a: dict[str, Any], out: Any) -> str:
    cond, x, y = a["condition"], a["input"], a["other"]
    if x is None or y is None:
        raise Unsupported("torch.where(condition) (the indices of non-zeros: a data-dependent "
                          "shape)")
    cond = tensor(cond, "condition")
    operands = [v for v in (x, y, cond) if isinstance(v, T)]  # the values' shape first
    full = next((t for t in operands if isinstance(out, TensorMeta)
                 and t.meta.shapes == out.shapes), None)
    if full is None:
        raise Unsupported("torch.where where every operand needs broadcasting")
    if any(isinstance(v, T) and v.meta.dtype != out.dtype for v in (x, y)):
        raise Unsupported("torch.where with operands of different dtypes (type promotion)")

    def arg(v: Any) -> str:
        if isinstance(v, T):
            if v.meta.shapes == full.meta.shapes:
                return v.borrow
            return f"&{v.name}.broadcast_as({full.name}.shape())?"
        if not is_number(v):
            raise Unsupported(f"torch.where with {v!r}")
        return "&" + _filled(v, full, out)

    c = cond.name if cond.meta.shapes == full.meta.shapes else \
        f"{cond.name}.broadcast_as({full.name}.shape())?"
    return f"{c}.where_cond({arg(x)}, {arg(y)})?"


def _masked_fill(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, mask, value = tensor(a["input"]), tensor(a["mask"], "mask"), a["value"]
    if isinstance(value, T):
        if value.rank != 0:
            raise Unsupported("masked_fill with a value tensor of rank > 0")
        fill = f"&{value.name}.broadcast_as({x.name}.shape())?"
    elif is_number(value):
        fill = "&" + _filled(value, x, out)
    else:
        raise Unsupported(f"masked_fill with value {value!r}")
    m = mask.name if mask.meta.shapes == x.meta.shapes else \
        f"{mask.name}.broadcast_as({x.name}.shape())?"
    return f"{m}.where_cond({fill}, {x.borrow})?"


# named after Candle's op: a graph node named `where` would need a raw identifier in Rust
register_op(Op("where_cond", {"torch.where": "condition, input=None, other=None",
                              "Tensor.where": "input, condition, other"}, _where,
               doc="tensor or number branches, broadcast to the larger operand"))
register_op(Op("masked_fill", {"torch.masked_fill": "input, mask, value",
                               "Tensor.masked_fill": "input, mask, value",
                               "Tensor.masked_fill_": "input, mask, value"}, _masked_fill,
               doc="a number or a 0-d tensor value"))

# --- rounding, sign, trigonometry, erf ------------------------------------------------------------

_FLOAT_UNARY = {"ceil": "{x.name}.ceil()?", "floor": "{x.name}.floor()?",
                "sign": "{x.name}.sign()?", "sin": "{x.name}.sin()?", "cos": "{x.name}.cos()?",
                "tan": "({x.name}.sin()? / {x.name}.cos()?)?", "erf": "{x.name}.erf()?",
                "trunc": "({x.name}.abs()?.floor()? * {x.name}.sign()?)?",
                # log((1 + x) / (1 - x)) / 2
                "atanh": "((({x.borrow} + 1.0)? / {x.name}.affine(-1.0, 1.0)?)?.log()? * 0.5)?"}
_MORE_SPELLINGS = {"trunc": ("fix",), "erf": ("special.erf",), "atanh": ("arctanh",)}
_NO_TORCH_INPLACE = {"sign"}  # PyTorch has Tensor.sign_ but no torch.sign_


def _float_input(x: Any, what: str) -> T:
    x = tensor(x)
    if not x.meta.dtype.startswith(("float", "bfloat")):
        raise Unsupported(f"{what} of a {x.meta.dtype} tensor (only floating-point tensors here)",
                          hint="cast it first, e.g. x.float()")
    return x


def _float_unary(name: str, template: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        return template.format(x=_float_input(a["input"], name))

    return emit


def _unary_spellings(names: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in names:
        out[f"torch.{n}"] = "input"
        if "." not in n:
            out.update({f"Tensor.{n}": "input", f"Tensor.{n}_": "input"})
            if n not in _NO_TORCH_INPLACE:
                out[f"torch.{n}_"] = "input"
    return out


for _name, _template in _FLOAT_UNARY.items():
    register_op(Op(_name, _unary_spellings((_name,) + _MORE_SPELLINGS.get(_name, ())),
                   _float_unary(_name, _template)))


def _atan2(spelling: str, a: dict[str, Any], out: Any) -> str:
    y, x = _float_input(a["input"], "atan2"), _float_input(a["other"], "atan2")
    if y.meta.dtype != x.meta.dtype:
        raise Unsupported(f"atan2 of a {y.meta.dtype} and a {x.meta.dtype} tensor",
                          hint="cast one to the other's dtype")
    return f"{runtime('atan2')}({y.borrow}, {x.borrow})?"


register_op(Op("atan2", {f"{owner}.{name}": "input, other" for owner in ("torch", "Tensor")
                         for name in ("atan2", "arctan2")} | {"Tensor.atan2_": "input, other"},
               _atan2, doc="floating-point tensors of one dtype, broadcast"))


def _round(spelling: str, a: dict[str, Any], out: Any) -> str:
    """PyTorch rounds half to even, Candle's `round` half away from zero: at an exact tie
    (|round(x) - x| == 0.5) the even neighbour is `2 * round(x / 2)` (both steps exact).
    With `decimals`, PyTorch scales by p = 10^|decimals| in the tensor's dtype, rounds, and
    scales back: (x * p) / p, or (x / p) * p for negative decimals; so does the Rust."""
    x = _float_input(a["input"], "round")
    decimals = int_arg(a["decimals"], "decimals")
    r = local_name("rounded", x)
    src, scaled = x.borrow, ""
    if decimals:
        p = f"&Tensor::new({rust_scalar(10.0 ** abs(decimals), x.meta.dtype)}, {x.name}.device())?"
        name = local_name("scaled", x)
        into = f"({x.borrow} * {rust_float(10.0 ** decimals)})?" if decimals > 0 else \
            f"{x.name}.broadcast_div({p})?"
        src, scaled = f"&{name}", f"let {name} = {into}; "
    body = (f"(&{r} - {src})?.abs()?.eq(0.5)?"
            f".where_cond(&(({src} * 0.5)?.round()? * 2.0)?, &{r})?")
    if decimals > 0:
        body = f"{body}.broadcast_div({p})?"
    elif decimals < 0:
        body = f"({body} * {rust_float(10.0 ** -decimals)})?"
    return f"{{ {scaled}let {r} = {src.lstrip('&') if decimals else x.name}.round()?; {body} }}"


register_op(Op("round", {**_unary_spellings(("round",)),
                         **{s: "input, *, decimals=0" for s in _unary_spellings(("round",))}},
               _round, doc="half to even, as PyTorch"))

# --- tests: isnan, isinf, isfinite; logical and bitwise (bool) ops --------------------------------

_TESTS = {"isnan": "{x.name}.ne({x.borrow})?", "isinf": "{x.name}.abs()?.eq(f64::INFINITY)?",
          "isfinite": "{x.name}.abs()?.lt(f64::INFINITY)?"}
for _name, _template in _TESTS.items():
    register_op(Op(_name, {f"torch.{_name}": "input", f"Tensor.{_name}": "input"},
                   _float_unary(_name, _template), doc="a u8 0/1 mask (PyTorch's bool)"))


def _truth(x: T) -> str:
    """`x` as a 0/1 mask: a bool tensor (a u8 mask here) as it is, any other `x != 0`."""
    return x.name if x.meta.dtype == "bool" else f"{x.name}.ne(0.0)?"


def _not(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        if kind == "bitwise" and x.meta.dtype != "bool":
            raise Unsupported(f"bitwise not of a {x.meta.dtype} tensor (only bool here)")
        return f"{x.name}.eq(0.0)?"

    return emit


register_op(Op("logical_not", {"torch.logical_not": "input", "Tensor.logical_not": "input",
                               "Tensor.logical_not_": "input"}, _not("logical"),
               doc="a u8 0/1 mask (PyTorch's bool)"))
register_op(Op("bitwise_not", {"torch.bitwise_not": "input", "Tensor.bitwise_not": "input",
                               "Tensor.bitwise_not_": "input", "Tensor.__invert__": "input"},
               _not("bitwise"), doc="of bool tensors"))

# on 0/1 masks: and is the product, or the maximum, xor the inequality
_LOGICAL = {"and": "mul", "or": "maximum", "xor": "ne"}


def _with_bool(kind: str, x: T, y: bool) -> Rust | str:
    """`m & True`, `m | False`, `m ^ True`...: the mask itself, its negation, or a constant."""
    if (kind, y) in (("and", True), ("or", False), ("xor", False)):
        return alias(x) if x.meta.dtype == "bool" else _truth(x)
    if (kind, y) == ("xor", True):
        return f"{x.name}.eq(0.0)?"
    fill = "ones" if kind == "or" else "zeros"
    return f"Tensor::{fill}({x.name}.shape(), {rust_dtype('uint8')}, {x.name}.device())?"


def _logical(kind: str, bitwise: bool) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x, y = tensor(a["input"]), a["other"]
        if bitwise and x.meta.dtype != "bool":
            raise Unsupported(f"bitwise {kind} of a {x.meta.dtype} tensor (only bool here)")
        if isinstance(y, bool):
            return _with_bool(kind, x, y)
        if not isinstance(y, T):
            raise Unsupported(f"{kind} of a tensor and {y!r} (only two tensors here)")
        if bitwise and (x.meta.dtype, y.meta.dtype) != ("bool", "bool"):
            raise Unsupported(f"bitwise {kind} of {x.meta.dtype} and {y.meta.dtype} tensors "
                              "(only bool here)")
        fn = _LOGICAL[kind]
        if x.meta.shapes != y.meta.shapes:
            fn = f"broadcast_{fn}"
        right = y.borrow if y.meta.dtype == "bool" else f"&{_truth(y)}"
        return f"{_truth(x)}.{fn}({right})?"

    return emit


for _kind in _LOGICAL:
    register_op(Op(f"logical_{_kind}", {f"torch.logical_{_kind}": "input, other",
                                        f"Tensor.logical_{_kind}": "input, other",
                                        f"Tensor.logical_{_kind}_": "input, other"},
                   _logical(_kind, False), doc="a u8 0/1 mask (PyTorch's bool)"))
    register_op(Op(f"bitwise_{_kind}", {f"torch.bitwise_{_kind}": "input, other",
                                        f"Tensor.bitwise_{_kind}": "input, other",
                                        f"Tensor.bitwise_{_kind}_": "input, other",
                                        f"Tensor.__{_kind}__": "input, other",
                                        f"Tensor.__r{_kind}__": "input, other",
                                        f"Tensor.__i{_kind}__": "input, other"},
                   _logical(_kind, True), doc="of bool tensors, also & | ^"))

# --- fmod, remainder ------------------------------------------------------------------------------

_MODULO_DTYPES = ("float32", "float64", "int64", "int32")


def _modulo(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    """The runtime's exact `fmod` (the dividend's sign), `remainder` (the divisor's sign) and
    floor division, with a number operand as a 0-d tensor of the other's dtype."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x, y = a["input"], a["other"]
        if spelling.startswith("Tensor.__r"):
            x, y = y, x
        t = x if isinstance(x, T) else tensor(y, "other")
        if t.meta.dtype not in _MODULO_DTYPES:
            raise Unsupported(f"{kind} of a {t.meta.dtype} tensor "
                              "(float32, float64, int64 and int32 here)")
        for v in (x, y):
            if isinstance(v, T) and v.meta.dtype != t.meta.dtype:
                raise Unsupported(f"{kind} of a {x.meta.dtype} and a {y.meta.dtype} tensor",
                                  hint="cast one to the other's dtype")
            if not isinstance(v, T) and is_number(v) and not t.meta.dtype.startswith("float") \
                    and v != int(v):
                raise Unsupported(f"{kind} of an integer tensor by {v!r} (a float result)",
                                  hint="cast the tensor to a float dtype first")

        def operand(v: Any) -> str:
            if isinstance(v, T):
                return v.borrow
            if not is_number(v):
                raise Unsupported(f"{kind} of {x!r} and {y!r}")
            return f"&Tensor::new({rust_scalar(v, t.meta.dtype)}, {t.name}.device())?"

        # named for their rounding: a local `fmod` (the node) would shadow a function `fmod`
        fn = runtime({"fmod": "rem_trunc", "remainder": "rem_floor",
                      "floor_divide": "div_floor"}[kind])
        return f"{fn}({operand(x)}, {operand(y)})?"

    return emit


register_op(Op("fmod", {"torch.fmod": "input, other", "Tensor.fmod": "input, other",
                        "Tensor.fmod_": "input, other"}, _modulo("fmod"),
               doc="exact; a tensor or number divisor (the dividend's sign)"))
register_op(Op("floor_divide", {"torch.floor_divide": "input, other",
                                "Tensor.floor_divide": "input, other",
                                "Tensor.floor_divide_": "input, other",
                                "Tensor.__floordiv__": "input, other",
                                "Tensor.__rfloordiv__": "input, other",
                                "Tensor.__ifloordiv__": "input, other"}, _modulo("floor_divide"),
               doc="exact, as PyTorch (also //); tensors and numbers"))
register_op(Op("remainder", {"torch.remainder": "input, other", "Tensor.remainder": "input, other",
                             "Tensor.remainder_": "input, other", "Tensor.__rmod__": "input, other",
                             "Tensor.__imod__": "input, other"}, _modulo("remainder"),
               doc="exact; tensors and numbers, also % (the divisor's sign)"))
